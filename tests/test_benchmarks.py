"""The benchmark scripts still run (tiny settings; their figures are not checked here)."""

import json
import subprocess
import sys
from pathlib import Path

from conftest import benchmark_module
from unet.config import Config
from unet.synthetic import write_sample

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _run(*args) -> str:
    done = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_throughput_workers_report_images_per_second():
    for variant in ("project", "naive"):
        out = _run(BENCHMARKS / "throughput.py", "--worker", variant, "--filters", 2, "--images", 8, "--epochs", 1)
        result = json.loads(out.split("RESULT ", 1)[1])
        assert result["images_per_s"] > 0 and result["precision"] in ("float32", "mixed_bfloat16")
        assert 0 <= result["teardown_seconds"] < result["seconds"]


def test_accuracy_benchmark_scores_both_recipes(tmp_path):
    write_sample(tmp_path / "data", seed=4, n_train=4, n_test=2, n_tissue=1)
    report = tmp_path / "accuracy.json"
    _run(BENCHMARKS / "accuracy.py", "--train", tmp_path / "data" / "dsb2018" / "stage1_train",
         "--test", tmp_path / "data" / "dsb2018" / "stage1_test", "--minutes", 0.05, "--image-size", 64,
         "--logs", tmp_path / "logs", "--json", report, "--set", "contact_width=1",
         "--set", f"npy_dir={tmp_path / 'npy'}")  # the cache in the test's folder, not the repository's
    results = json.loads(report.read_text())
    for recipe in ("project", "starter"):
        assert 0 <= results[recipe]["map"] <= 1 and results[recipe]["images"] == 2
    assert sum(group["images"] for group in results["project"]["map_by_group"].values()) == 2
    assert results["starter"]["schedule"] == "kaggle" and 1 <= results["starter"]["epochs"] <= 50
    saved = json.loads((Path(results["project"]["run"]) / "config.json").read_text())
    assert saved["contact_width"] == 1
    # the user's path: what differs from `unet train`'s defaults is data, budget, bookkeeping, --set and
    # the 'auto' settings the run resolved
    changed = {key for key, default in Config().to_dict().items() if saved[key] != default and default != "auto"}
    assert changed <= {"data_dir", "npy_dir", "stray", "image_size", "max_minutes", "logs_dir", "run_name", "contact_width",
                       "num_classes", "extra"}, changed

    # --evaluate scores the saved model again without training: the same predictions, the same score;
    # --refit then trains the final model on the training and validation images and scores it too
    again = tmp_path / "again.json"
    _run(BENCHMARKS / "accuracy.py", "--train", tmp_path / "data" / "dsb2018" / "stage1_train",
         "--test", tmp_path / "data" / "dsb2018" / "stage1_test", "--json", again,
         "--evaluate", Path(results["project"]["run"]) / "best.keras", "--refit")
    rescored = json.loads(again.read_text())
    assert "starter" not in rescored and rescored["project"]["epochs"] == 0
    assert rescored["project"]["map"] == results["project"]["map"]
    assert rescored["project"]["predicted_nuclei"] == results["project"]["predicted_nuclei"]
    best_epoch = json.loads((Path(results["project"]["run"]) / "best.json").read_text())["epoch"]
    assert rescored["refit"]["trained_images"] == 4 and rescored["refit"]["epochs"] == best_epoch
    assert rescored["refit"]["run"] == results["project"]["run"] + "-all" and 0 <= rescored["refit"]["map"] <= 1

    # the inference-scale probe: at scale 1 it re-tunes the run's (already tuned) thresholds on the same
    # validation images, so it keeps them and scores the test images as the benchmark did
    scales = tmp_path / "scales.json"
    _run(BENCHMARKS / "inference_scale.py", "--model", results["project"]["run"], "--train",
         tmp_path / "data" / "dsb2018" / "stage1_train", "--test", tmp_path / "data" / "dsb2018" / "stage1_test",
         "--scales", "1,2", "--npy-dir", tmp_path / "npy", "--json", scales)
    probe = json.loads(scales.read_text())
    assert set(probe["scales"]) == {"1.0", "2.0"} and probe["chosen"] in probe["scales"]
    assert probe["scales"]["1.0"]["test"]["map"] == results["project"]["map"]
    assert all(0 <= row["validation"]["map"] <= 1 for row in probe["scales"].values())

    # the post-processing probe: its 'base' variant at the untuned thresholds is the run's own score of
    # its validation images before tuning (float16 probabilities aside)
    out = _run(BENCHMARKS / "postprocessing.py", results["project"]["run"], "--variants", "base,smooth,relative_area",
               "--grid", "0.5", "--areas", "12", "--workers", "1")
    scores = {line.split()[0]: float(line.split("mAP ")[1].split()[0]) for line in out.splitlines() if " mAP " in line}
    tuned = json.loads((Path(results["project"]["run"]) / "thresholds.json").read_text())
    assert set(scores) == {"base", "smooth", "relative_area"} and abs(scores["base"] - tuned["untuned_map"]) < 0.02
    assert (Path(results["project"]["run"]) / "postprocessing_validation.npz").is_file()


