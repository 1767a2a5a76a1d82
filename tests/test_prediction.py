"""Prediction through the command line and the Python API: run folders, outputs, tuned thresholds."""

import csv
import json

import numpy as np
import pytest
from PIL import Image

from conftest import disk, fake_run
from unet.cli import main as cli
from unet.config import Config
from unet.device import precision_policy
from unet.evaluation import nuclei_scores
from unet.inference import predict_image
from unet.io import DataError
from unet.model import build_unet
from unet.rle import read_rle_csv, rle_decode
from unet.run import Run
from unet.synthetic import write_sample


@pytest.fixture(autouse=True)
def float32_policy():
    with precision_policy("float32"):
        yield


# ----------------------------------------------------------------------------- command line

def test_a_run_saved_before_color_mode_loads_with_rgb_input(tmp_path):
    run = tmp_path / "old_run"
    run.mkdir()
    build_unet(3, 3, base_filters=2, depth=2).save(run / "best.keras")
    values = Config(kind="dsb2018", head="boundary", num_classes=3).to_dict()
    del values["color_mode"]
    (run / "config.json").write_text(json.dumps(values))
    loaded = Run.load(run / "best.keras")
    assert loaded.config.color_mode == "rgb"
    probabilities, labels = loaded.predict(np.zeros((20, 24, 3), np.uint8))
    assert probabilities.shape == (20, 24, 3) and labels.shape == (20, 24)


@pytest.fixture(scope="module")
def tiny_sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_sample(root, seed=5, n_train=2, n_test=3, n_tissue=2)
    return root


def test_predict_and_evaluate_nuclei_through_the_command_line(tiny_sample, tmp_path, capsys):
    model = fake_run(tmp_path, "dsb2018", 3, [[0, 0, 0], [255, 255, 0], [255, 0, 255]])
    out = tmp_path / "pred"
    npy = str(tmp_path / "npy")
    assert cli(["predict", "--model", str(model), "--images", str(tiny_sample / "dsb2018"), "--out", str(out),
                "--npy-dir", npy, "--quiet", "--min-area", "1"]) == 0
    ids = sorted(p.name for p in (tiny_sample / "dsb2018/stage1_test").iterdir())
    assert sorted(p.stem for p in (out / "masks").iterdir()) == ids
    assert sorted(p.stem for p in (out / "overlays").iterdir()) == ids  # one overlay per input
    for name in ("input.gif", "output.gif"):
        gif = Image.open(out / name)
        assert gif.n_frames == 3
    assert Image.open(out / "input.gif").size == Image.open(out / "output.gif").size
    mask = Image.open(out / "masks" / f"{ids[0]}.png")
    assert np.asarray(mask).dtype == np.uint16 or mask.mode.startswith("I")
    labels = {i: np.asarray(Image.open(out / "masks" / f"{i}.png")).astype(np.int64) for i in ids}
    # the submission decodes back to the predicted masks, without overlaps
    rows = read_rle_csv(out / "submission.csv")
    for image_id, maps in labels.items():
        decoded = np.zeros(maps.shape, np.int64)
        for encoded, _, _ in rows.get(image_id, []):
            piece = rle_decode(encoded, maps.shape)
            assert not (decoded[piece] > 0).any()
            decoded[piece] = maps[piece][0]
        assert np.array_equal(decoded > 0, maps > 0)
        assert len(rows.get(image_id, [])) == maps.max()
    with open(out / "nuclei.csv") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == sum(int(m.max()) for m in labels.values())
    assert {"area", "centroid_y", "eccentricity", "mean_intensity", "equivalent_diameter"} <= set(table[0])

    capsys.readouterr()
    assert cli(["evaluate", "--pred", str(out), "--truth", str(tiny_sample / "dsb2018"), "--npy-dir", npy]) == 0
    printed = capsys.readouterr().out
    assert "map" in printed and (out / "metrics.json").is_file() and (out / "per_image.csv").is_file()
    metrics = json.loads((out / "metrics.json").read_text())  # the mAP of each modality, as DSB results are given
    assert sum(group["images"] for group in metrics["map_by_group"].values()) == metrics["images"]
    assert "map_by_group" in printed


