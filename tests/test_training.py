import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from unet.config import Config
from unet.data import decode_dataset
from unet.synthetic import write_sample
from unet.pipeline import CropSampler, make_train_dataset
from unet.preprocess import Preprocessor, model_input, normalize
from unet.run import read_history
from unet.training import train


@pytest.fixture(scope="module")
def sample(tmp_path_factory):
    root = tmp_path_factory.mktemp("sample")
    write_sample(root, seed=1, n_train=6, n_test=0, n_tissue=3)
    return root


def tiny_config(tmp_path, **changes) -> Config:
    values = dict(image_size=64, batch_size=4, epochs=2, steps_per_epoch=6, base_filters=4, depth=2,
                  learning_rate=3e-3, logs_dir=str(tmp_path / "logs"), run_name="tiny", seed=3)
    values.update(changes)
    return Config(**values)


def _event_tags(folder):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    accumulator = EventAccumulator(str(folder), size_guidance={"tensors": 0})
    accumulator.Reload()
    return accumulator


@pytest.mark.parametrize("kind,head", [("dsb2018", "boundary"), ("dsb2018", "binary"), ("tissue", "auto")])
def test_two_epochs_lower_the_loss_and_log_to_tensorboard(sample, tmp_path, kind, head):
    data = decode_dataset(sample / kind, progress=False)
    train_set, val_set = data.split(0.34, seed=0)
    config = tiny_config(tmp_path, kind=kind, head=head)
    run = train(config, train_set, val_set, verbose=0)
    losses = run.history["loss"]
    assert len(losses) == 2 and losses[1] < losses[0]
    for name in ("best.keras", "last.keras", "config.json", "history.csv", "training.gif"):
        assert (run.run_dir / name).is_file(), name
    assert "learning_rate" in read_history(run.run_dir / "history.csv")
    if kind == "dsb2018":  # post-processing thresholds chosen on the validation images
        tuned = json.loads((run.run_dir / "thresholds.json").read_text())
        assert tuned["images"] == len(val_set) and tuned["validation_map"] >= tuned["untuned_map"]
        assert run.config.seed_threshold == tuned["seed_threshold"]
    saved = Config.load(run.run_dir / "config.json")
    assert run.model.input_shape[-1] == Preprocessor.for_config(saved).channels == (1 if kind == "dsb2018" else 3)
    assert saved.image_size == 64 and saved.extra["precision_used"] in ("float32", "mixed_bfloat16")

    train_events, val_events = _event_tags(run.run_dir / "train"), _event_tags(run.run_dir / "validation")
    for events in (train_events, val_events):
        tags = events.Tags()["tensors"]
        assert {"epoch_loss", "epoch_accuracy", "epoch_mean_iou", "epoch_dice"} <= set(tags)
        assert len(events.Tensors("epoch_loss")) == 2
    assert train_events.Tags()["graph"]
    images = _event_tags(run.run_dir / "images")
    assert images.Tags()["tensors"] == ["validation/input_prediction_truth"]
    assert [event.step for event in images.Tensors("validation/input_prediction_truth")] == [0, 1]


class _StopAfterFirstEpoch(keras.callbacks.Callback):
    def on_epoch_end(self, epoch, logs=None):
        raise KeyboardInterrupt("simulated interruption")


class _RecordEpochs(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs = []

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)


def test_an_interrupted_run_resumes_at_the_next_epoch(sample, tmp_path):
    data = decode_dataset(sample / "dsb2018", progress=False)
    train_set, val_set = data.split(0.34, seed=0)
    config = tiny_config(tmp_path, steps_per_epoch=2)
    with pytest.raises(KeyboardInterrupt):
        train(config, train_set, val_set, verbose=0, extra_callbacks=[_StopAfterFirstEpoch()])
    assert (tmp_path / "logs/tiny/backup").is_dir()
    recorder = _RecordEpochs()
    run = train(config, train_set, val_set, verbose=0, extra_callbacks=[recorder])
    assert recorder.epochs == [1]
    assert read_history(run.run_dir / "history.csv")["epoch"] == [0.0, 1.0]
    assert not (run.run_dir / "backup").exists()  # removed once the run completed


def test_crops_keep_image_and_target_aligned():
    rng = np.random.default_rng(0)
    targets = [rng.integers(0, 3, (40, 52), dtype=np.uint8), rng.integers(0, 3, (20, 30), dtype=np.uint8)]
    images = [np.repeat((t * 100)[..., None], 3, axis=2).astype(np.uint8) for t in targets]
    sampler = CropSampler(images, targets, [(0.0, 200.0)] * 2, size=32, seed=1)
    for _ in range(20):
        for index in (0, 1):  # the second image is smaller than a crop: mirror-padded
            x, y = sampler.crop(index)
            assert x.shape == (32, 32, 3) and y.shape == (32, 32, 1)
            assert np.allclose(x[..., 0] * 2, y[..., 0])


