"""Losses and metrics for binary and multi-class segmentation, with an ignore label."""

from __future__ import annotations

import re

import keras
from keras import ops

SMOOTH = 1.0  # added to numerator and denominator of the soft Dice


def _one_hot_valid(y_true, num_classes: int, ignore_label: int):
    """(one-hot targets with ignored pixels all zero, valid-pixel mask) for sparse targets."""
    labels = ops.cast(y_true, "int32")
    if len(labels.shape) == 4:
        labels = labels[..., 0]
    valid = ops.cast(ops.not_equal(labels, ignore_label), "float32")
    safe = ops.where(ops.not_equal(labels, ignore_label), labels, 0)
    return ops.one_hot(safe, num_classes, dtype="float32") * valid[..., None], valid


@keras.saving.register_keras_serializable(package="unet")
class SegmentationLoss(keras.losses.Loss):
    """Cross-entropy plus ``dice_weight`` x (1 - soft Dice).

    Binary (``num_classes=1``): BCE and the foreground Dice. Multi-class: sparse categorical
    cross-entropy (optionally class-weighted) and the mean soft Dice over classes; pixels
    labelled ``ignore_label`` take no part in either. Batch-level sums (one Dice per batch).
    """

    def __init__(self, num_classes: int = 1, dice_weight: float = 1.0, class_weights=None,
                 ignore_label: int = 255, name: str = "segmentation_loss", **kwargs):
        super().__init__(name=name, **kwargs)
        self.num_classes = num_classes
        self.dice_weight = dice_weight
        self.class_weights = None if class_weights is None else [float(w) for w in class_weights]
        self.ignore_label = ignore_label

    def call(self, y_true, y_pred):
        y_pred = ops.clip(ops.cast(y_pred, "float32"), 1e-7, 1 - 1e-7)
        if self.num_classes == 1:
            y = ops.reshape(ops.cast(y_true, "float32"), ops.shape(y_pred))
            cross_entropy = -ops.mean(y * ops.log(y_pred) + (1 - y) * ops.log(1 - y_pred))
            dice = (2 * ops.sum(y * y_pred) + SMOOTH) / (ops.sum(y) + ops.sum(y_pred) + SMOOTH)
            return cross_entropy + self.dice_weight * (1 - dice)
        one_hot, valid = _one_hot_valid(y_true, self.num_classes, self.ignore_label)
        pixel_ce = -ops.sum(one_hot * ops.log(y_pred), axis=-1)
        if self.class_weights is not None:
            pixel_ce = pixel_ce * ops.sum(one_hot * ops.convert_to_tensor(self.class_weights, "float32"), axis=-1)
        cross_entropy = ops.sum(pixel_ce) / ops.maximum(ops.sum(valid), 1.0)
        masked_pred = y_pred * valid[..., None]
        axes = (0, 1, 2)
        dice = (2 * ops.sum(one_hot * masked_pred, axis=axes) + SMOOTH) / (
            ops.sum(one_hot, axis=axes) + ops.sum(masked_pred, axis=axes) + SMOOTH)
        return cross_entropy + self.dice_weight * (1 - ops.mean(dice))

    def get_config(self):
        return {**super().get_config(), "num_classes": self.num_classes, "dice_weight": self.dice_weight,
                "class_weights": self.class_weights, "ignore_label": self.ignore_label}


