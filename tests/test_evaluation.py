"""Metrics: IoU matrices, the DSB2018 score, per-class IoU, run-length round trips."""

import numpy as np
import pytest

from conftest import disk
from unet.evaluation import (class_scores, confusion_matrix, evaluate_nuclei, format_table, iou_matrix, nuclei_scores,
                             unmatched_causes)
from unet.losses import ConfusionMetric


def test_iou_matrix_matches_brute_force():
    rng = np.random.default_rng(4)
    truth, prediction = rng.integers(0, 5, (30, 30)), rng.integers(0, 4, (30, 30))
    iou = iou_matrix(truth, prediction)
    for i in range(1, 5):
        for j in range(1, 4):
            a, b = truth == i, prediction == j
            assert iou[i - 1, j - 1] == pytest.approx((a & b).sum() / (a | b).sum())


def test_dsb_score_of_a_shifted_square():
    truth = np.zeros((20, 20), np.uint16)
    truth[5:15, 5:15] = 1
    shifted = np.roll(truth, 2, axis=1)  # IoU = 80 / 120 = 0.667: passes 0.50..0.65, fails 0.70..0.95
    scores = nuclei_scores(truth, shifted)
    assert scores["map"] == pytest.approx(0.4) and scores["ap50"] == 1.0
    assert scores["foreground_iou"] == pytest.approx(80 / 120) and scores["foreground_dice"] == pytest.approx(0.8)


def test_dsb_score_of_shifted_disks_with_a_miss_and_a_false_positive():
    shape = (64, 64)
    truth = np.zeros(shape, np.uint16)
    truth[disk(shape, (16, 16), 8)] = 1
    truth[disk(shape, (45, 45), 8)] = 2  # missed
    prediction = np.zeros(shape, np.uint16)
    prediction[disk(shape, (16, 17), 8)] = 1  # one-pixel shift
    prediction[disk(shape, (50, 12), 5)] = 2  # false positive
    a, b = truth == 1, prediction == 1
    iou = (a & b).sum() / (a | b).sum()
    passed = (np.round(np.arange(0.5, 1.0, 0.05), 2) < iou).sum()
    scores = nuclei_scores(truth, prediction)
    assert scores["map"] == pytest.approx(passed * (1 / 3) / 10)  # TP=1, FP=1, FN=1 where matched
    assert scores["f1_50"] == pytest.approx(0.5)


def test_dsb_score_edge_cases():
    empty, one = np.zeros((8, 8), np.uint16), np.zeros((8, 8), np.uint16)
    one[2:5, 2:5] = 1
    assert nuclei_scores(empty, empty)["map"] == 1.0
    assert nuclei_scores(one, empty)["map"] == 0.0
    assert nuclei_scores(empty, one)["map"] == 0.0
    assert nuclei_scores(one, one)["map"] == 1.0


def test_nuclei_summary_by_modality_and_size_is_the_mean_of_each_groups_images():
    truth = np.zeros((32, 32), np.uint16)
    truth[8:20, 8:20] = 1
    wrong = np.roll(truth, 4, axis=0)  # IoU 8/16: mAP 0 (0.5 is not passed)
    dark = np.full((32, 32), 10, np.uint8)  # fluorescence: gray, dark background
    bright = np.full((32, 32), 200, np.uint8)  # brightfield: gray, bright background
    stained = np.stack([np.full((32, 32), 200), np.full((32, 32), 120), np.full((32, 32), 220)], -1).astype(np.uint8)
    large = np.full((600, 32), 10, np.uint8)
    big_truth = np.zeros((600, 32), np.uint16)
    big_truth[8:20, 8:20] = 1
    summary, rows = evaluate_nuclei(["a", "b", "c", "d", "e"], [truth, truth, truth, truth, big_truth],
                                    [truth, wrong, truth, wrong, big_truth], [dark, dark, bright, stained, large])
    assert [row["modality"] for row in rows] == ["fluorescence"] * 2 + ["brightfield", "colour", "fluorescence"]
    scores = lambda groups: {name: (g["images"], g["map"]) for name, g in groups.items()}  # noqa: E731
    assert scores(summary["map_by_group"]) == {"brightfield": (1, 1.0), "colour": (1, 0.0),
                                               "fluorescence": (3, pytest.approx(2 / 3))}
    assert scores(summary["map_by_size"]) == {"medium (500-999 px)": (1, 1.0), "small (<500 px)": (4, 0.5)}
    assert sum(summary["map_by_group"]["colour"]["unmatched_true_nuclei"].values()) == 1  # its one nucleus
    assert sum(summary["map_by_group"]["brightfield"]["unmatched_true_nuclei"].values()) == 0
    assert summary["map"] == pytest.approx(0.6)
    assert "colour (1)" in format_table(summary) and "medium (500-999 px) (1)" in format_table(summary)
    without_images, plain_rows = evaluate_nuclei(["a"], [truth], [truth])
    assert "map_by_group" not in without_images and "modality" not in plain_rows[0]


