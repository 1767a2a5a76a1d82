import json
import platform
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from unet.config import Config
from unet.data import decode_dataset
from unet.synthetic import write_sample
from unet.preprocess import Preprocessor
from unet.run import Run, read_history
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


@pytest.mark.parametrize("kind,head", [("dsb2018", "boundary"), ("dsb2018", "centre"), ("dsb2018", "binary"),
                                       ("tissue", "auto")])
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
    assert "auto" not in (saved.head, saved.color_mode, saved.xla)  # resolved once, recorded
    loaded = Run.load(run.run_dir)  # read back as it was saved: config, thresholds, classes, predictions
    assert loaded.config == run.config and loaded.history == run.history
    assert loaded.class_names == saved.extra["class_names"] and len(loaded.palette) == max(saved.num_classes, 2)
    image = np.asarray(val_set.images[0])
    assert np.array_equal(loaded.predict(image)[1], run.predict(image)[1])

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


class _RecordAveraging(keras.callbacks.Callback):
    """The weights validation saw, and at each epoch's end the model's own weights and their average."""

    def __init__(self):
        super().__init__()
        self.validated, self.own, self.average = [], [], []

    def on_test_begin(self, logs=None):
        self.validated.append([w.numpy() for w in self.model.trainable_weights])

    def on_epoch_end(self, epoch, logs=None):
        self.own.append([w.numpy() for w in self.model.trainable_weights])
        self.average.append([keras.ops.convert_to_numpy(a)
                             for a in self.model.optimizer._model_variables_moving_average])


def test_weight_averaging_is_what_validation_scores_and_checkpoints_save(sample, tmp_path):
    data = decode_dataset(sample / "dsb2018", progress=False)
    train_set, val_set = data.split(0.34, seed=0)
    recorder = _RecordAveraging()
    run = train(tiny_config(tmp_path, ema_momentum=0.9, tune_thresholds=False), train_set, val_set, verbose=0,
                extra_callbacks=[recorder])
    assert len(recorder.validated) == 2
    for validated, own, average in zip(recorder.validated, recorder.own, recorder.average):
        assert all(np.array_equal(v, a) for v, a in zip(validated, average))  # validation: the average
        assert not all(np.allclose(o, a) for o, a in zip(own, average))  # training: the own weights, restored
    saved = keras.saving.load_model(run.run_dir / "last.keras", compile=False)
    assert all(np.array_equal(s.numpy(), a) for s, a in zip(saved.trainable_weights, recorder.average[-1]))
    assert Config.load(run.run_dir / "config.json").ema_momentum == 0.9


def test_sqrt_channels_are_built_saved_and_predicted_with(sample, tmp_path):
    data = decode_dataset(sample / "dsb2018", progress=False)
    train_set, val_set = data.split(0.34, seed=0)
    run = train(tiny_config(tmp_path, epochs=1, sqrt_channels=True, tune_thresholds=False), train_set, val_set,
                verbose=0)
    loaded = Run.load(run.run_dir)
    assert loaded.config.sqrt_channels is True and "sqrt_stretch" in [layer.name for layer in loaded.model.layers]
    assert loaded.model.input_shape[-1] == 1  # the model takes the gray channel; the stretch is inside it
    image = np.asarray(val_set.images[0])
    probabilities, labels = loaded.predict(image)
    assert labels.shape == image.shape[:2] and np.array_equal(probabilities, run.predict(image)[0])


class _RecordFirstStep(_RecordAveraging):
    """The own weights and their average before the run's first training step."""

    def on_train_batch_begin(self, batch, logs=None):
        if not self.own:
            self.on_epoch_end(None)


