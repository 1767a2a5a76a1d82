"""Metrics: the DSB2018 score for nuclei instances, per-class IoU/Dice for tissue classes."""

from __future__ import annotations

import numpy as np

from .dataset import modality, size_group

THRESHOLDS = np.round(np.arange(0.5, 1.0, 0.05), 2)  # 0.50, 0.55, ..., 0.95


def consecutive_labels(labels: np.ndarray) -> np.ndarray:
    """The label map renumbered 1..n in order of its ids (0 stays background).

    Label maps from other tools may use any ids (gaps, shuffles, large values); the metric
    counts objects by their distinct ids, never by the largest one.
    """
    labels = np.asarray(labels)
    ids = np.unique(labels)
    objects = ids[ids != 0]
    numbered = np.searchsorted(objects, labels).astype(np.int64) + 1
    numbered[labels == 0] = 0
    return numbered


def overlap_counts(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """Pixels shared by every true object (rows) and predicted one (columns), background (0)
    included as the first row and column: one co-occurrence histogram of the two maps, each
    renumbered 1..n first (any ids)."""
    truth, prediction = consecutive_labels(truth).ravel(), consecutive_labels(prediction).ravel()
    n_true, n_pred = int(truth.max(initial=0)), int(prediction.max(initial=0))
    joint = np.bincount(truth * (n_pred + 1) + prediction, minlength=(n_true + 1) * (n_pred + 1))
    return joint.reshape(n_true + 1, n_pred + 1)


def iou_matrix(truth: np.ndarray, prediction: np.ndarray) -> np.ndarray:
    """IoU of every true nucleus (rows) with every predicted one (columns)."""
    return iou_of_overlaps(overlap_counts(truth, prediction))


def iou_of_overlaps(joint: np.ndarray) -> np.ndarray:
    """The IoU matrix (objects only) of an :func:`overlap_counts` matrix."""
    area_true, area_pred = joint.sum(axis=1), joint.sum(axis=0)
    intersection = joint[1:, 1:]
    union = area_true[1:, None] + area_pred[None, 1:] - intersection
    return intersection / np.maximum(union, 1)


def match_counts(iou: np.ndarray, threshold: float) -> tuple[int, int, int]:
    """(TP, FP, FN) at an IoU threshold >= 0.5, where matches are necessarily one-to-one."""
    if threshold < 0.5:
        raise ValueError("one-to-one matching by thresholding needs IoU thresholds of at least 0.5")
    true_positive = int((iou > threshold).sum())
    return true_positive, iou.shape[1] - true_positive, iou.shape[0] - true_positive


UNMATCHED_CAUSES = ("merged", "split", "missed", "outline")


def unmatched_causes(truth: np.ndarray, prediction: np.ndarray) -> dict[str, int]:
    """Why the true nuclei without a match at IoU 0.5 have none, one cause each:
    'merged' (the prediction holding most of it also holds most of another true nucleus),
    'split' (predicted as foreground, but no prediction holds half of it), 'missed' (less than
    half of it predicted as foreground) or 'outline' (one prediction holds most of it, with a
    wrong outline). Which error a method makes decides what would fix it."""
    return _causes_of_overlaps(overlap_counts(truth, prediction))


def _causes_of_overlaps(joint: np.ndarray) -> dict[str, int]:
    counts = dict.fromkeys(UNMATCHED_CAUSES, 0)
    if joint.shape[0] == 1:
        return counts
    area_true, inside = joint.sum(axis=1), joint[1:, 1:]
    matched = (iou_of_overlaps(joint) > 0.5).any(axis=1)
    holds_most = inside * 2 > area_true[1:, None]  # prediction j holds most of true nucleus i
    for i in np.flatnonzero(~matched):
        if (area_true[i + 1] - joint[i + 1, 0]) * 2 < area_true[i + 1]:
            counts["missed"] += 1
        elif not holds_most[i].any():
            counts["split"] += 1
        elif holds_most[:, holds_most[i].argmax()].sum() > 1:
            counts["merged"] += 1
        else:
            counts["outline"] += 1
    return counts


def nuclei_scores(truth: np.ndarray, prediction: np.ndarray) -> dict[str, float]:
    """Scores of one image: the DSB2018 score (mean over IoU thresholds 0.50:0.05:0.95 of
    TP/(TP+FP+FN)), AP@0.5, F1@0.5, foreground IoU and Dice, and the nucleus counts.

    Both empty scores 1; one empty and the other not scores 0.
    """
    return _scores_of_overlaps(overlap_counts(truth, prediction))


def _scores_of_overlaps(joint: np.ndarray) -> dict[str, float]:
    iou = iou_of_overlaps(joint)
    precisions = []
    for threshold in THRESHOLDS:
        tp, fp, fn = match_counts(iou, threshold)
        precisions.append(tp / (tp + fp + fn) if tp + fp + fn else 1.0)
    tp, fp, fn = match_counts(iou, 0.5)
    inter, total = joint[1:, 1:].sum(), joint[1:].sum() + joint[:, 1:].sum()  # foreground pixels
    return {"map": float(np.mean(precisions)), "ap50": precisions[0],
            "f1_50": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
            "foreground_iou": float(inter / (total - inter)) if total else 1.0,
            "foreground_dice": float(2 * inter / total) if total else 1.0,
            "true_nuclei": iou.shape[0], "predicted_nuclei": iou.shape[1]}


def evaluate_nuclei(ids, truths, predictions, images=None) -> tuple[dict, list[dict]]:
    """(summary over images, one row per image). Scores are means over images; each row and the
    summary also count the true nuclei left unmatched at IoU 0.5 by cause (:func:`unmatched_causes`).

    With the ``images``, each row also names its modality and size group, and the summary
    holds the mAP and the unmatched counts of each group (``map_by_group``, ``map_by_size``), as
    DSB2018 results are reported.
    """
    rows = [_image_row(i, overlap_counts(t, p)) for i, t, p in zip(ids, truths, predictions)]
    keys = ("map", "ap50", "f1_50", "foreground_iou", "foreground_dice")
    summary = {k: float(np.mean([row[k] for row in rows])) for k in keys}
    summary.update(images=len(rows), true_nuclei=int(sum(r["true_nuclei"] for r in rows)),
                   predicted_nuclei=int(sum(r["predicted_nuclei"] for r in rows)),
                   unmatched_true_nuclei=_unmatched_total(rows))
    if images is not None:
        for key, column, group_of in (("map_by_group", "modality", modality), ("map_by_size", "size", size_group)):
            for row, image in zip(rows, images):
                row[column] = group_of(image)
            groups = sorted({row[column] for row in rows})
            summary[key] = {group: {"images": sum(row[column] == group for row in rows),
                                    "map": float(np.mean([row["map"] for row in rows if row[column] == group])),
                                    "unmatched_true_nuclei": _unmatched_total([r for r in rows if r[column] == group])}
                            for group in groups}
    return summary, rows


def _image_row(image_id: str, joint: np.ndarray) -> dict:
    """One image's scores and unmatched causes, from one overlap histogram."""
    causes = _causes_of_overlaps(joint)
    return {"image": image_id, **_scores_of_overlaps(joint), **{f"unmatched_{c}": n for c, n in causes.items()}}


def _unmatched_total(rows: list[dict]) -> dict[str, int]:
    return {cause: int(sum(row[f"unmatched_{cause}"] for row in rows)) for cause in UNMATCHED_CAUSES}


def confusion_matrix(truth: np.ndarray, prediction: np.ndarray, num_classes: int, ignore_label: int = 255) -> np.ndarray:
    """Pixel counts: rows are true classes, columns predicted ones; ignored pixels left out."""
    truth, prediction = np.asarray(truth).ravel().astype(np.int64), np.asarray(prediction).ravel().astype(np.int64)
    keep = truth != ignore_label
    if np.any(truth[keep] >= num_classes) or np.any(prediction >= num_classes):
        raise ValueError(f"labels outside 0..{num_classes - 1}")
    return np.bincount(truth[keep] * num_classes + prediction[keep],
                       minlength=num_classes**2).reshape(num_classes, num_classes)


def class_scores(confusion: np.ndarray, class_names: list[str]) -> dict:
    """Per-class IoU and Dice, mean IoU and Dice (over classes that occur), pixel accuracy."""
    confusion = np.asarray(confusion, np.float64)
    tp = np.diag(confusion)
    fp, fn = confusion.sum(axis=0) - tp, confusion.sum(axis=1) - tp
    present = (tp + fp + fn) > 0
    iou = np.where(present, tp / np.maximum(tp + fp + fn, 1), np.nan)
    dice = np.where(present, 2 * tp / np.maximum(2 * tp + fp + fn, 1), np.nan)
    return {"pixel_accuracy": float(tp.sum() / max(confusion.sum(), 1)),
            "mean_iou": float(np.nanmean(iou)) if present.any() else float("nan"),
            "mean_dice": float(np.nanmean(dice)) if present.any() else float("nan"),
            "iou": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, iou)},
            "dice": {name: (None if np.isnan(v) else float(v)) for name, v in zip(class_names, dice)}}