def test_each_unmatched_true_nucleus_gets_one_cause():
    truth, prediction = np.zeros((20, 60), np.uint16), np.zeros((20, 60), np.uint16)
    truth[2:8, 2:8], prediction[2:8, 2:8] = 1, 9  # matched
    truth[2:8, 10:16], truth[2:8, 16:22], prediction[2:8, 10:22] = 2, 3, 4  # two merged into one
    truth[2:8, 24:32], prediction[2:8, 24:28], prediction[2:8, 28:32] = 5, 5, 6  # split in halves
    truth[2:8, 34:40], prediction[2:4, 34:40] = 6, 7  # a third found: missed
    truth[10:14, 2:6], prediction[9:17, 1:9] = 7, 8  # inside a prediction four times its size: outline
    causes = unmatched_causes(truth, prediction)
    assert causes == {"merged": 2, "split": 1, "missed": 1, "outline": 1}
    assert nuclei_scores(truth, prediction)["true_nuclei"] - sum(causes.values()) == 1  # the matched one
    assert unmatched_causes(truth, truth) == dict.fromkeys(causes, 0)
    assert unmatched_causes(np.zeros((4, 4)), np.ones((4, 4)))["missed"] == 0  # nothing true, nothing unmatched
    gray = np.zeros((20, 60, 3), np.uint8)
    summary, rows = evaluate_nuclei(["a", "b"], [truth, truth], [prediction, truth], [gray, gray])
    assert summary["unmatched_true_nuclei"] == causes and "merged 2" in format_table(summary)
    assert [row["unmatched_merged"] for row in rows] == [2, 0]  # per image, as per_image.csv lists them
    (group,) = summary["map_by_group"].values()
    assert group["unmatched_true_nuclei"] == causes


def test_per_class_iou_on_a_known_confusion_matrix():
    confusion = np.array([[50, 10, 0], [5, 30, 5], [0, 0, 0]])
    scores = class_scores(confusion, ["a", "b", "c"])
    assert scores["iou"]["a"] == pytest.approx(50 / 65) and scores["iou"]["b"] == pytest.approx(30 / 50)
    assert scores["iou"]["c"] == 0.0  # predicted 5 times, never true
    assert scores["mean_iou"] == pytest.approx((50 / 65 + 30 / 50 + 0) / 3)
    absent = class_scores(np.array([[5, 1, 0], [2, 4, 0], [0, 0, 0]]), ["a", "b", "c"])
    assert absent["iou"]["c"] is None  # neither true nor predicted: left out of the mean
    assert absent["mean_iou"] == pytest.approx((5 / 8 + 4 / 7) / 2)
    assert scores["pixel_accuracy"] == pytest.approx(80 / 100)
    assert scores["dice"]["b"] == pytest.approx(60 / 80)


def test_confusion_matrix_skips_the_ignore_label_and_agrees_with_the_training_metric():
    truth = np.array([[0, 1, 2], [255, 1, 0]])
    prediction = np.array([[0, 2, 2], [1, 1, 1]])
    confusion = confusion_matrix(truth, prediction, 3)
    assert confusion.sum() == 5 and confusion[1, 2] == 1 and confusion[0, 1] == 1
    metric = ConfusionMetric(3, "iou")
    metric.update_state(truth[None, ..., None], np.eye(3, dtype=np.float32)[prediction][None])
    assert float(metric.result()) == pytest.approx(class_scores(confusion, ["a", "b", "c"])["mean_iou"])
