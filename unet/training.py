"""Training: the config resolved once, the model fitted on random crops, the run folder filled.

``train(config, train_set, val_set)`` checks the settings and the data, creates (or resumes)
the run folder, saves the resolved ``config.json``, fits with the callbacks that own the run's
files (``callbacks``), and, for nuclei, tunes the post-processing thresholds on the validation
images (``tuning``). ``refit(run, train_set, val_set)`` then trains the final model of that
recipe on all the images, with what the run chose on validation. The crops come from
``pipeline``, precision and devices from ``device``.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np

from .config import Config
from .data import Dataset
from .device import environment, keep_freed_memory, make_strategy, precision_policy, resolve_precision, resolve_xla
from .io import DataError, write_text_atomic
from .preprocess import Preprocessor
from .run import HISTORY_FILE, MODEL_FILE, SUMMARY_FILE, Run, read_history, run_folder, run_lock
from .tasks import task_for


def resolved_config(config: Config, train_set: Dataset, replicas: int = 1, precision: str | None = None) -> Config:
    """``config`` with every 'auto' decided for this data and machine (head, classes, colour mode,
    XLA), and the class names, palette, precision and environment in ``extra``: what
    ``config.json`` records and prediction reads back."""
    task = task_for(config.kind)
    head, channels, class_names = task.head(config, train_set)
    extra = {**config.extra, "precision_used": precision or resolve_precision(config.precision),
             "class_names": class_names, "palette": task.palette(train_set, channels).tolist(),
             "replicas": replicas, "environment": environment()}
    return config.replace(head=head, num_classes=channels, xla=resolve_xla(config.xla),
                          color_mode=Preprocessor.for_config(config).color_mode, extra=extra)


def train(config: Config, train_set: Dataset, val_set: Dataset, verbose: int = 2, extra_callbacks=()) -> Run:
    """Train a U-Net; everything goes to ``logs/<run>/``. A run folder with a backup resumes.
    ``verbose``: 0 silent, else one line per epoch.

    The settings and the data are checked before the run folder is created.
    """
    if not len(train_set) or not len(val_set):
        raise DataError(f"{train_set.source or val_set.source}: {len(train_set)} training and {len(val_set)} "
                        "validation images; training needs at least one of each")
    task_for(config.kind).head(config, train_set)
    run_dir = run_folder(config)
    precision = resolve_precision(config.precision)
    with run_lock(run_dir), precision_policy(precision):
        run = _fit(config.replace(run_name=run_dir.name), train_set, val_set, precision, verbose, extra_callbacks)
        if task_for(run.config.kind).tunes_thresholds and run.config.tune_thresholds:
            tune_thresholds(run, val_set, verbose)
    return run


def refit(run: Run, train_set: Dataset, val_set: Dataset, verbose: int = 2) -> Run:
    """The final model of a finished run, trained on its training and validation images together.

    Everything is what the run chose on validation: its settings, its steps per epoch, as many
    epochs as its best checkpoint had (``best.json``), the learning rate it used in each of them
    (``history.csv``; with ``lr_schedule='cosine'``, each epoch's last rate), and its thresholds
    (``thresholds.json``, copied). Nothing is chosen here, since no image is left to choose on:
    the last epoch is the model, and no time budget cuts it short (the epochs were counted on the
    run). The folder is the run's name with ``-all`` (``logs/<run>-all/``); an interrupted refit
    resumes, as training does.
    """
    from .tuning import THRESHOLDS_FILE, apply_thresholds

    steps, rates = validated_schedule(run)
    config = run.config.replace(run_name=f"{run.run_dir.name}-all", epochs=len(rates), steps_per_epoch=steps,
                                max_minutes=0.0, logs_dir=str(run.run_dir.parent),
                                extra={**run.config.extra, "refit_of": run.run_dir.name})
    run_dir = run_folder(config)
    precision = resolve_precision(config.precision)
    with run_lock(run_dir), precision_policy(precision):
        thresholds = run.run_dir / THRESHOLDS_FILE
        if thresholds.is_file():
            write_text_atomic(run_dir / THRESHOLDS_FILE, json.dumps(
                {**json.loads(thresholds.read_text()), "refit_of": run.run_dir.name}, indent=2) + "\n")
        final = _fit(config, train_set.joined(val_set), val_set, precision, verbose, (), rates)
    final.config = apply_thresholds(final.config, run_dir)
    return final


def validated_schedule(run: Run) -> tuple[int, list[float]]:
    """(steps per epoch, the learning rate of each epoch up to the best checkpoint) of a finished
    run; for a run from before summary.json recorded its steps, its config's ``steps_per_epoch``."""
    run_dir = run.run_dir
    if run.config.extra.get("refit_of"):
        raise DataError(f"{run_dir}: already the refit of {run.config.extra['refit_of']}; refit that run instead")
    try:
        summary = json.loads((run_dir / SUMMARY_FILE).read_text())
        best_epoch = int(json.loads((run_dir / "best.json").read_text())["epoch"])
        rates = read_history(run_dir / HISTORY_FILE)["learning_rate"][:best_epoch]
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise DataError(f"{run_dir}: not a finished run to refit ({type(error).__name__}: {error}); it needs "
                        "summary.json, best.json and a history.csv with learning_rate") from None
    steps = summary.get("steps_per_epoch") or run.config.steps_per_epoch
    if not steps:
        raise DataError(f"{run_dir / SUMMARY_FILE}: records no steps per epoch (a run from before 2026-12-03); "
                        "give the run's steps_per_epoch (its log's 'steps/epoch') to refit it")
    if len(rates) < best_epoch:
        raise DataError(f"{run_dir / HISTORY_FILE}: {len(rates)} epochs, fewer than the {best_epoch} of best.json")
    return int(steps), rates


def tune_thresholds(run: Run, val_set: Dataset, verbose: int = 2) -> None:
    """Choose the run's post-processing thresholds on its validation images (``thresholds.json``)."""
    from .tuning import TUNED, apply_thresholds, tune_run

    tuned = tune_run(run, val_set)
    run.config = apply_thresholds(run.config, run.run_dir)
    if verbose:
        print(f"thresholds chosen on {tuned['images']} validation images: "
              + ", ".join(f"{key} {tuned[key]:g}" for key in TUNED)
              + f" (mAP {tuned['untuned_map']:.3f} -> {tuned['validation_map']:.3f}; thresholds.json)")


def _compiled_model(config: Config, strategy):
    """The U-Net of ``config`` (resolved), compiled with its loss and metrics under ``strategy``."""
    import keras

    from .losses import SegmentationLoss, make_metrics
    from .model import build_unet

    channels, class_names = config.num_classes, config.extra["class_names"]
    with strategy.scope():
        model = build_unet(Preprocessor.for_config(config).channels, channels, config.base_filters, config.depth,
                           config.dropout, sqrt_channels=config.sqrt_channels)
        averaging = {"use_ema": True, "ema_momentum": config.ema_momentum} if config.ema_momentum else {}
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate, **averaging),
                      loss=SegmentationLoss(channels, config.dice_weight, config.class_weights, config.ignore_label),
                      metrics=make_metrics(channels, class_names, config.ignore_label),
                      jit_compile=config.xla == "on")
    return model


