"""Training: targets, the tf.data pipeline, precision and device setup, callbacks and ``train``."""

from __future__ import annotations

import contextlib
import json
import math
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .config import Config, ConfigError
from .data import Dataset
from .io import DataError, write_text_atomic

# ----------------------------------------------------------------------------- targets

NUCLEI_PALETTE = np.array([[0, 0, 0], [255, 220, 0], [255, 0, 200]], np.uint8)  # background, interior/nucleus, boundary


def nuclei_classes(head: str) -> list[str]:
    return ["background", "nucleus"] if head == "binary" else ["background", "interior", "boundary"]


def resolve_head(config: Config, dataset: Dataset) -> tuple[str, int, list[str]]:
    """(head, number of output channels, class names) for a config and its data.

    Nuclei default to the 3-class head (background, interior, boundary); tissue to softmax
    over the dataset's classes.
    """
    head = config.head
    if dataset.kind == "dsb2018":
        head = "boundary" if head == "auto" else head
        if head not in ("binary", "boundary"):
            raise ConfigError("head", f"nuclei take 'binary' or 'boundary', not {head!r}")
        channels, classes = 1 if head == "binary" else 3, nuclei_classes(head)
    else:
        classes = list(dataset.class_names)
        if config.num_classes and config.num_classes != len(classes):
            raise ConfigError("num_classes", f"{config.num_classes}, but the data has {len(classes)} classes")
        head, channels = "multiclass", len(classes)
    if config.class_weights is not None and (channels == 1 or len(config.class_weights) != channels):
        raise ConfigError("class_weights", f"{len(config.class_weights)} weight(s) given; the model's classes are "
                          f"{', '.join(classes)}" + (" (a binary head takes no class weights)" if channels == 1 else ""))
    return head, channels, classes


def boundary_target(instances: np.ndarray, contact_width: int = 0) -> np.ndarray:
    """3-class target from an instance map: 0 background, 1 interior, 2 boundary.

    The boundary is each nucleus's own outermost pixel ring (inner boundary), so touching
    nuclei are separated by two boundary pixels. With ``contact_width`` w > 0, a nucleus's
    pixels within w pixels (chessboard distance) of another nucleus are boundary too, which
    widens the gap between the interiors of touching nuclei (the seeds that split them).
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    instances = np.asarray(instances)
    inside = instances > 0
    target = inside.astype(np.uint8)
    boundary = find_boundaries(instances, mode="inner") & inside
    if contact_width > 0 and inside.any():
        window = 2 * contact_width + 1
        labels = instances.astype(np.int64)
        highest = ndi.maximum_filter(labels, size=window, mode="nearest")
        lowest = ndi.minimum_filter(np.where(inside, labels, labels.max() + 1), size=window, mode="nearest")
        boundary |= inside & ((highest != labels) | (lowest != labels))
    target[boundary] = 2
    return target


def make_targets(dataset: Dataset, config: Config) -> list[np.ndarray]:
    """The training targets for ``config.head`` (already resolved from 'auto')."""
    if config.head == "boundary":
        return [boundary_target(inst, config.contact_width) for inst in dataset.instances]
    return [np.asarray(mask) for mask in dataset.masks]


# ----------------------------------------------------------------------------- normalization


def resolve_color_mode(config: Config) -> str:
    """'auto': one gray channel for nuclei (stains vary, shape is what matters), RGB for tissue."""
    mode = config.color_mode
    if mode == "auto":
        mode = "gray" if config.kind == "dsb2018" else "rgb"
    if mode not in ("rgb", "gray"):
        raise ValueError(f"color_mode must be 'auto', 'rgb' or 'gray', not {config.color_mode!r}")
    return mode


def input_channels(config: Config) -> int:
    return 1 if resolve_color_mode(config) == "gray" else 3


def model_input(image: np.ndarray, color_mode: str) -> np.ndarray:
    """The image as the model sees it (before normalization), H x W x channels.

    'gray': the mean of the colour channels, inverted when the image's background (its
    median) is brighter than the middle of its intensity range, so that brightfield and
    stained (H&E) images show bright objects on a dark background like fluorescence.
    """
    image = np.asarray(image)
    if color_mode == "rgb":
        return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)
    gray = image.mean(axis=2) if image.ndim == 3 else image.astype(np.float32)
    low, high = intensity_range(gray)
    if np.median(gray[::2, ::2]) > (low + high) / 2:
        gray = float(np.iinfo(image.dtype).max if image.dtype.kind in "ui" else 1.0) - gray
    dtype = image.dtype if image.dtype.kind in "ui" else np.float32
    return np.clip(np.round(gray) if dtype != np.float32 else gray, 0, None).astype(dtype)[..., None]


def intensity_range(image: np.ndarray) -> tuple[float, float]:
    """The 1st and 99.8th percentile of a whole image (all channels), as in CSBDeep."""
    sample = np.asarray(image)[::2, ::2] if image.size > 2**20 else np.asarray(image)
    low, high = np.percentile(sample, (1.0, 99.8))
    return float(low), float(max(high, low + 1.0))


def normalize(image: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """float32 image scaled so that the whole image's percentile range maps to 0..1."""
    low, high = intensity_range(image) if value_range is None else value_range
    return (np.asarray(image, np.float32) - low) * np.float32(1.0 / (high - low))


