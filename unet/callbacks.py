"""Training callbacks that own the run folder's files: checkpoints, history, the resume backup
and the TensorBoard prediction snapshots.

Every file is written to a temporary name and renamed into place, so a process killed at any
moment leaves each file whole (the previous version or the new one). The order in which
``train`` lists them matters: history and checkpoints first, the resume backup last, so that a
backup never points past what the other files hold.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import time
from contextlib import contextmanager
from pathlib import Path

import keras
import numpy as np

from .io import atomic_path, save_png, write_csv, write_text_atomic


def _averaging_optimizer(model):
    """The model's optimizer if it keeps a moving average of the weights (``use_ema``), else None."""
    optimizer = getattr(model, "optimizer", None)
    optimizer = getattr(optimizer, "inner_optimizer", optimizer)  # under a loss-scale wrapper
    return optimizer if hasattr(optimizer, "_model_variables_moving_average") else None


def _swap_average(optimizer) -> None:
    for variable, average in zip(optimizer._trainable_variables, optimizer._model_variables_moving_average):
        own = keras.ops.convert_to_numpy(variable)
        variable.assign(average)
        average.assign(own)


@contextmanager
def averaged_weights(model):
    """Inside the block the model holds the moving average of its weights (Polyak averaging,
    ``ema_momentum``), after it its own weights again; a model without an average is untouched."""
    optimizer = _averaging_optimizer(model)
    if optimizer is None:
        yield
        return
    _swap_average(optimizer)
    try:
        yield
    finally:
        _swap_average(optimizer)


class AveragedValidation(keras.callbacks.Callback):
    """Validation scores the moving average of the weights, which checkpoints and snapshots also
    save and show (``averaged_weights``); training steps and the resume backup keep the model's
    own weights, so a resumed run continues exactly. Without an average it does nothing."""

    def __init__(self):
        super().__init__()
        self.optimizer = None

    def on_test_begin(self, logs=None):
        self.optimizer = _averaging_optimizer(self.model)
        if self.optimizer is not None:
            _swap_average(self.optimizer)

    def on_test_end(self, logs=None):
        if self.optimizer is not None:
            _swap_average(self.optimizer)
            self.optimizer = None


class Checkpoints(keras.callbacks.Callback):
    """``last.keras`` after every epoch; ``best.keras`` when the monitored value improves, or
    after every epoch with ``monitor=None`` (a refit, whose epochs were chosen beforehand); with
    ``ema_momentum``, both hold the moving average of the weights.

    The best value so far is kept in ``best.json`` beside the model, so a resumed run only
    replaces ``best.keras`` with a better model, never with the first epoch after the restart.
    """

    def __init__(self, run_dir: Path, monitor: str | None = "val_loss"):
        super().__init__()
        self.run_dir, self.monitor = Path(run_dir), monitor

    def on_train_begin(self, logs=None):
        record = self.run_dir / "best.json"
        self.best = json.loads(record.read_text())["value"] if record.is_file() and self.monitor else math.inf

    def on_epoch_end(self, epoch, logs=None):
        self._save(self.run_dir / "last.keras")
        value = (logs or {}).get(self.monitor) if self.monitor else None
        if self.monitor is None or (value is not None and value < self.best):
            self.best = math.inf if value is None else float(value)
            self._save(self.run_dir / "best.keras")
            record = {"epoch": epoch + 1, "monitor": self.monitor, "value": None if value is None else self.best}
            write_text_atomic(self.run_dir / "best.json", json.dumps(record) + "\n")

    def _save(self, path: Path) -> None:
        with atomic_path(path) as tmp, averaged_weights(self.model):
            self.model.save(tmp)


class HistoryLog(keras.callbacks.Callback):
    """``history.csv``: one row per epoch, rewritten atomically after each epoch.

    When a resumed run starts at epoch e, rows of epoch e and later (written by the killed
    process after its last backup) are dropped: each epoch appears exactly once.
    """

    def __init__(self, path: Path):
        super().__init__()
        self.path, self.rows = Path(path), None

    def on_epoch_begin(self, epoch, logs=None):
        if self.rows is None:
            self.rows = [row for row in self._read() if int(float(row["epoch"])) < epoch]

    def on_epoch_end(self, epoch, logs=None):
        row = {"epoch": epoch, **{key: float(value) for key, value in (logs or {}).items()}}
        self.rows.append(row)
        header = list(dict.fromkeys(key for r in self.rows for key in r))
        write_csv(self.path, self.rows, header)

    def _read(self) -> list[dict]:
        if not self.path.is_file():
            return []
        with open(self.path, newline="") as handle:
            return list(csv.DictReader(handle))