@keras.saving.register_keras_serializable(package="unet")
class ConfusionMetric(keras.metrics.Metric):
    """A statistic of the running confusion matrix of hard predictions.

    ``statistic``: 'accuracy' (pixel accuracy), 'iou' or 'dice'; with ``class_id`` the value of
    one class, otherwise the mean over the classes that occur (in truth or prediction).
    Binary heads are thresholded at 0.5 and scored as two classes (background, foreground).
    Pixels labelled ``ignore_label`` are left out. A metric made with ``source=`` reads the
    matrix of that metric instead of accumulating its own, so that a family of statistics
    costs one set of hard labels and one count per step.
    """

    def __init__(self, num_classes: int, statistic: str = "iou", class_id: int | None = None,
                 ignore_label: int = 255, name: str | None = None, source: "ConfusionMetric | None" = None, **kwargs):
        super().__init__(name=name or statistic, **kwargs)
        self.num_classes, self.statistic, self.class_id, self.ignore_label = num_classes, statistic, class_id, ignore_label
        self.source = source
        if source is None:
            n = max(num_classes, 2)
            self.confusion = self.add_variable(shape=(n, n), initializer="zeros", dtype="float32", name="confusion")

    def update_state(self, y_true, y_pred, sample_weight=None):
        if self.source is not None:
            return  # the source metric accumulates the matrix
        n = max(self.num_classes, 2)
        truth = ops.reshape(_one_hot_valid(y_true, n, self.ignore_label)[0], (-1, n))  # ignored pixels: all 0
        predicted = ops.one_hot(ops.reshape(hard_labels(y_pred, self.num_classes), (-1,)), n, dtype="float32")
        # a product of one-hot codes counts every (truth, prediction) pair: on every backend (JAX
        # included), and on CPU a quarter of a segment_sum histogram's time (8x256x256 pixels: 4.6 ms, 20)
        self.confusion.assign_add(ops.matmul(ops.transpose(truth), predicted))

    def result(self):
        return confusion_statistic((self.source or self).confusion, self.statistic, self.class_id)

    def reset_state(self):
        if self.source is None:
            self.confusion.assign(ops.zeros(self.confusion.shape, "float32"))

    def get_config(self):  # a view is saved as a stand-alone metric computing the same statistic
        return {"name": self.name, "num_classes": self.num_classes, "statistic": self.statistic,
                "class_id": self.class_id, "ignore_label": self.ignore_label}


def hard_labels(y_pred, num_classes: int):
    """The predicted class of every pixel (int32): a binary head thresholded at 0.5, otherwise
    the first class of highest probability, as ``argmax`` but by comparisons, which on CPU take
    a quarter of argmax's time."""
    if num_classes == 1:
        return ops.cast(y_pred[..., 0] > 0.5, "int32")
    best, label = y_pred[..., 0], ops.zeros(ops.shape(y_pred)[:-1], "int32")
    for k in range(1, num_classes):
        label = ops.where(y_pred[..., k] > best, k, label)
        best = ops.maximum(best, y_pred[..., k])
    return label


def confusion_statistic(confusion, statistic: str, class_id: int | None = None):
    """Pixel accuracy, IoU or Dice from a confusion matrix (rows: truth, columns: prediction)."""
    true_positive = ops.diagonal(confusion)
    if statistic == "accuracy":
        return ops.sum(true_positive) / ops.maximum(ops.sum(confusion), 1.0)
    false_positive = ops.sum(confusion, axis=0) - true_positive
    false_negative = ops.sum(confusion, axis=1) - true_positive
    if statistic == "iou":
        numerator, denominator = true_positive, true_positive + false_positive + false_negative
    elif statistic == "dice":
        numerator, denominator = 2 * true_positive, 2 * true_positive + false_positive + false_negative
    else:
        raise ValueError(f"unknown statistic {statistic!r}")
    scores = numerator / ops.maximum(denominator, 1.0)
    if class_id is not None:
        return scores[class_id]
    present = ops.cast(denominator > 0, "float32")
    return ops.sum(scores * present) / ops.maximum(ops.sum(present), 1.0)


def make_metrics(num_classes: int, class_names: list[str], ignore_label: int = 255) -> list:
    """Accuracy, mean IoU, mean Dice and the IoU of each class, all from one confusion matrix."""
    names = class_names if num_classes > 1 else list(class_names[:2])
    accuracy = ConfusionMetric(num_classes, "accuracy", ignore_label=ignore_label, name="accuracy")
    view = lambda statistic, name, class_id=None: ConfusionMetric(  # noqa: E731
        num_classes, statistic, class_id, ignore_label, name=name, source=accuracy)
    metrics = [accuracy, view("iou", "mean_iou"), view("dice", "dice")]
    for k, class_name in enumerate(names):
        slug = re.sub(r"[^a-z0-9]+", "_", class_name.lower()).strip("_")
        metrics.append(view("iou", f"iou_{slug}", k))
    return metrics