# ----------------------------------------------------------------------------- pipeline


def _pad_to(array: np.ndarray, size: int) -> np.ndarray:
    """Mirror-pad height and width up to ``size`` (for images smaller than a crop)."""
    array = np.asarray(array)
    while array.shape[0] < size or array.shape[1] < size:
        pad_h = min(max(0, size - array.shape[0]), array.shape[0])
        pad_w = min(max(0, size - array.shape[1]), array.shape[1])
        pads = [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)] + [(0, 0)] * (array.ndim - 2)
        array = np.pad(array, pads, mode="symmetric")
    return array


def prepare_arrays(images, targets, config: Config):
    """Images as the model sees them (``model_input``), their intensity ranges, and in
    'resize' mode the resized images and targets."""
    color_mode = resolve_color_mode(config)
    images = [model_input(image, color_mode) for image in images]
    ranges = [intensity_range(image) for image in images]
    if config.input_mode == "resize":
        from skimage.transform import resize

        size = (config.image_size, config.image_size)
        images = [resize(np.asarray(im), size, preserve_range=True, anti_aliasing=True).round().astype(np.uint8)
                  for im in images]
        targets = [resize(np.asarray(t), size, order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8)
                   for t in targets]
    elif config.input_mode != "crop":
        raise ValueError(f"input_mode must be 'crop' or 'resize', not {config.input_mode!r}")
    return list(images), list(targets), ranges