class ResumeBackup(keras.callbacks.Callback):
    """What an interrupted run resumes from: the weights and optimizer state after the last
    finished epoch (``backup/epoch-NNNN.weights.h5``) and ``backup/state.json`` naming them.

    The weights go to a new file first, then ``state.json`` is replaced: a kill at any moment
    leaves a state that names complete weights. The folder is removed when training ends.
    """

    def __init__(self, backup_dir: Path):
        super().__init__()
        self.backup_dir = Path(backup_dir)

    def on_train_begin(self, logs=None):
        state_path = self.backup_dir / "state.json"
        if not state_path.is_file():
            return
        state = json.loads(state_path.read_text())
        if self.model.optimizer is not None and not self.model.optimizer.built:
            self.model.optimizer.build(self.model.trainable_variables)
        self.model.load_weights(self.backup_dir / state["weights"])
        self.model._initial_epoch = state["epoch"]  # how Keras's own BackupAndRestore resumes fit()

    def on_epoch_end(self, epoch, logs=None):
        name = f"epoch-{epoch + 1:04d}.weights.h5"
        with atomic_path(self.backup_dir / name, suffix=".weights.h5") as tmp:
            self.model.save_weights(tmp)
        write_text_atomic(self.backup_dir / "state.json", json.dumps({"epoch": epoch + 1, "weights": name}) + "\n")
        for old in self.backup_dir.glob("epoch-*.weights.h5"):
            if old.name != name:
                old.unlink()

    def on_train_end(self, logs=None):
        shutil.rmtree(self.backup_dir, ignore_errors=True)


class TimeBudget(keras.callbacks.Callback):
    """Stop training once ``seconds`` of it have passed (checked after every batch). Keras then
    ends the epoch, validates and calls the checkpoints as usual, so the best model is kept."""

    def __init__(self, seconds: float):
        super().__init__()
        self.seconds, self.spent = seconds, False

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        if time.perf_counter() - self.start > self.seconds:
            self.model.stop_training = self.spent = True


class CosineDecay(keras.callbacks.Callback):
    """Learning rate ``peak * (1 + cos(pi * progress)) / 2``, set before every batch. Progress is
    the share of the ``epochs * steps`` batches done or, when larger, the share of the time
    budget spent (``seconds``, the clock of :class:`TimeBudget`): the rate reaches 0 at whichever
    end comes first. The rate joins each epoch's logs."""

    def __init__(self, peak: float, seconds: float = 0.0):
        super().__init__()
        self.peak, self.seconds = peak, seconds

    def on_train_begin(self, logs=None):
        self.start = time.perf_counter()
        self.epoch = 0

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch = epoch

    def progress(self, batch: int) -> float:
        steps = self.params.get("steps") or 1
        done = (self.epoch * steps + batch) / (self.params.get("epochs", 1) * steps)
        return max(done, (time.perf_counter() - self.start) / self.seconds if self.seconds else 0.0)

    def on_train_batch_begin(self, batch, logs=None):
        rate = self.peak * 0.5 * (1.0 + math.cos(math.pi * min(1.0, self.progress(batch))))
        self.model.optimizer.learning_rate.assign(rate)

    def on_epoch_end(self, epoch, logs=None):
        if logs is not None:
            logs["learning_rate"] = float(keras.ops.convert_to_numpy(self.model.optimizer.learning_rate))


class EpochLine(keras.callbacks.Callback):
    """One short line per epoch: loss, validation loss and mean IoU, and the epoch's seconds."""

    def on_epoch_begin(self, epoch, logs=None):
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        logs = logs or {}
        parts = [f"epoch {epoch + 1}/{self.params.get('epochs', '?')}"]
        parts += [f"{key} {logs[key]:.4f}" for key in ("loss", "val_loss", "val_mean_iou") if key in logs]
        print("  ".join(parts + [f"{time.perf_counter() - self.start:.0f} s"]), flush=True)


def _image_grid(inputs, predictions, truths, palette):
    from .visuals import colorize, to_display

    rows = [np.concatenate([to_display(x), colorize(p, palette), colorize(t, palette)], axis=1)
            for x, p, t in zip(inputs, predictions, truths)]
    return np.concatenate(rows, axis=0)


class PredictionSnapshots(keras.callbacks.Callback):
    """TensorBoard extras: the forward-pass op graph (Keras 3 no longer writes one) and, per
    epoch, an image of predictions on fixed validation tiles, also kept as a frame for
    ``training.gif`` (the first tile)."""

    def __init__(self, run_dir: Path, tiles: tuple[np.ndarray, np.ndarray], palette: np.ndarray):
        super().__init__()
        self.run_dir, self.tiles, self.palette = Path(run_dir), tiles, palette

    def on_train_begin(self, logs=None):
        import tensorflow as tf

        self.writer = tf.summary.create_file_writer(str(self.run_dir / "images"))
        x = self.tiles[0]
        graph = tf.function(lambda batch: self.model(batch, training=False)).get_concrete_function(
            tf.TensorSpec([None, x.shape[1], x.shape[2], x.shape[-1]], tf.float32)).graph
        with tf.summary.create_file_writer(str(self.run_dir / "train")).as_default():
            tf.summary.graph(graph)

    def on_epoch_end(self, epoch, logs=None):
        import tensorflow as tf

        from .tasks import class_map

        x, y = self.tiles
        with averaged_weights(self.model):
            predictions = class_map(np.asarray(self.model.predict_on_batch(x)))
        grid = _image_grid(x, predictions, y[..., 0], self.palette)
        with self.writer.as_default():
            tf.summary.image("validation/input_prediction_truth", grid[None], step=epoch)
        self.writer.flush()
        save_png(self.run_dir / "frames" / f"epoch_{epoch + 1:04d}.png", grid[: x.shape[1]])

    def on_train_end(self, logs=None):
        self.writer.close()