def evaluate_classes(ids, truths, predictions, class_names, ignore_label: int = 255) -> tuple[dict, list[dict], np.ndarray]:
    """(summary over all pixels, one row per image, the confusion matrix)."""
    k = len(class_names)
    total = np.zeros((k, k), np.int64)
    rows = []
    for image_id, truth, prediction in zip(ids, truths, predictions):
        confusion = confusion_matrix(truth, prediction, k, ignore_label)
        total += confusion
        scores = class_scores(confusion, class_names)
        rows.append({"image": image_id, "pixel_accuracy": scores["pixel_accuracy"], "mean_iou": scores["mean_iou"],
                     **{f"iou_{name}": scores["iou"][name] for name in class_names}})
    summary = class_scores(total, class_names)
    summary["images"] = len(rows)
    summary["confusion"] = total.tolist()
    return summary, rows, total


def format_table(summary: dict) -> str:
    """A short plain-text table of a summary."""
    lines = []
    for key, value in summary.items():
        if isinstance(value, dict) and all(isinstance(v, dict) for v in value.values()):  # mAP by group
            lines += [f"  {key:<14} {name + ' (' + str(v['images']) + ')':<26} {v['map']:.4f}"
                      + ("  unmatched: " + ", ".join(f"{cause} {n}" for cause, n in v["unmatched_true_nuclei"].items())
                         if "unmatched_true_nuclei" in v else "") for name, v in value.items()]
        elif isinstance(value, dict):
            lines += [f"  {key:<10} {name:<24} {'-' if v is None else v if isinstance(v, int) else f'{v:.4f}'}"
                      for name, v in value.items()]
        elif isinstance(value, float):
            lines.append(f"  {key:<35} {value:.4f}")
        elif not isinstance(value, list):
            lines.append(f"  {key:<35} {value}")
    return "\n".join(lines)