class CropSampler:
    """Endless random crops at native resolution, with flips and 90-degree rotations.

    Images are drawn with probability proportional to their area, so every pixel is equally
    likely to be seen; each crop is normalized with its whole image's intensity range.
    """

    def __init__(self, images, targets, ranges, size: int, seed: int, augment: bool = True, zoom: float = 0.0):
        self.images, self.targets, self.ranges = images, targets, ranges
        self.size, self.augment, self.zoom = size, augment, zoom
        areas = np.array([im.shape[0] * im.shape[1] for im in images], np.float64)
        self.weights = areas / areas.sum()
        self.rng = np.random.default_rng(seed)

    def crop(self, index: int):
        image, target = self.images[index], self.targets[index]
        window = self.size
        if self.augment and self.zoom > 0:  # a window of size/zoom resized to size: objects scaled by zoom
            zoom = float(np.exp(self.rng.uniform(-np.log1p(self.zoom), np.log1p(self.zoom))))
            window = max(8, int(round(self.size / zoom)))
        if image.shape[0] < window or image.shape[1] < window:
            image, target = _pad_to(np.asarray(image), window), _pad_to(np.asarray(target), window)
        y = int(self.rng.integers(0, image.shape[0] - window + 1))
        x = int(self.rng.integers(0, image.shape[1] - window + 1))
        image = normalize(image[y:y + window, x:x + window], self.ranges[index])
        target = np.asarray(target[y:y + window, x:x + window])
        if window != self.size:
            from skimage.transform import resize

            image = resize(image, (self.size, self.size), order=1, anti_aliasing=False).astype(np.float32)
            target = resize(target, (self.size, self.size), order=0, preserve_range=True,
                            anti_aliasing=False).astype(target.dtype)
        if self.augment:
            k = int(self.rng.integers(4))
            image, target = np.rot90(image, k), np.rot90(target, k)
            if self.rng.random() < 0.5:
                image, target = image[:, ::-1], target[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(target)[..., None]

    def __iter__(self):
        while True:
            yield self.crop(int(self.rng.choice(len(self.images), p=self.weights)))


def photometric_augment(images, seed):
    """Random brightness, contrast and, for colour images, per-channel stain gains.

    ``seed`` is a stateless-RNG seed pair (the pipeline passes (config seed, batch number)).
    """
    import tensorflow as tf

    n = tf.shape(images)[0]
    seeds = tf.random.experimental.stateless_split(seed, 3)
    contrast = tf.random.stateless_uniform([n, 1, 1, 1], seeds[0], 0.75, 1.25)
    brightness = tf.random.stateless_uniform([n, 1, 1, 1], seeds[1], -0.1, 0.1)
    gains = tf.random.stateless_uniform([n, 1, 1, tf.shape(images)[-1]], seeds[2], 0.9, 1.1)
    spread = tf.reduce_max(tf.abs(images - tf.reduce_mean(images, axis=-1, keepdims=True)), axis=[1, 2, 3],
                           keepdims=True)
    gains = tf.where(spread > 0.02, gains, tf.ones_like(gains))  # gray images stay gray
    mean = tf.reduce_mean(images, axis=[1, 2, 3], keepdims=True)
    return ((images - mean) * contrast + mean + brightness) * gains


def make_train_dataset(images, targets, ranges, config: Config, global_batch: int):
    """Repeated tf.data pipeline: crops -> batch -> photometric augmentation -> prefetch."""
    import tensorflow as tf

    size, channels = config.image_size, np.asarray(images[0]).shape[-1]
    sampler = CropSampler(images, targets, ranges, size, config.seed, config.augment, config.zoom_augment)
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(sampler),
        output_signature=(tf.TensorSpec((size, size, channels), tf.float32), tf.TensorSpec((size, size, 1), tf.uint8)))
    dataset = dataset.batch(global_batch, drop_remainder=True)
    if config.augment:
        dataset = dataset.enumerate().map(
            lambda step, batch: (photometric_augment(batch[0], tf.stack([tf.constant(config.seed, tf.int64), step])),
                                 batch[1]),
            num_parallel_calls=2)
    return without_autotune(dataset.prefetch(2))


def without_autotune(dataset):
    """``dataset`` with tf.data autotuning off and no auto-sharding.

    The autotuner's optimisation thread sleeps in doubling periods (up to a minute) and an
    iterator's teardown waits for it: measured here, 4-19 s lost at the end of each ``fit``.
    The crops are cheap, so fixed parallelism and a 2-batch prefetch keep the model fed.
    """
    import tensorflow as tf

    options = tf.data.Options()
    options.autotune.enabled = False
    options.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.OFF
    return dataset.with_options(options)


def validation_tiles(images, targets, ranges, size: int, max_tiles: int = 64):
    """A fixed set of non-overlapping tiles covering the validation images (arrays)."""
    xs, ys = [], []
    for image, target, value_range in zip(images, targets, ranges):
        image, target = _pad_to(np.asarray(image), size), _pad_to(np.asarray(target), size)
        for y in range(0, image.shape[0] - size + 1, size):
            for x in range(0, image.shape[1] - size + 1, size):
                xs.append(normalize(image[y:y + size, x:x + size], value_range))
                ys.append(target[y:y + size, x:x + size, None])
    if len(xs) > max_tiles:
        keep = np.linspace(0, len(xs) - 1, max_tiles).round().astype(int)
        xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
    return np.stack(xs), np.stack(ys)