def test_a_resumed_run_restores_the_own_weights_and_their_average(sample, tmp_path):
    data = decode_dataset(sample / "dsb2018", progress=False)
    train_set, val_set = data.split(0.34, seed=0)
    config = tiny_config(tmp_path, steps_per_epoch=2, ema_momentum=0.9, tune_thresholds=False)
    interrupted, resumed = _RecordAveraging(), _RecordFirstStep()
    with pytest.raises(KeyboardInterrupt):  # after the first epoch's backup
        train(config, train_set, val_set, verbose=0, extra_callbacks=[interrupted, _StopAfterFirstEpoch()])
    train(config, train_set, val_set, verbose=0, extra_callbacks=[resumed])
    for before, after in ((interrupted.own[0], resumed.own[0]), (interrupted.average[0], resumed.average[0])):
        assert all(np.array_equal(b, a) for b, a in zip(before, after))
    assert not all(np.allclose(o, a) for o, a in zip(resumed.own[0], resumed.average[0]))


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


def test_cosine_schedule_decays_the_learning_rate_over_the_epochs_or_the_budget(sample, tmp_path):
    from unet.callbacks import CosineDecay
    from unet.training import make_callbacks

    data = decode_dataset(sample / "dsb2018", progress=False)
    train_set, val_set = data.split(0.34, seed=0)
    config = tiny_config(tmp_path, epochs=4, steps_per_epoch=3, lr_schedule="cosine", learning_rate=1e-2)
    run = train(config, train_set, val_set, verbose=0)
    rates = read_history(run.run_dir / "history.csv")["learning_rate"]
    # logged: the rate set before each epoch's last batch, batch 3 * epoch + 2 of 12
    expected = [1e-2 * 0.5 * (1 + np.cos(np.pi * (3 * epoch + 2) / 12)) for epoch in range(4)]
    np.testing.assert_allclose(rates, expected, rtol=1e-5)
    budget = [c for c in make_callbacks(tmp_path, config.replace(max_minutes=2.0), [], None, epoch_lines=False)
              if isinstance(c, CosineDecay)]
    assert len(budget) == 1 and budget[0].seconds == 120.0
    schedule = budget[0]
    schedule.set_params({"epochs": 10, "steps": 10})
    schedule.on_train_begin()
    schedule.on_epoch_begin(9)
    assert schedule.progress(5) == pytest.approx(0.95)  # the epochs end first
    schedule.start -= 90.0
    schedule.on_epoch_begin(0)
    assert schedule.progress(0) == pytest.approx(0.75, abs=0.01)  # the budget ends first
    plateau = make_callbacks(tmp_path, config.replace(lr_schedule="plateau"), [], None, epoch_lines=False)
    assert not any(isinstance(c, CosineDecay) for c in plateau)
    assert any(isinstance(c, keras.callbacks.ReduceLROnPlateau) for c in plateau)


def test_nucleus_diameter_trains_on_rescaled_images_and_predicts_at_native_size(sample, tmp_path, monkeypatch):
    import unet.scale

    seen = []
    rescale = unet.scale.rescale_dataset

    def recorded(dataset, target):
        rescaled = rescale(dataset, target)
        seen.extend(unet.scale.median_diameter(instances) for instances in rescaled.instances)
        return rescaled

    monkeypatch.setattr(unet.scale, "rescale_dataset", recorded)
    data = decode_dataset(sample / "dsb2018", progress=False)
    train_set, val_set = data.split(0.34, seed=0)
    run = train(tiny_config(tmp_path, nucleus_diameter=14.0), train_set, val_set, verbose=0)
    assert len(seen) == len(data) and np.allclose(seen, 14.0, rtol=0.15)  # training and validation images
    assert (run.run_dir / "thresholds.json").is_file()
    loaded = Run.load(run.run_dir)
    image = np.asarray(val_set.images[0])
    assert loaded.config.nucleus_diameter == 14.0 and loaded.predict(image)[1].shape == image.shape[:2]