def test_the_relative_area_variant_keeps_tiny_nuclei_where_all_nuclei_are_tiny():
    import numpy as np

    probe = benchmark_module("postprocessing")
    probabilities = np.zeros((40, 40, 3), np.float32)
    probabilities[..., 0] = 1.0
    for y in (5, 20, 35):  # three 3x3 nuclei (9 px), far apart
        probabilities[y - 1:y + 2, 5:8] = (0.0, 1.0, 0.0)
    assert probe.project(probabilities, 0.5, 0.5, 24).max() == 0  # removed by a 24 px minimum
    assert probe.relative_area(probabilities, 0.5, 0.5, 24).max() == 3  # kept: the limit is 9 / 4 px here
    for x in (12, 26):  # beside four 12x12 nuclei (median 144 px: limit min(24, 36) px) the tiny ones go
        probabilities[1:13, x:x + 12] = probabilities[27:39, x:x + 12] = (0.0, 1.0, 0.0)
    labels = probe.relative_area(probabilities, 0.5, 0.5, 24)
    assert labels.max() == 4 and np.bincount(labels.ravel())[1:].min() == 144


def test_unmatched_report_rows_give_each_true_nucleus_its_area_contrast_and_best_iou():
    import numpy as np

    probe = benchmark_module("postprocessing")
    truth = np.zeros((20, 20), np.int32)
    truth[2:6, 2:6], truth[10:16, 10:15] = 3, 7  # 16 px and 30 px
    image = np.full((20, 20, 1), 0.1, np.float32)
    image[truth == 3], image[truth == 7] = 0.9, 0.15  # a bright and a faint nucleus
    labels = np.zeros_like(truth)
    labels[2:6, 2:8] = 1  # the bright one found, a little too wide (IoU 16 / 24); the faint one missed
    rows = probe.nucleus_rows(truth, labels, image)
    assert np.allclose(rows, [[16, 0.8, 16 / 24], [30, 0.05, 0.0]])


def test_step_profile_puts_the_training_steps_ops_in_groups(tmp_path):
    report = tmp_path / "profile.json"
    out = _run(BENCHMARKS / "step_profile.py", "--filters", 2, "--size", 32, "--batch", 2, "--depth", 2,
               "--steps", 2, "--json", report)
    result = json.loads(report.read_text())
    groups = result["groups_ms_per_step"]
    for group in ("convolution: forward", "convolution: weight gradient", "convolution: input gradient",
                  "batch norm: forward", "batch norm: gradient"):
        assert groups[group] > 0, group
    assert result["wall_ms_per_step"] > 0 and "ms per step (wall clock)" in out