def test_predict_and_evaluate_tissue_through_the_command_line(tiny_sample, tmp_path, capsys):
    palette = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25]]
    model = fake_run(tmp_path, "tissue", 4, palette)
    out = tmp_path / "pred"
    npy = str(tmp_path / "npy")
    assert cli(["predict", "--model", str(model), "--images", str(tiny_sample / "tissue"), "--out", str(out),
                "--npy-dir", npy, "--quiet"]) == 0
    mask = Image.open(out / "masks" / "tissue_000.png")
    assert mask.mode == "P" and mask.size == (512, 512)
    assert np.array_equal(np.array(mask.getpalette()[:12]).reshape(4, 3), palette)
    assert cli(["evaluate", "--pred", str(out), "--truth", str(tiny_sample / "tissue"), "--npy-dir", npy]) == 0
    assert (out / "confusion.png").is_file()
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["iou"]) == {"background", "stroma", "epithelium", "necrosis"}
    assert 0 <= metrics["mean_iou"] <= 1 and np.array(metrics["confusion"]).sum() == 2 * 512 * 512


def test_predict_tta_follows_the_run_config_unless_asked():
    from unet.cli import build_parser

    parse, base = build_parser().parse_args, ["predict", "--model", "m.keras", "--images", "i", "--out", "o"]
    assert parse(base).tta is None  # None: the run's config.json decides
    assert parse(base + ["--tta"]).tta is True and parse(base + ["--no-tta"]).tta is False


def test_evaluate_names_missing_predictions(tiny_sample, tmp_path, capsys):
    (tmp_path / "pred" / "masks").mkdir(parents=True)
    code = cli(["evaluate", "--pred", str(tmp_path / "pred"), "--truth", str(tiny_sample / "tissue"),
                "--npy-dir", str(tmp_path / "npy")])
    assert code == 1 and "tissue_000.png: no prediction" in capsys.readouterr().err


def test_resize_mode_predicts_at_the_training_size_and_returns_native_size():
    model = build_unet(3, 4, base_filters=2, depth=2)
    config = Config(kind="tissue", input_mode="resize", image_size=32)
    image = np.random.default_rng(3).integers(0, 255, (50, 70, 3), dtype=np.uint8)
    probabilities, labels = predict_image(model, config, image)
    assert probabilities.shape == (50, 70, 4) and labels.shape == (50, 70) and labels.dtype == np.uint8


# ----------------------------------------------------------------------------- tuned thresholds

def _dim_touching_disks():
    """Probabilities of two touching nuclei whose interiors reach only 0.45, and their truth."""
    shape = (40, 60)
    truth = np.zeros(shape, np.uint16)
    truth[disk(shape, (20, 20), 10)] = 1
    truth[disk(shape, (20, 39), 10) & (truth == 0)] = 2
    probabilities = np.zeros((*shape, 3), np.float32)
    probabilities[..., 0] = 1.0
    inner = disk(shape, (20, 20), 6) | disk(shape, (20, 39), 6)
    probabilities[truth > 0] = (0.1, 0.2, 0.7)
    probabilities[inner] = (0.1, 0.45, 0.45)
    return probabilities, truth


def test_thresholds_tuned_on_validation_beat_the_fixed_ones_and_reach_prediction(tmp_path):
    from unet.tuning import apply_thresholds, tune_nuclei_thresholds

    probabilities, truth = _dim_touching_disks()
    config = Config(kind="dsb2018", min_nucleus_area=12)
    tuned = tune_nuclei_thresholds([probabilities], [truth], config)
    assert tuned["untuned_map"] < 0.5  # seeds at 0.5 miss both interiors: one merged blob
    assert tuned["seed_threshold"] <= 0.4 and tuned["validation_map"] == 1.0
    run = tmp_path / "run"
    run.mkdir()
    (run / "thresholds.json").write_text(json.dumps(tuned))
    applied = apply_thresholds(config, run)
    assert (applied.seed_threshold, applied.foreground_threshold) == (tuned["seed_threshold"],
                                                                       tuned["foreground_threshold"])
    from unet.tasks import task_for

    assert nuclei_scores(truth, task_for("nuclei").labels(probabilities, applied))["map"] == 1.0
    (run / "thresholds.json").write_text("{}")
    with pytest.raises(DataError, match="thresholds.json: not a thresholds file"):
        apply_thresholds(config, run)


