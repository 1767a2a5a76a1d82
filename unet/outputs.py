"""The files a prediction writes, and reading them back to be scored.

``predict_folder`` writes ``masks/<id>.png`` (the task's label PNG), ``overlays/<id>.png``,
``input.gif`` and ``output.gif``, and the task's tables (nuclei: ``nuclei.csv`` and Kaggle's
``submission.csv``); ``evaluate_folder`` scores such a folder against a labelled dataset.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np

from .io import DataError, claim_output_folder, open_image, save_png, write_csv
from .progress import progress as show_progress
from .tasks import task_for
from .visuals import overlay_panel, write_gif


def thumbnail(frame: np.ndarray, side: int = 512) -> np.ndarray:
    """``frame`` scaled down so that its longer side is at most ``side`` (for the GIFs)."""
    from PIL import Image

    scale = side / max(frame.shape[:2])
    if scale >= 1:
        return frame
    size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.LANCZOS))


def predict_one(run, image_id: str, image: np.ndarray, truth: np.ndarray | None, out: Path) -> dict:
    """Predict one image, write its mask and overlay; its labels, table rows and GIF frames."""
    task, palette = run.task, run.palette
    labels = run.predict(image)[1]
    task.save_mask(out / "masks" / f"{image_id}.png", labels, palette)
    save_png(out / "overlays" / f"{image_id}.png",
             overlay_panel(image, labels, truth, instances=task.instances, palette=palette))
    return {"labels": labels, "tables": task.table_rows(image_id, image, labels), "input": thumbnail(image),
            "output": thumbnail(task.draw(image, labels, palette))}


def _predict_task(spec, out: Path, item) -> dict:
    """``predict_one`` in a Dask worker: the run rebuilt from its spec (read once per process)."""
    from .run import Run

    return predict_one(Run.from_spec(spec), *item, out)


def predict_folder(run, dataset, out: str | Path, progress: bool = True, inputs=(), scheduler: str | None = None,
                   workers: int = 1) -> dict[str, np.ndarray]:
    """Predict every image of ``dataset`` with ``run`` (a :class:`~unet.run.Run`) and write
    everything to ``out``, which must lie outside the dataset's folder and ``inputs`` (see
    ``io.claim_output_folder``). With a ``scheduler`` address (or ``workers`` > 1) the images
    are Dask tasks. Returns the predicted label maps by id."""
    task = run.task
    out = claim_output_folder(out, [dataset.source, *inputs] if dataset.source else inputs,
                              {"run": run.config.run_name, "images": dataset.source, "count": len(dataset)})
    truths = task.truths(dataset)
    def item(i):  # read when its turn comes (the dataset is memory-mapped)
        return dataset.ids[i], np.asarray(dataset.images[i]), None if truths is None else np.asarray(truths[i])

    if scheduler or workers > 1:
        from .cluster import map_tasks

        results = map_tasks(functools.partial(_predict_task, run.spec(), out), [item(i) for i in range(len(dataset))],
                            scheduler, workers, progress, "images")
    else:
        results = [predict_one(run, *item(i), out) for i in show_progress(range(len(dataset)), "predicting", progress)]
    write_gif(out / "input.gif", [result["input"] for result in results])
    write_gif(out / "output.gif", [result["output"] for result in results])
    for name, columns in task.tables.items():
        write_csv(out / name, [row for result in results for row in result["tables"][name]], columns)
    return {image_id: result["labels"] for image_id, result in zip(dataset.ids, results)}


def written_files(kind: str) -> str:
    """What ``predict_folder`` writes for a task, in words."""
    return ", ".join(["masks/", "overlays/", "input.gif", "output.gif", *task_for(kind).tables])


def read_predictions(folder, ids) -> list[np.ndarray]:
    """``<folder>/masks/<id>.png`` for each id (label values as stored, 'P' as indices)."""
    folder = Path(folder)
    missing = [str(folder / "masks" / f"{i}.png") for i in ids if not (folder / "masks" / f"{i}.png").is_file()]
    if missing:
        raise DataError([f"{m}: no prediction for this ground-truth image" for m in missing])
    return [np.asarray(open_image(folder / "masks" / f"{i}.png")) for i in ids]


def evaluate_folder(pred_dir, truth) -> tuple[dict, list[dict], np.ndarray | None]:
    """Score the predictions in ``pred_dir`` against a labelled Dataset."""
    if truth.masks is None:
        raise ValueError(f"{truth.source}: no ground truth to evaluate against")
    predictions = read_predictions(pred_dir, truth.ids)
    wrong = [f"{pred_dir}/masks/{i}.png: size {p.shape[1]}x{p.shape[0]} differs from the truth {t.shape[1]}x{t.shape[0]}"
             for i, p, t in zip(truth.ids, predictions, truth.masks) if p.shape[:2] != t.shape[:2]]
    if wrong:
        raise DataError(wrong)
    return task_for(truth.kind).score(truth, predictions)
