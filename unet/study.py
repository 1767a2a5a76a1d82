"""The steps of ``Unet.ipynb`` that are more than one call: finding the data, and the demo runner."""

from __future__ import annotations

import logging
import os
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .data import detect_layout, find_splits
from .io import DataError, write_text_atomic
from .progress import LINES
from .tasks import TASKS, task_for

EMBEDDED_SAMPLES = {"dsb2018": Path(__file__).resolve().parents[1] / "sample" / "dsb2018"}  # real, CC0: sample/PROVENANCE.md
GET_REAL_DATA = """\
To use your own or the full data, put it in dataset/ and run again:
  nuclei: Kaggle "data-science-bowl-2018" (stage1_train.zip, stage1_test.zip, stage1_solution.csv)
          or BBBC038 (Broad Bioimage Benchmark Collection), unzipped to dataset/stage1_train/,
          dataset/stage1_test/ and dataset/stage1_solution.csv
  tissue: dataset/images/*.png and dataset/masks/*.png with the same names (+ optional classes.csv)
          or dataset/tissue/images + dataset/tissue/masks"""


@dataclass
class DataChoice:
    """Where a study's data comes from: ``origin`` is 'dataset' (the user's), 'sample' (the
    embedded real DSB2018 sample) or 'synthetic'."""

    kind: str
    train_dir: Path
    test_dir: Path | None
    origin: str

    @property
    def synthetic(self) -> bool:
        return self.origin == "synthetic"

    @property
    def label(self) -> str:
        return {"dataset": "real data", "sample": "REAL DSB2018 sample",
                "synthetic": "SYNTHETIC sample (not real data)"}[self.origin]

    def describe(self) -> str:
        test = f", test: {self.test_dir}" if self.test_dir else ", test: the validation split"
        return f"{self.kind} from {self.label}: train: {self.train_dir}{test}"


def _find_kind(folder: Path, kind: str) -> Path | None:
    """``folder`` or one of its subfolders holding data of the given layout."""
    if not folder.is_dir():
        return None
    for candidate in [folder] + sorted(p for p in folder.iterdir() if p.is_dir()):
        try:
            if detect_layout(candidate) == kind:
                return candidate
        except DataError:
            continue
    return None


def choose_data(task: str, dataset: str = "auto", data_dir: str | Path = "dataset",
                sample_dir: str | Path = "output/sample", seed: int = 0) -> DataChoice:
    """Resolve the notebook's DATASET parameter.

    'auto': real data of the task's kind in ``data_dir`` (or a subfolder), else the embedded real
    DSB2018 sample for nuclei and the synthetic sample (written to ``sample_dir``) for tissue;
    'sample': the embedded sample (nuclei) or the synthetic one (tissue, which has no embedded
    sample); 'synthetic': always the synthetic sample; 'dsb2018' / 'tissue': ``data_dir`` itself.
    """
    if task not in [t.name for t in TASKS]:
        raise ValueError(f"TASK must be 'nuclei' or 'tissue', not {task!r}")
    kind, folder, origin = task_for(task).kind, None, "dataset"
    if dataset in [t.kind for t in TASKS]:
        folder = Path(data_dir)
        if detect_layout(folder) != dataset:
            raise DataError(f"{folder}: not a {dataset} dataset")
        kind = dataset
    elif dataset == "auto":
        folder = _find_kind(Path(data_dir), kind)
    elif dataset not in ("sample", "synthetic"):
        raise ValueError(f"DATASET must be 'auto', 'sample', 'synthetic', 'dsb2018' or 'tissue', not {dataset!r}")
    embedded = EMBEDDED_SAMPLES.get(kind)
    if folder is None and dataset != "synthetic" and embedded is not None and embedded.is_dir():
        folder, origin = embedded, "sample"
    if folder is None:
        sample_dir, origin = Path(sample_dir), "synthetic"
        if not (sample_dir / "dsb2018").is_dir() or not (sample_dir / "tissue").is_dir():
            from .synthetic import write_sample

            write_sample(sample_dir, seed=seed)
        folder = sample_dir / kind
    train, test = find_splits(folder)
    return DataChoice(kind, train, test, origin)


def predict_and_score(run, test_set, val_set, out_dir: str | Path, scheduler: str | None = None):
    """Predict the test images into ``out_dir/test`` and score them. Unlabelled test images
    (Kaggle's stage1_test without its solution) cannot be scored: the validation images are then
    predicted into ``out_dir/validation`` and scored instead. Scores come from the predictions
    in memory. With a ``scheduler`` address the images are tasks of that Dask cluster. Returns
    (the scored dataset, summary, per-image rows, confusion matrix or None)."""
    from .outputs import predict_folder

    out_dir = Path(out_dir)
    scored_set, predictions = test_set, predict_folder(run, test_set, out_dir / "test", scheduler=scheduler)
    if test_set.masks is None:
        scored_set, predictions = val_set, predict_folder(run, val_set, out_dir / "validation", scheduler=scheduler)
    summary, rows, confusion = run.task.score(scored_set, [predictions[i] for i in scored_set.ids])
    return scored_set, summary, rows, confusion


def score(run, test_set) -> tuple[list, dict, list[dict]]:
    """(label maps, summary, per-image rows) of ``run`` on a labelled dataset, in memory (no files):
    what the benchmarks measure, through the same prediction as ``predict_and_score``."""
    predictions = [run.predict(image)[1] for image in test_set.images]
    summary, rows, _ = run.task.score(test_set, predictions)
    return predictions, summary, rows