def test_a_refit_trains_on_every_image_with_the_runs_epochs_learning_rates_and_thresholds(sample, tmp_path,
                                                                                          monkeypatch, capsys):
    import unet.pipeline
    from unet.cli import main
    from unet.data import load_from_config, split_for_training

    config = tiny_config(tmp_path, epochs=3, steps_per_epoch=2, lr_schedule="cosine", data_dir=str(sample / "dsb2018"),
                         npy_dir=str(tmp_path / "npy"), val_fraction=0.34)
    train_set, val_set = split_for_training(load_from_config(config, progress=False), config)
    run = train(config, train_set, val_set, verbose=0)
    (run.run_dir / "best.json").write_text(json.dumps({"epoch": 2, "monitor": "val_loss", "value": 0.5}))
    saved = json.loads((run.run_dir / "config.json").read_text())  # a budget the refit would spend at once:
    (run.run_dir / "config.json").write_text(json.dumps({**saved, "max_minutes": 1e-6}))  # its epochs still run
    seen = []
    original = unet.pipeline.make_train_dataset
    monkeypatch.setattr(unet.pipeline, "make_train_dataset", lambda images, *rest: seen.append(len(images)) or
                        original(images, *rest))
    assert main(["refit", str(run.run_dir)]) == 0
    final = Run.load(run.run_dir.parent / "tiny-all")
    assert seen == [len(train_set) + len(val_set)]  # training and validation images, nothing held out
    history = read_history(final.run_dir / "history.csv")
    np.testing.assert_allclose(history["learning_rate"], run.history["learning_rate"][:2], rtol=1e-6)
    assert "val_loss" not in history  # nothing is chosen on images it trains on
    summary = json.loads((final.run_dir / "summary.json").read_text())
    assert summary["epochs"] == 2 and summary["steps_per_epoch"] == 2
    assert Config.load(final.run_dir / "config.json").extra["refit_of"] == "tiny"
    tuned = json.loads((final.run_dir / "thresholds.json").read_text())
    assert tuned["refit_of"] == "tiny"
    assert [getattr(final.config, key) for key in ("seed_threshold", "foreground_threshold", "min_nucleus_area")] == \
        [getattr(Run.load(run.run_dir).config, key) for key in ("seed_threshold", "foreground_threshold",
                                                                "min_nucleus_area")]
    last = keras.saving.load_model(final.run_dir / "last.keras", compile=False)
    assert all(np.array_equal(a, b) for a, b in zip(final.model.get_weights(), last.get_weights()))  # the last epoch
    assert main(["refit", str(run.run_dir)]) == 1  # a finished refit is not overwritten
    assert main(["refit", str(final.run_dir)]) == 1  # nor refitted again
    assert "already the refit of tiny" in capsys.readouterr().err


def test_a_refit_of_an_unfinished_run_names_what_is_missing(sample, tmp_path, capsys):
    from unet.cli import main

    data = decode_dataset(sample / "dsb2018", progress=False)
    train_set, val_set = data.split(0.34, seed=0)
    run = train(tiny_config(tmp_path, epochs=1, tune_thresholds=False), train_set, val_set, verbose=0)
    (run.run_dir / "summary.json").unlink()
    assert main(["refit", str(run.run_dir), "--data", str(sample / "dsb2018")]) == 1
    assert f"{run.run_dir}: not a finished run to refit" in capsys.readouterr().err
    assert not (run.run_dir.parent / "tiny-all").exists()


MAPPED_CHUNKS = textwrap.dedent("""
    import ctypes
    import numpy as np
    from unet.device import keep_freed_memory

    class MallocInfo(ctypes.Structure):
        _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                          "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = MallocInfo

    def new_mappings_for(megabytes):
        before = libc.mallinfo2().hblks
        buffer = np.empty(megabytes << 20, np.uint8)  # an activation's size at base 16, float32
        return libc.mallinfo2().hblks - before

    print(new_mappings_for(40), keep_freed_memory(), new_mappings_for(40))
""")


@pytest.mark.skipif(sys.platform != "linux" or platform.libc_ver()[0] != "glibc",
                    reason="glibc's malloc only")
def test_training_reuses_freed_memory_instead_of_mapping_each_large_buffer_anew():
    from conftest import REPOSITORY

    result = subprocess.run([sys.executable, "-c", MAPPED_CHUNKS], capture_output=True, text=True, timeout=60,
                            cwd=REPOSITORY)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.split() == ["1", "True", "0"]  # a new mapping before, none after
