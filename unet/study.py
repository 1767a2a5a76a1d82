"""The steps of ``Unet.ipynb`` that are more than one call: finding the data, and the demo runner."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

from .data import detect_layout, find_splits
from .io import DataError

TASK_KINDS = {"nuclei": "dsb2018", "tissue": "tissue"}
GET_REAL_DATA = """\
To use real data, put it in dataset/ and run again:
  nuclei: Kaggle "data-science-bowl-2018" (stage1_train.zip, stage1_test.zip, stage1_solution.csv)
          or BBBC038 (Broad Bioimage Benchmark Collection), unzipped to dataset/stage1_train/,
          dataset/stage1_test/ and dataset/stage1_solution.csv
  tissue: dataset/images/*.png and dataset/masks/*.png with the same names (+ optional classes.csv)
          or dataset/tissue/images + dataset/tissue/masks"""


@dataclass
class DataChoice:
    """Where a study's data comes from."""

    kind: str
    train_dir: Path
    test_dir: Path | None
    synthetic: bool

    def describe(self) -> str:
        origin = "SYNTHETIC sample (not real data)" if self.synthetic else "real data"
        test = f", test: {self.test_dir}" if self.test_dir else ", test: the validation split"
        return f"{self.kind} from {origin}: train: {self.train_dir}{test}"


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

    'auto': real data of the task's kind in ``data_dir`` (or a subfolder), else the synthetic
    sample; 'sample': always the synthetic sample; 'dsb2018' / 'tissue': ``data_dir`` itself.
    """
    if task not in TASK_KINDS:
        raise ValueError(f"TASK must be 'nuclei' or 'tissue', not {task!r}")
    kind = TASK_KINDS[task]
    folder = None
    if dataset in ("dsb2018", "tissue"):
        folder = Path(data_dir)
        if detect_layout(folder) != dataset:
            raise DataError(f"{folder}: not a {dataset} dataset")
        kind = dataset
    elif dataset == "auto":
        folder = _find_kind(Path(data_dir), kind)
    elif dataset != "sample":
        raise ValueError(f"DATASET must be 'auto', 'sample', 'dsb2018' or 'tissue', not {dataset!r}")
    synthetic = folder is None
    if synthetic:
        sample_dir = Path(sample_dir)
        if not (sample_dir / "dsb2018").is_dir() or not (sample_dir / "tissue").is_dir():
            from .synthetic import write_sample

            write_sample(sample_dir, seed=seed)
        folder = sample_dir / kind
    train, test = find_splits(folder) if kind == "dsb2018" else (folder, None)
    return DataChoice(kind, train, test, synthetic)


def run_demo(notebook: str | Path = "Unet.ipynb", output_dir: str | Path = "output", tasks=("nuclei", "tissue"),
             parameters: dict | None = None) -> list[Path]:
    """Execute the notebook headless (papermill) once per task; executed copies go to ``output_dir``."""
    import papermill

    executed = []
    for task in tasks:
        out = Path(output_dir) / f"Unet-{task}.ipynb"
        out.parent.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        print(f"=== {task}: executing {notebook} -> {out}", flush=True)
        try:
            papermill.execute_notebook(str(notebook), str(out), parameters={"TASK": task, **(parameters or {})},
                                       cwd=str(Path(notebook).resolve().parent), progress_bar=False,
                                       log_output=True, kernel_name="python3")
        except papermill.PapermillExecutionError as error:
            raise DataError(f"{out}: the {task} notebook stopped in cell {error.exec_count} with {error.ename}: "
                            f"{error.evalue} (the executed notebook holds the traceback)") from None
        print(f"=== {task}: done in {time.perf_counter() - start:.0f} s", flush=True)
        executed.append(out)
    return executed
