import csv
import json
import warnings

import keras
import numpy as np
import pytest
from keras import layers
from PIL import Image

from conftest import disk
from unet.cli import main as cli
from unet.config import Config
from unet.evaluation import class_scores, confusion_matrix, iou_matrix, nuclei_scores
from unet.device import precision_policy
from unet.inference import predict_image, predictor
from unet.io import DataError
from unet.losses import ConfusionMetric
from unet.model import build_unet
from unet.nuclei import boundary_target, nuclei_from_probabilities, relabel_instances
from unet.preprocess import Preprocessor, normalize
from unet.rle import read_rle_csv, rle_decode, rle_encode_labels
from unet.run import Run
from unet.synthetic import write_sample
from unet.tiling import model_stride, predict_tiled, tile_layout


def tiled_prediction(model, image, tta=False, **options):
    """The model's probabilities of a whole image through the tiler, as prediction runs it."""
    return predict_tiled(predictor(model, tta), normalize(image), stride=model_stride(model), **options)


@pytest.fixture(autouse=True)
def float32_policy():
    with precision_policy("float32"):
        yield


def test_tiled_equals_untiled_when_the_overlap_covers_the_receptive_field():
    keras.utils.set_random_seed(0)
    model = build_unet(3, 3, base_filters=4, depth=1)
    image = np.random.default_rng(0).integers(0, 255, (80, 112, 3), dtype=np.uint8)
    whole = tiled_prediction(model, image, tile_size=512)  # one pass
    tiled = tiled_prediction(model, image, tile_size=64, overlap=0.75, batch_size=3)  # 2 x 4 tiles
    assert whole.shape == tiled.shape == (80, 112, 3)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    # and the untiled pass is the model itself on the image
    direct = np.asarray(model.predict(normalize(image)[None], verbose=0))[0]
    np.testing.assert_allclose(whole, direct, atol=1e-6)


def test_tiled_is_close_to_untiled_for_a_default_depth_unet():
    model = build_unet(3, 1, base_filters=2, depth=4)
    image = np.random.default_rng(1).integers(0, 255, (100, 130, 3), dtype=np.uint8)
    whole = tiled_prediction(model, image, tile_size=256)
    tiled = tiled_prediction(model, image, tile_size=64, overlap=0.5)
    assert np.abs(tiled - whole).mean() < 0.02


@pytest.mark.parametrize("height, width, expected_tiles", [(520, 696, 12), (256, 256, 1), (40, 1000, 5)])
def test_tile_layout_covers_the_padded_image(height, width, expected_tiles):
    layout = tile_layout(height, width, tile_size=256, overlap=0.25, stride=16)
    padded_h, padded_w = layout["padded"]
    assert padded_h % 16 == padded_w % 16 == 0 and 0 <= padded_h - height < 16 and 0 <= padded_w - width < 16
    tile_h, tile_w = layout["tile"]
    covered = np.zeros((padded_h, padded_w), bool)
    for y, x in layout["starts"]:
        assert 0 <= y <= padded_h - tile_h and 0 <= x <= padded_w - tile_w
        covered[y:y + tile_h, x:x + tile_w] = True
    assert covered.all() and len(layout["starts"]) == expected_tiles
    with pytest.raises(ValueError, match="multiple of the model stride"):
        tile_layout(height, width, tile_size=250, overlap=0.25, stride=16)


@pytest.mark.parametrize("tta", [False, True])
def test_identity_model_through_the_tiler_reproduces_its_input(tta):
    identity = keras.Sequential([keras.Input((None, None, 3)), layers.Identity()])
    image = np.random.default_rng(2).integers(0, 255, (50, 77, 3), dtype=np.uint8)
    out = tiled_prediction(identity, image, tta, tile_size=16, overlap=0.5)
    np.testing.assert_allclose(out, normalize(image), atol=1e-5)


def _two_touching_disks():
    shape = (40, 60)
    instances = np.zeros(shape, np.uint16)
    instances[disk(shape, (20, 19), 10)] = 1
    instances[disk(shape, (20, 39), 10) & (instances == 0)] = 2
    return instances