def test_ties_keep_the_configured_thresholds():
    from unet.tuning import tune_nuclei_thresholds

    truth = np.zeros((30, 30), np.uint16)
    truth[disk((30, 30), (15, 15), 8)] = 1
    probabilities = np.zeros((30, 30, 3), np.float32)
    probabilities[..., 0] = 1.0
    probabilities[truth > 0] = (0.0, 1.0, 0.0)  # any threshold gives the same perfect answer
    tuned = tune_nuclei_thresholds([probabilities], [truth], Config(kind="dsb2018"))
    assert (tuned["seed_threshold"], tuned["foreground_threshold"], tuned["min_nucleus_area"]) == (0.5, 0.5, 12)


def test_the_search_grows_past_the_grid_edge_the_best_thresholds_lie_on():
    from unet.tuning import FOREGROUND_GRID, tune_nuclei_thresholds

    shape = (64, 64)
    truth = np.zeros(shape, np.uint16)
    truth[disk(shape, (32, 32), 8)] = 1
    probabilities = np.zeros((*shape, 3), np.float32)
    probabilities[..., 0] = 1.0
    for radius, foreground in ((12, 0.45), (11, 0.55), (10, 0.65), (9, 0.75)):  # a halo fading outwards
        probabilities[disk(shape, radius=radius, center=(32, 32))] = (1 - foreground, 0.0, foreground)
    probabilities[truth > 0] = (0.0, 0.9, 0.1)
    for center, radius in (((8, 8), 2.5), ((8, 55), 3.6), ((55, 8), 3.6)):  # confident fragments of 21 and 37 px
        probabilities[disk(shape, center, radius)] = (0.0, 1.0, 0.0)
    tuned = tune_nuclei_thresholds([probabilities], [truth], Config(kind="dsb2018", min_nucleus_area=12))
    assert tuned["foreground_threshold"] > max(FOREGROUND_GRID)  # the halo goes only above the first grid
    assert tuned["min_nucleus_area"] == 48  # 24 drops one fragment, 48 the others; 96 gains nothing
    assert tuned["validation_map"] == 1.0 and tuned["untuned_map"] < 0.5
    chosen = {key: tuned[key] for key in ("seed_threshold", "foreground_threshold", "min_nucleus_area")}
    again = tune_nuclei_thresholds([probabilities], [truth], Config(kind="dsb2018", **chosen))
    assert {key: again[key] for key in chosen} == chosen  # tuning the tuned values changes nothing


def test_unlabelled_test_images_are_predicted_and_validation_is_scored_from_memory(tiny_sample, tmp_path):
    import dataclasses

    from unet.data import load_dataset
    from unet.outputs import evaluate_folder
    from unet.study import predict_and_score

    palette = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25]]
    run = Run.load(fake_run(tmp_path, "tissue", 4, palette))
    data = load_dataset(tiny_sample / "tissue", npy_dir=tmp_path / "npy", progress=False, verbose=False)
    test_set, val_set = dataclasses.replace(data.subset([0]), masks=None), data.subset([1])
    out = tmp_path / "out"
    scored, summary, rows, confusion = predict_and_score(run.with_settings(tta=False), test_set, val_set, out)
    assert scored is val_set and [row["image"] for row in rows] == val_set.ids
    assert (out / "test" / "masks" / f"{test_set.ids[0]}.png").is_file()
    on_disk, _, _ = evaluate_folder(out / "validation", val_set)  # the PNGs written say the same
    assert summary["mean_iou"] == pytest.approx(on_disk["mean_iou"]) and confusion.sum() == 512 * 512


def test_a_folder_predicted_as_dask_tasks_writes_the_same_files(tiny_sample, tmp_path):
    from distributed import LocalCluster

    from unet.data import load_dataset
    from unet.outputs import predict_folder

    run = Run.load(fake_run(tmp_path, "dsb2018", 3, [[0, 0, 0], [255, 255, 0], [255, 0, 255]]))
    data = load_dataset(tiny_sample / "dsb2018" / "stage1_test", npy_dir=tmp_path / "npy", require_labels=False,
                        progress=False, verbose=False)
    local = predict_folder(run, data, tmp_path / "local", progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        remote = predict_folder(run, data, tmp_path / "cluster", progress=False, scheduler=cluster.scheduler_address)
    assert list(remote) == list(local) == data.ids
    assert all(np.array_equal(local[i], remote[i]) for i in data.ids)
    for name in ("nuclei.csv", "submission.csv"):
        assert (tmp_path / "local" / name).read_text() == (tmp_path / "cluster" / name).read_text()