def default_steps(images, config: Config, global_batch: int) -> int:
    """One epoch = as many crops as it takes to cover the training pixels once (at least 4 steps)."""
    if config.steps_per_epoch:
        return config.steps_per_epoch
    pixels = sum(im.shape[0] * im.shape[1] for im in images)
    return max(4, math.ceil(pixels / config.image_size**2 / global_batch))


# ----------------------------------------------------------------------------- devices and precision


def cpu_supports_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return any(flag in flags.split() for flag in ("amx_bf16", "avx512_bf16"))


def resolve_precision(policy: str = "auto") -> str:
    """'auto': mixed_float16 on a GPU, mixed_bfloat16 on a CPU with bf16 (AVX512-BF16/AMX), else float32."""
    import tensorflow as tf

    if policy != "auto":
        return policy
    if tf.config.list_physical_devices("GPU"):
        return "mixed_float16"
    return "mixed_bfloat16" if cpu_supports_bf16() else "float32"


def resolve_xla(setting: str = "auto") -> bool:
    import tensorflow as tf

    if setting == "auto":
        return bool(tf.config.list_physical_devices("GPU"))  # XLA is 6-9x slower on this CPU
    return setting == "on"


def make_strategy(setting: str = "auto"):
    """MirroredStrategy over all GPUs when there are several (or when asked), else the default."""
    import tensorflow as tf

    gpus = tf.config.list_logical_devices("GPU")
    if setting == "mirrored" or (setting == "auto" and len(gpus) > 1):
        devices = [d.name for d in gpus] or [d.name for d in tf.config.list_logical_devices("CPU")]
        return tf.distribute.MirroredStrategy(devices)
    return tf.distribute.get_strategy()


def environment() -> dict:
    import keras
    import tensorflow as tf

    return {"python": platform.python_version(), "tensorflow": tf.__version__, "keras": keras.__version__,
            "gpus": [d.name for d in tf.config.list_physical_devices("GPU")], "cpu_bf16": cpu_supports_bf16(),
            "cores": os.cpu_count()}


# ----------------------------------------------------------------------------- runs


@dataclass
class Run:
    """What ``train`` produced: the run folder, the model (best weights) and the history."""

    run_dir: Path
    model: object
    history: dict
    config: Config
    seconds: float

    @property
    def tensorboard_command(self) -> str:
        return f"tensorboard --logdir {self.run_dir.parent} --host 127.0.0.1"


def run_folder(config: Config) -> Path:
    """The run's folder under ``logs_dir``, created now.

    Without ``run_name``: a new ``<kind>-<date>-<time>`` folder (``-2``, ``-3``, ... when the name
    is taken), created exclusively, so two runs started in the same second never share one.
    With ``run_name``: that folder, new or holding an interrupted run to resume; a folder whose
    run has finished is refused rather than overwritten.
    """
    logs = Path(config.logs_dir)
    logs.mkdir(parents=True, exist_ok=True)
    if config.run_name:
        folder = logs / config.run_name
        if (folder / "summary.json").is_file():
            raise DataError(f"{folder}: holds a finished run; choose another run name (or delete the folder)")
        folder.mkdir(exist_ok=True)
        return folder
    stem = f"{config.kind}-{time.strftime('%Y%m%d-%H%M%S')}"
    for number in range(1, 1000):
        folder = logs / (stem if number == 1 else f"{stem}-{number}")
        try:
            folder.mkdir()
            return folder
        except FileExistsError:
            continue
    raise DataError(f"{logs}: no free run folder name for {stem}")