def _fit(config: Config, train_set: Dataset, val_set: Dataset, precision: str, verbose: int, extra_callbacks,
         rates: list[float] | None = None) -> Run:
    """Fit and fill the run folder. ``rates`` (a refit): the learning rate of each epoch, and no
    validation (``val_set`` then only gives the snapshot tiles)."""
    import keras

    from .pipeline import (default_steps, make_train_dataset, make_validation_dataset, prepare_arrays,
                           validation_tiles)

    run_dir = Path(config.logs_dir) / config.run_name
    keras.utils.set_random_seed(config.seed)
    keep_freed_memory()
    strategy = make_strategy(config.strategy)
    replicas = strategy.num_replicas_in_sync
    config = resolved_config(config, train_set, replicas, precision)
    config.save(run_dir / "config.json")
    task, global_batch = task_for(config.kind), config.batch_size * replicas
    if config.nucleus_diameter:  # the model learns every image at one nucleus size (see scale)
        from .scale import rescale_dataset

        train_set, val_set = (rescale_dataset(dataset, config.nucleus_diameter) for dataset in (train_set, val_set))

    train_images, train_targets, train_ranges = prepare_arrays(train_set.images, task.targets(train_set, config), config)
    val_images, val_targets, val_ranges = prepare_arrays(val_set.images, task.targets(val_set, config), config)
    data = make_train_dataset(train_images, train_targets, train_ranges, config, global_batch, train_set.images)
    val_x, val_y = validation_tiles(val_images, val_targets, val_ranges, config.image_size)
    steps = default_steps(train_images, config, global_batch)
    model = _compiled_model(config, strategy)
    callbacks = make_callbacks(run_dir, config, (val_x[:4], val_y[:4]), np.array(config.extra["palette"], np.uint8),
                               extra_callbacks, epoch_lines=bool(verbose), rates=rates)
    if verbose:
        print(f"run folder: {run_dir}  (precision {precision}, {replicas} replica(s), "
              f"{steps} steps/epoch of {global_batch} crops {config.image_size}x{config.image_size})")
        print(f"watch it: tensorboard --logdir {run_dir.parent} --host 127.0.0.1")
    start = time.perf_counter()
    fit = model.fit(data, epochs=config.epochs, steps_per_epoch=steps,
                    validation_data=None if rates is not None else make_validation_dataset((val_x, val_y), global_batch),
                    callbacks=callbacks, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    spent = any(getattr(callback, "spent", False) for callback in callbacks)
    return _finish(run_dir, config, model, fit.history, seconds, spent, verbose, steps)


def _finish(run_dir: Path, config: Config, model, history: dict, seconds: float, spent: bool, verbose: int,
            steps: int) -> Run:
    """The run as its folder holds it: the best model, the whole history (across restarts),
    ``training.gif`` and ``summary.json`` (which marks the run finished)."""
    import keras

    write_training_gif(run_dir)
    best_path, history_path = run_dir / MODEL_FILE, run_dir / HISTORY_FILE
    best = keras.saving.load_model(best_path, safe_mode=True, compile=False) if best_path.exists() else model
    history = read_history(history_path) if history_path.exists() else history
    write_text_atomic(run_dir / SUMMARY_FILE, json.dumps({"seconds": seconds, "epochs": len(history.get("loss", [])),
                                                          "steps_per_epoch": steps, "stopped_by_time_budget": spent}))
    if verbose and spent:
        print(f"time budget of {config.max_minutes:g} min spent: training stopped, best model kept")
    return Run(run_dir, best, config, history, seconds)


def make_callbacks(run_dir: Path, config: Config, tiles, palette, extra_callbacks=(), epoch_lines=True,
                   rates: list[float] | None = None) -> list:
    """The run's callbacks, in the order Keras calls them at each epoch's end: first those that
    decide (early stopping, learning rate, whose value joins the logs), then those that write
    (history and checkpoints), the resume backup last, so that a process killed at any moment
    leaves a folder whose backup never runs ahead of its files (see ``callbacks``). ``rates``
    (a refit): each epoch's learning rate, replayed; no validation to stop on or choose by."""
    import keras

    from .callbacks import (AveragedValidation, Checkpoints, CosineDecay, EpochLine, HistoryLog, PredictionSnapshots,
                            ResumeBackup, TimeBudget)

    if rates is not None:
        steering = [keras.callbacks.LearningRateScheduler(lambda epoch, _: rates[epoch])]
    else:
        schedule = (CosineDecay(config.learning_rate, config.max_minutes * 60) if config.lr_schedule == "cosine" else
                    keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5,
                                                      patience=config.reduce_lr_patience, min_lr=1e-5))
        steering = [keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience),
                    schedule]
    return [
        AveragedValidation(),  # with ema_momentum, the validation below scores the averaged weights
        *([TimeBudget(config.max_minutes * 60)] if config.max_minutes else []),
        *steering,
        keras.callbacks.TerminateOnNaN(),
        *([EpochLine()] if epoch_lines else []),
        HistoryLog(run_dir / "history.csv"),
        Checkpoints(run_dir, monitor=None if rates is not None else "val_loss"),
        keras.callbacks.TensorBoard(str(run_dir), write_graph=True, update_freq="epoch"),
        PredictionSnapshots(run_dir, tiles, palette),
        ResumeBackup(run_dir / "backup"),
        *extra_callbacks,
    ]


def write_training_gif(run_dir: Path) -> Path | None:
    """``training.gif``: the prediction on one fixed validation tile at each epoch."""
    from .visuals import write_gif

    frames = sorted((run_dir / "frames").glob("epoch_*.png"))
    if not frames:
        return None
    from PIL import Image

    return write_gif(run_dir / "training.gif", [np.asarray(Image.open(f).convert("RGB")) for f in frames])