def write_study_summary(path: str | Path, task: str, choice: "DataChoice", run, sizes: list[int], scored_set,
                        val_set, summary: dict, rows: list[dict], pictures: str | Path) -> dict:
    """``<task>-summary.json``: one line of ``make demo``'s closing table (see ``summary_table``)."""
    import json

    study = {"task": task, "data": choice.label, "images": sizes, "train_seconds": run.seconds,
             "epochs": len(run.history.get("loss", [])), "metric": run.task.metric,
             "score": summary[run.task.score_key], "scored_images": len(rows),
             "scored_on": "validation images" if scored_set is val_set else "test images",
             "pictures": str(pictures), "run": str(run.run_dir)}
    write_text_atomic(path, json.dumps(study, indent=2) + "\n")
    return study


def start_tensorboard(logdir: str | Path, port: int = 6006):
    """TensorBoard inside the notebook, started with this kernel's own ``tensorboard`` program.

    The notebook extension runs ``tensorboard`` from PATH, which lacks ``.venv/bin`` when
    JupyterLab was started as ``make lab`` (venv not activated); ``TENSORBOARD_BINARY`` names
    the program explicitly. Returns the extension's display of the server.
    """
    binary = Path(sys.executable).with_name("tensorboard")
    if binary.is_file():
        os.environ["TENSORBOARD_BINARY"] = str(binary)
    from tensorboard import notebook

    return notebook.start(f"--logdir {logdir} --host 127.0.0.1 --port {port}")


def notebook_sections(notebook: str | Path) -> dict[int, str]:
    """{cell number as papermill counts it (1-based): section title} for the first code cell
    of each ``## `` section. ``run_demo`` always passes parameters, so papermill inserts a cell
    after the parameters cell, which shifts the later cells by one."""
    import nbformat

    cells = nbformat.read(str(notebook), as_version=4).cells
    sections, title, shift = {}, None, 0
    for index, cell in enumerate(cells):
        if cell.cell_type == "markdown":
            heading = next((line[3:].strip() for line in cell.source.splitlines() if line.startswith("## ")), None)
            title = heading or title
        elif title is not None:
            sections[index + 1 + shift] = title
            title = None
        if "parameters" in cell.get("metadata", {}).get("tags", []):
            shift = 1
    return sections


class _DemoLog(logging.Handler):
    """Shows a headless notebook run in the terminal: the section being run and what the cells
    print (one line per epoch, prediction progress); the kernel's stderr (library noise) is not shown."""

    def __init__(self, task: str, sections: dict[int, str]):
        super().__init__(logging.INFO)
        self.task, self.sections = task, sections

    def emit(self, record):
        message = record.getMessage()
        if message.startswith("Executing Cell"):
            number = int(message.split()[2].strip("-"))
            if number in self.sections:
                print(f"[{self.task}] {self.sections[number]}", flush=True)
        elif record.levelno == logging.INFO and not message.startswith(_NOT_SHOWN):
            message = re.sub(r"\x1b\[[0-9;]*m", "", message).rstrip("\n")
            if "━" in message:  # Keras's model summary table: its totals only
                message = "\n".join(line for line in message.splitlines() if "params:" in line)
            if message:
                print(message, flush=True)


_NOT_SHOWN = ("Ending Cell", "Input Notebook", "Output Notebook", "Executing notebook with kernel",
              "Executing Cell", "Working directory", "<Figure size", "<IPython.core.display")


def run_demo(notebook: str | Path = "Unet.ipynb", output_dir: str | Path = "output", tasks=("nuclei", "tissue"),
             parameters: dict | None = None) -> list[Path]:
    """Execute the notebook headless (papermill) once per task; executed copies go to ``output_dir``.

    The terminal shows each section as it starts and what the cells print; each run's
    ``<task>-summary.json`` (written by the notebook into its OUTPUT_DIR) feeds the closing table.
    """
    import papermill

    os.environ["UNET_PROGRESS"] = LINES  # the kernel inherits these: progress as lines, not bars,
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # and no TensorFlow C++ log lines on the terminal
    logger = logging.getLogger("papermill")
    executed = []
    for task in tasks:
        out = Path(output_dir) / f"Unet-{task}.ipynb"
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        print(f"=== {task}: executing {notebook} -> {out}", flush=True)
        handler = _DemoLog(task, notebook_sections(notebook))
        logger.addHandler(handler)
        previous_level, logger.level = logger.level, logging.INFO
        try:
            papermill.execute_notebook(str(notebook), str(out), parameters={"TASK": task, **(parameters or {})},
                                       cwd=str(Path(notebook).resolve().parent), progress_bar=False,
                                       log_output=True, kernel_name="python3")
        except papermill.PapermillExecutionError as error:
            raise DataError(f"{out}: the {task} notebook stopped in cell {error.exec_count} with {error.ename}: "
                            f"{error.evalue} (the executed notebook holds the traceback)") from None
        finally:
            logger.removeHandler(handler)
            logger.setLevel(previous_level)
        print(f"=== {task}: done in {time.perf_counter() - start:.0f} s", flush=True)
        executed.append(out)
    return executed


def summary_table(summaries: list[dict]) -> str:
    """The closing table of ``make demo``: one row per task."""
    header = ("task", "data", "images (train/val/test)", "training", "score", "pictures")
    rows = [(s["task"], s["data"], "/".join(str(n) for n in s["images"]), f"{s['train_seconds']:.0f} s "
             f"({s['epochs']} epochs)", f"{s['metric']} {s['score']:.3f} on {s['scored_images']} {s['scored_on']}",
             s["pictures"]) for s in summaries]
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    return "\n".join("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)).rstrip()
                     for row in [header, *rows])