def test_zoomed_crops_rescale_objects_and_stay_aligned():
    target = np.kron(np.arange(48).reshape(6, 8) % 3, np.ones((10, 10), np.uint8)).astype(np.uint8)  # 10 px blocks
    image = np.repeat((target * 100)[..., None], 3, axis=2).astype(np.uint8)
    sampler = CropSampler([image], [target], [(0.0, 200.0)], size=32, seed=2, zoom=0.5)
    block_sizes = set()
    for _ in range(30):
        x, y = sampler.crop(0)
        assert x.shape == (32, 32, 3) and y.shape == (32, 32, 1) and y.dtype == np.uint8
        assert np.mean(np.abs(x[..., 0] * 2 - y[..., 0]) < 0.5) > 0.8  # interpolated edges aside, aligned
        runs = np.flatnonzero(np.diff(y[:, :, 0], axis=1).any(axis=0))
        block_sizes.update(np.diff(runs).tolist())
    assert min(block_sizes) < 9 and max(block_sizes) > 11  # objects shrunk and grown


def test_train_dataset_is_deterministic_and_not_autotuned():
    # Autotuning is off: its optimisation thread made each fit() wait up to a minute at its end.
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    targets = [rng.integers(0, 3, (40, 48), dtype=np.uint8) for _ in range(3)]
    config = Config(image_size=32, batch_size=2)
    first, second = (make_train_dataset(images, targets, [(0.0, 255.0)] * 3, config, 2) for _ in range(2))
    assert first.options().autotune.enabled is False
    for (x1, y1), (x2, y2) in zip(first.take(3), second.take(3)):
        assert x1.shape == (2, 32, 32, 3) and y1.shape == (2, 32, 32, 1)
        assert np.array_equal(x1.numpy(), x2.numpy()) and np.array_equal(y1.numpy(), y2.numpy())


def _scene(background: int, objects: int) -> np.ndarray:
    image = np.full((40, 50, 3), background, np.uint8)
    image[10:20, 10:20] = objects
    return image


def test_gray_model_input_shows_bright_objects_on_dark():
    fluorescence, brightfield = _scene(10, 200), _scene(220, 60)
    brightfield[..., 2] = 250  # a stained (coloured) image
    for image in (fluorescence, brightfield):
        gray = model_input(image, "gray")
        assert gray.shape == (40, 50, 1) and gray.dtype == np.uint8
        assert gray[15, 15, 0] > gray[0, 0, 0] + 100  # the object is the bright part
    assert model_input(fluorescence, "gray")[15, 15, 0] == 200  # not inverted: the channel mean
    assert model_input(brightfield, "gray")[15, 15, 0] == 255 - round((60 + 60 + 250) / 3)
    assert np.array_equal(model_input(brightfield, "rgb"), brightfield)
    assert model_input(brightfield[..., 0], "rgb").shape == (40, 50, 3)


def test_color_mode_auto_is_gray_for_nuclei_and_rgb_for_tissue():
    assert Preprocessor.for_config(Config(kind="dsb2018")).channels == 1
    assert Preprocessor.for_config(Config(kind="tissue")).channels == 3
    assert Preprocessor.for_config(Config(kind="tissue", color_mode="gray")).channels == 1
    with pytest.raises(ValueError, match="color_mode"):
        Preprocessor.for_config(Config(color_mode="hsv"))


def test_normalize_uses_the_whole_image_range():
    image = np.arange(1000, dtype=np.float64).reshape(10, 100) % 256
    out = normalize(image.astype(np.uint8))
    assert out.dtype == np.float32 and -0.05 < out.min() < 0.01 and 0.99 < out.max() < 1.05


def test_mirrored_strategy_trains_on_two_logical_cpus(sample, tmp_path):
    script = textwrap.dedent(f"""
        import json, tensorflow as tf
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
        from unet.config import Config
        from unet.data import decode_dataset
        from unet.training import train
        data = decode_dataset({str(sample / 'dsb2018')!r}, progress=False)
        tr, va = data.split(0.34, seed=0)
        config = Config(image_size=32, batch_size=2, epochs=1, steps_per_epoch=2, base_filters=2, depth=2,
                        strategy="mirrored", precision="float32", logs_dir={str(tmp_path)!r}, run_name="mirrored")
        run = train(config, tr, va, verbose=0)
        print(json.dumps({{"replicas": run.config.extra["replicas"], "loss": run.history["loss"]}}))
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert report["replicas"] == 2 and np.isfinite(report["loss"][0])


def test_a_time_budget_stops_training_cleanly_and_keeps_the_best_model(sample, tmp_path):
    data = decode_dataset(sample / "dsb2018", progress=False)
    train_set, val_set = data.split(0.34, seed=0)
    config = tiny_config(tmp_path, epochs=50, steps_per_epoch=4, max_minutes=0.0001)  # spent after one batch
    run = train(config, train_set, val_set, verbose=0)
    assert read_history(run.run_dir / "history.csv")["epoch"] == [0.0]  # the epoch in progress ends, validated
    assert (run.run_dir / "best.keras").is_file() and not (run.run_dir / "backup").exists()
    assert json.loads((run.run_dir / "summary.json").read_text())["stopped_by_time_budget"] is True