def test_two_touching_disks_from_three_class_output():
    instances = _two_touching_disks()
    probabilities = np.eye(3, dtype=np.float32)[boundary_target(instances)]
    labels = nuclei_from_probabilities(probabilities, min_area=5)
    assert labels.max() == 2 and labels.dtype == np.uint16
    assert nuclei_scores(instances, labels)["ap50"] == 1.0


def test_two_touching_disks_from_binary_output():
    instances = _two_touching_disks()
    probabilities = (instances > 0).astype(np.float32)[..., None]
    labels = nuclei_from_probabilities(probabilities, min_area=5)
    assert labels.max() == 2
    assert nuclei_scores(instances, labels)["ap50"] == 1.0


def test_tiny_objects_are_removed():
    probabilities = np.zeros((20, 20, 1), np.float32)
    probabilities[2:4, 2:4] = 1  # 4 px
    probabilities[10:16, 10:16] = 1  # 36 px
    labels = nuclei_from_probabilities(probabilities, min_area=12)
    assert labels.max() == 1 and (labels == 1).sum() == 36


def test_relabel_instances_keeps_objects_of_the_minimum_area_quietly():
    labels = np.zeros((10, 10), np.int32)
    labels[0:3, 0:4] = 7  # 12 px: kept
    labels[5:7, 5:7] = 3  # 4 px: removed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one object left must not warn (skimage's remove_small_objects does)
        out = relabel_instances(labels, min_area=12)
        single = relabel_instances(np.where(labels == 7, 1, 0), min_area=12)
    assert out.dtype == np.uint16 and set(np.unique(out)) == {0, 1} and (out == 1).sum() == 12
    np.testing.assert_array_equal(single, out)


# ----------------------------------------------------------------------------- metrics

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


def test_rle_encode_labels_round_trip():
    instances = _two_touching_disks()
    encoded = rle_encode_labels(instances)
    assert sorted(encoded) == [1, 2]
    for label, text in encoded.items():
        assert np.array_equal(rle_decode(text, instances.shape), instances == label)


# ----------------------------------------------------------------------------- command line

def _fake_run(tmp_path, kind, channels, palette):
    run = tmp_path / f"run_{kind}"
    run.mkdir()
    keras.utils.set_random_seed(1)
    config = Config(kind=kind, head="boundary" if kind == "dsb2018" else "multiclass", num_classes=channels,
                    tile_size=64, extra={"palette": palette})
    build_unet(Preprocessor.for_config(config).channels, channels, base_filters=2, depth=2).save(run / "best.keras")
    config.save(run / "config.json")
    return run / "best.keras"


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
    model = _fake_run(tmp_path, "dsb2018", 3, [[0, 0, 0], [255, 255, 0], [255, 0, 255]])
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


def test_predict_and_evaluate_tissue_through_the_command_line(tiny_sample, tmp_path, capsys):
    palette = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25]]
    model = _fake_run(tmp_path, "tissue", 4, palette)
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


def test_unlabelled_test_images_are_predicted_and_validation_is_scored_from_memory(tiny_sample, tmp_path):
    import dataclasses

    from unet.data import load_dataset
    from unet.outputs import evaluate_folder
    from unet.study import predict_and_score

    palette = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25]]
    run = Run.load(_fake_run(tmp_path, "tissue", 4, palette))
    data = load_dataset(tiny_sample / "tissue", npy_dir=tmp_path / "npy", progress=False, verbose=False)
    test_set, val_set = dataclasses.replace(data.subset([0]), masks=None), data.subset([1])
    out = tmp_path / "out"
    scored, summary, rows, confusion = predict_and_score(run.with_settings(tta=False), test_set, val_set, out)
    assert scored is val_set and [row["image"] for row in rows] == val_set.ids
    assert (out / "test" / "masks" / f"{test_set.ids[0]}.png").is_file()
    on_disk, _, _ = evaluate_folder(out / "validation", val_set)  # the PNGs written say the same
    assert summary["mean_iou"] == pytest.approx(on_disk["mean_iou"]) and confusion.sum() == 512 * 512
