"""The files a prediction writes, and reading them back to be scored.

``predict_folder`` writes ``masks/<id>.png`` (the task's label PNG), ``overlays/<id>.png``,
``input.gif`` and ``output.gif``, and the task's tables (nuclei: ``nuclei.csv`` and Kaggle's
``submission.csv``); ``evaluate_folder`` scores such a folder against a labelled dataset.
"""

from __future__ import annotations

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


def predict_folder(run, dataset, out: str | Path, progress: bool = True, inputs=()) -> dict[str, np.ndarray]:
    """Predict every image of ``dataset`` with ``run`` (a :class:`~unet.run.Run`) and write
    everything to ``out``, which must lie outside the dataset's folder and ``inputs`` (see
    ``io.claim_output_folder``). Returns the predicted label maps by id."""
    config, task = run.config, run.task
    out = claim_output_folder(out, [dataset.source, *inputs] if dataset.source else inputs,
                              {"run": config.run_name, "images": dataset.source, "count": len(dataset)})
    palette = run.palette
    truths = task.truths(dataset)
    predictions, tables, input_frames, output_frames = {}, {name: [] for name in task.tables}, [], []
    for index in show_progress(range(len(dataset)), "predicting", enabled=progress):
        image_id, image = dataset.ids[index], np.asarray(dataset.images[index])
        labels = predictions[image_id] = run.predict(image)[1]
        task.save_mask(out / "masks" / f"{image_id}.png", labels, palette)
        for name, rows in task.table_rows(image_id, image, labels).items():
            tables[name] += rows
        truth = None if truths is None else np.asarray(truths[index])
        save_png(out / "overlays" / f"{image_id}.png",
                 overlay_panel(image, labels, truth, instances=task.instances, palette=palette))
        input_frames.append(thumbnail(image))
        output_frames.append(thumbnail(task.draw(image, labels, palette)))
    write_gif(out / "input.gif", input_frames)
    write_gif(out / "output.gif", output_frames)
    for name, columns in task.tables.items():
        write_csv(out / name, tables[name], columns)
    return predictions


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
