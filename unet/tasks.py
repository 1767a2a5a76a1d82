"""The two tasks behind one small interface: nuclei (instances, DSB2018) and tissue (classes).

A task knows its classes and colours, the training target, the model head, how probabilities
become labels, how labels are scored, and what a prediction writes beside its mask PNG. Other
modules ask ``task_for(config.kind)`` instead of testing the kind themselves.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .config import ConfigError


def class_map(probabilities: np.ndarray) -> np.ndarray:
    """Class map from model output: threshold 0.5 for one channel, argmax otherwise."""
    if probabilities.shape[-1] == 1:
        return (probabilities[..., 0] > 0.5).astype(np.uint8)
    return probabilities.argmax(axis=-1).astype(np.uint8)


class Task:
    """What differs between tasks; see :class:`NucleiTask` and :class:`TissueTask`."""

    kind = name = color_mode = metric = score_key = ""
    instances = False  # labels are instances (drawn as contours), not classes
    tunes_thresholds = False  # has post-processing thresholds to choose on validation (``tuning``)
    tables: dict[str, list[str]] = {}  # extra CSV files a prediction writes: name -> columns

    def head(self, config, dataset) -> tuple[str, int, list[str]]:
        """(head, number of output channels, class names) of ``config`` on ``dataset``."""
        head, channels, classes = self._head(config, dataset)
        if config.class_weights is not None and (channels == 1 or len(config.class_weights) != channels):
            raise ConfigError("class_weights", f"{len(config.class_weights)} weight(s) given; the model's classes "
                              f"are {', '.join(classes)}" + (" (a binary head takes no class weights)"
                                                             if channels == 1 else ""))
        return head, channels, classes

    def _head(self, config, dataset) -> tuple[str, int, list[str]]:
        raise NotImplementedError

    def targets(self, dataset, config) -> list[np.ndarray]:
        """The training targets of ``dataset`` for the config's (resolved) head."""
        return [np.asarray(mask) for mask in dataset.masks]

    def truths(self, dataset) -> list | None:
        """The label maps predictions are compared with (None when unlabelled)."""
        return dataset.masks

    def palette(self, dataset, channels: int) -> np.ndarray:
        return np.asarray(dataset.palette, np.uint8)

    def labels(self, probabilities: np.ndarray, config) -> np.ndarray:
        """The label map of one image's probabilities."""
        return class_map(probabilities)

    def score(self, dataset, predictions: list[np.ndarray]) -> tuple[dict, list[dict], np.ndarray | None]:
        """(summary, per-image rows, confusion matrix or None) of label maps in ``dataset``'s id order."""
        raise NotImplementedError

    def draw(self, image: np.ndarray, labels: np.ndarray, palette: np.ndarray) -> np.ndarray:
        """The labels drawn over the image (for the GIFs)."""
        from .visuals import draw_classes

        return draw_classes(image, labels, palette)

    def save_mask(self, path: Path, labels: np.ndarray, palette: np.ndarray) -> None:
        from .io import save_png

        save_png(path, labels, palette=palette)

    def table_rows(self, image_id: str, image: np.ndarray, labels: np.ndarray) -> dict[str, list[dict]]:
        """Rows of one image for each of ``tables``."""
        return {}


class NucleiTask(Task):
    """DSB2018 nuclei: a 3-class head (background, interior, boundary; 'centre': and the
    nuclei's centres) and a watershed."""

    kind, name, color_mode = "dsb2018", "nuclei", "gray"  # gray: stains vary, shape is what matters
    metric, score_key = "mAP@0.5:0.95", "map"
    instances = tunes_thresholds = True

    @property
    def tables(self) -> dict[str, list[str]]:
        from .nuclei import TABLE_COLUMNS

        return {"nuclei.csv": TABLE_COLUMNS, "submission.csv": ["ImageId", "EncodedPixels"]}

    def _head(self, config, dataset):
        from .nuclei import nuclei_classes

        head = "boundary" if config.head == "auto" else config.head
        if head not in ("binary", "boundary", "centre"):
            raise ConfigError("head", f"nuclei take 'binary', 'boundary' or 'centre', not {head!r}")
        classes = nuclei_classes(head)
        return head, 1 if head == "binary" else len(classes), classes

    def targets(self, dataset, config):
        from .nuclei import boundary_target, centre_target

        target = {"boundary": boundary_target, "centre": centre_target}.get(config.head)
        if target is not None:
            return [target(instances, config.contact_width) for instances in dataset.instances]
        return super().targets(dataset, config)

    def truths(self, dataset):
        return dataset.instances

    def palette(self, dataset, channels):
        from .nuclei import NUCLEI_PALETTE

        return NUCLEI_PALETTE[: max(channels, 2)]

    def labels(self, probabilities, config):
        from .nuclei import nuclei_from_probabilities

        return nuclei_from_probabilities(probabilities, config.min_nucleus_area, config.seed_threshold,
                                         config.foreground_threshold)

    def score(self, dataset, predictions):
        from .evaluation import evaluate_nuclei

        summary, rows = evaluate_nuclei(dataset.ids, dataset.instances, predictions, dataset.images)
        return summary, rows, None

    def draw(self, image, labels, palette):
        from .visuals import draw_instances

        return draw_instances(image, labels)

    def save_mask(self, path, labels, palette):
        from .io import save_png

        save_png(path, labels)  # 16-bit instance labels

    def table_rows(self, image_id, image, labels):
        from .nuclei import nucleus_table
        from .rle import rle_encode_labels

        encoded = rle_encode_labels(labels).values()
        submission = [{"ImageId": image_id, "EncodedPixels": e} for e in encoded] or [
            {"ImageId": image_id, "EncodedPixels": ""}]  # Kaggle wants a row for an image without nuclei
        return {"nuclei.csv": nucleus_table(image_id, image, labels), "submission.csv": submission}


class TissueTask(Task):
    """Tissue classes: softmax over the dataset's classes, scored by per-class IoU."""

    kind, name, color_mode = "tissue", "tissue", "rgb"
    metric, score_key = "mean IoU", "mean_iou"

    def _head(self, config, dataset):
        if config.nucleus_diameter:
            raise ConfigError("nucleus_diameter", "rescales images by their nuclei; tissue classes are learnt at "
                                                  "native scale (set it to 0)")
        classes = list(dataset.class_names)
        if config.num_classes and config.num_classes != len(classes):
            raise ConfigError("num_classes", f"{config.num_classes}, but the data has {len(classes)} classes")
        return "multiclass", len(classes), classes

    def score(self, dataset, predictions):
        from .evaluation import evaluate_classes

        return evaluate_classes(dataset.ids, dataset.masks, predictions, dataset.class_names)


TASKS = (NucleiTask(), TissueTask())


def task_for(kind: str) -> Task:
    """The task of a config's ``kind`` ('dsb2018', 'tissue') or of its name ('nuclei', 'tissue')."""
    for task in TASKS:
        if kind in (task.kind, task.name):
            return task
    raise ValueError(f"unknown task {kind!r}: one of " + ", ".join(task.kind for task in TASKS))