@contextlib.contextmanager
def run_lock(folder: Path):
    """Hold ``folder/.lock`` for the block; a second process training into the same folder is refused."""
    try:
        import fcntl
    except ImportError:  # Windows: no advisory locks
        yield
        return
    with open(folder / ".lock", "w") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise DataError(f"{folder}: another training process is using this run folder") from None
        yield


@contextlib.contextmanager
def precision_policy(name: str):
    """Set Keras's global dtype policy inside the block only (models keep the policy they were built with)."""
    import keras

    previous = keras.mixed_precision.global_policy()
    keras.mixed_precision.set_global_policy(name)
    try:
        yield
    finally:
        keras.mixed_precision.set_global_policy(previous)


def train(config: Config, train_set: Dataset, val_set: Dataset, verbose: int = 2, extra_callbacks=()) -> Run:
    """Train a U-Net; everything goes to ``logs/<run>/``. A run folder with a backup resumes.
    ``verbose``: 0 silent, else one line per epoch.

    The settings and the data are checked before the run folder is created.
    """
    if not len(train_set) or not len(val_set):
        raise DataError(f"{train_set.source or val_set.source}: {len(train_set)} training and {len(val_set)} "
                        "validation images; training needs at least one of each")
    resolve_head(config, train_set)
    run_dir = run_folder(config)
    precision = resolve_precision(config.precision)
    with run_lock(run_dir), precision_policy(precision):
        run = _fit(config.replace(run_name=run_dir.name), train_set, val_set, precision, verbose, extra_callbacks)
        if run.config.kind == "dsb2018" and run.config.tune_thresholds:
            tune_thresholds(run, val_set, verbose)
    return run


def tune_thresholds(run: "Run", val_set: Dataset, verbose: int = 2) -> None:
    """Choose the run's post-processing thresholds on its validation images (``thresholds.json``)."""
    from .tuning import TUNED, apply_thresholds, tune_run

    tuned = tune_run(run.run_dir, run.model, run.config, val_set)
    run.config = apply_thresholds(run.config, run.run_dir)
    if verbose:
        print(f"thresholds chosen on {tuned['images']} validation images: "
              + ", ".join(f"{key} {tuned[key]:g}" for key in TUNED)
              + f" (mAP {tuned['untuned_map']:.3f} -> {tuned['validation_map']:.3f}; thresholds.json)")


def _fit(config: Config, train_set: Dataset, val_set: Dataset, precision: str, verbose: int, extra_callbacks) -> Run:
    import keras
    import tensorflow as tf

    from .losses import SegmentationLoss, make_metrics
    from .model import build_unet

    head, channels, class_names = resolve_head(config, train_set)
    run_dir = Path(config.logs_dir) / config.run_name
    keras.utils.set_random_seed(config.seed)
    strategy = make_strategy(config.strategy)
    global_batch = config.batch_size * strategy.num_replicas_in_sync
    palette = train_set.palette if head == "multiclass" else NUCLEI_PALETTE[: max(channels, 2)]
    extra = {**config.extra, "precision_used": precision, "class_names": class_names,
             "palette": np.asarray(palette).tolist(), "replicas": strategy.num_replicas_in_sync,
             "environment": environment()}
    config = config.replace(head=head, num_classes=channels, extra=extra)
    config.save(run_dir / "config.json")

    train_images, train_targets, train_ranges = prepare_arrays(train_set.images, make_targets(train_set, config), config)
    val_images, val_targets, val_ranges = prepare_arrays(val_set.images, make_targets(val_set, config), config)
    data = make_train_dataset(train_images, train_targets, train_ranges, config, global_batch)
    val_x, val_y = validation_tiles(val_images, val_targets, val_ranges, config.image_size)
    validation = without_autotune(tf.data.Dataset.from_tensor_slices((val_x, val_y)).batch(global_batch).cache().prefetch(2))
    steps = default_steps(train_images, config, global_batch)

    with strategy.scope():
        model = build_unet(input_channels(config), channels, config.base_filters, config.depth, config.dropout)
        model.compile(optimizer=keras.optimizers.Adam(config.learning_rate),
                      loss=SegmentationLoss(channels, config.dice_weight, config.class_weights, config.ignore_label),
                      metrics=make_metrics(channels, class_names, config.ignore_label),
                      jit_compile=resolve_xla(config.xla))

    callbacks = make_callbacks(run_dir, config, (val_x[:4], val_y[:4]), np.array(palette, np.uint8),
                               extra_callbacks, epoch_lines=bool(verbose))
    if verbose:
        print(f"run folder: {run_dir}  (precision {precision}, {strategy.num_replicas_in_sync} replica(s), "
              f"{steps} steps/epoch of {global_batch} crops {config.image_size}x{config.image_size})")
        print(f"watch it: tensorboard --logdir {run_dir.parent} --host 127.0.0.1")
    start = time.perf_counter()
    fit = model.fit(data, epochs=config.epochs, steps_per_epoch=steps, validation_data=validation,
                    callbacks=callbacks, verbose=0, shuffle=False)
    seconds = time.perf_counter() - start
    write_training_gif(run_dir)
    best_path, history_path = run_dir / "best.keras", run_dir / "history.csv"
    best = keras.saving.load_model(best_path, safe_mode=True, compile=False) if best_path.exists() else model
    history = read_history(history_path) if history_path.exists() else fit.history
    spent = any(getattr(callback, "spent", False) for callback in callbacks)
    write_text_atomic(run_dir / "summary.json", json.dumps({"seconds": seconds, "epochs": len(history.get("loss", [])),
                                                            "stopped_by_time_budget": spent}))
    if verbose and spent:
        print(f"time budget of {config.max_minutes:g} min spent: training stopped, best model kept")
    return Run(run_dir, best, history, config, seconds)


def make_callbacks(run_dir: Path, config: Config, tiles, palette, extra_callbacks=(), epoch_lines=True) -> list:
    """The run's callbacks, in the order Keras calls them at each epoch's end: first those that
    decide (early stopping, learning rate, whose value joins the logs), then those that write
    (history and checkpoints), the resume backup last, so that a process killed at any moment
    leaves a folder whose backup never runs ahead of its files (see ``callbacks``)."""
    import keras

    from .callbacks import Checkpoints, EpochLine, HistoryLog, PredictionSnapshots, ResumeBackup, TimeBudget

    return [
        *([TimeBudget(config.max_minutes * 60)] if config.max_minutes else []),
        keras.callbacks.EarlyStopping(monitor="val_loss", patience=config.early_stopping_patience),
        keras.callbacks.ReduceLROnPlateau(monitor="val_loss", factor=0.5, patience=config.reduce_lr_patience,
                                          min_lr=1e-5),
        keras.callbacks.TerminateOnNaN(),
        *([EpochLine()] if epoch_lines else []),
        HistoryLog(run_dir / "history.csv"),
        Checkpoints(run_dir, monitor="val_loss"),
        keras.callbacks.TensorBoard(str(run_dir), write_graph=True, update_freq="epoch"),
        PredictionSnapshots(run_dir, tiles, palette),
        ResumeBackup(run_dir / "backup"),
        *extra_callbacks,
    ]


def read_history(path: str | Path) -> dict[str, list[float]]:
    """``history.csv`` as columns of floats (the 'epoch' column included)."""
    import csv

    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: [float(row[key]) for row in rows if row.get(key) not in (None, "")] for key in (rows[0] if rows else {})}


def write_training_gif(run_dir: Path) -> Path | None:
    """``training.gif``: the prediction on one fixed validation tile at each epoch."""
    from .visuals import write_gif

    frames = sorted((run_dir / "frames").glob("epoch_*.png"))
    if not frames:
        return None
    from PIL import Image

    return write_gif(run_dir / "training.gif", [np.asarray(Image.open(f).convert("RGB")) for f in frames])
