"""The training input pipeline: random native-resolution crops (tf.data), photometric
augmentation, and the fixed validation tiles."""

from __future__ import annotations

import math

import numpy as np

from .preprocess import Preprocessor, normalize


def pad_to(array: np.ndarray, size: int) -> np.ndarray:
    """Mirror-pad height and width up to ``size`` (for images smaller than a crop)."""
    array = np.asarray(array)
    while array.shape[0] < size or array.shape[1] < size:
        pad_h = min(max(0, size - array.shape[0]), array.shape[0])
        pad_w = min(max(0, size - array.shape[1]), array.shape[1])
        pads = [(pad_h // 2, pad_h - pad_h // 2), (pad_w // 2, pad_w - pad_w // 2)] + [(0, 0)] * (array.ndim - 2)
        array = np.pad(array, pads, mode="symmetric")
    return array


def prepare_arrays(images, targets, config):
    """Images as the model sees them (the config's :class:`Preprocessor`, not yet normalised),
    their intensity ranges, and in 'resize' mode the resized images and targets."""
    preprocessor = Preprocessor.for_config(config)
    prepared = [preprocessor.prepare(image) for image in images]
    images, ranges = [image for image, _ in prepared], [value_range for _, value_range in prepared]
    if config.input_mode == "resize":
        from skimage.transform import resize

        size = (config.image_size, config.image_size)
        images = [_resized(np.asarray(im), size) for im in images]
        targets = [resize(np.asarray(t), size, order=0, preserve_range=True, anti_aliasing=False).astype(np.uint8)
                   for t in targets]
    return list(images), list(targets), ranges


def _resized(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """The image resized (anti-aliased) in its own dtype: integers rounded, floats kept."""
    from skimage.transform import resize

    resized = resize(image, size, preserve_range=True, anti_aliasing=True)
    return resized.round().astype(image.dtype) if image.dtype.kind in "ui" else resized.astype(np.float32)


SAMPLING_POWERS = {"area": 1.0, "sqrt_area": 0.5, "image": 0.0}


def sampling_weights(shapes, sampling: str = "area") -> np.ndarray:
    """The probability of cropping each image of these (height, width) shapes: area**power."""
    areas = np.array([height * width for height, width in shapes], np.float64)
    weights = areas ** SAMPLING_POWERS[sampling]
    return weights / weights.sum()


class CropSampler:
    """Endless random crops at native resolution, with flips and 90-degree rotations.

    Images are drawn with probability proportional to their area (``sampling='area'``: every
    pixel equally likely to be seen), to its square root ('sqrt_area'), or uniformly ('image':
    every image as often, as an image-averaged metric weighs them); each crop is normalized
    with its whole image's intensity range. With ``stain`` > 0 a colour image's crop is cut from
    the ``originals`` (the images before the ``preprocessor``), its stains jittered
    (:func:`stain_jitter`), then turned into the model's input with the whole image's statistics.
    """

    def __init__(self, images, targets, ranges, size: int, seed: int, augment: bool = True, zoom: float = 0.0,
                 sampling: str = "area", stain: float = 0.0, originals=None, preprocessor: Preprocessor | None = None):
        self.images, self.targets, self.ranges = images, targets, ranges
        self.size, self.augment, self.zoom = size, augment, zoom
        self.weights = sampling_weights([im.shape[:2] for im in images], sampling)
        self.rng = np.random.default_rng(seed)
        self.stain, self.preprocessor = stain, preprocessor
        if augment and stain > 0 and (originals is None or preprocessor is None):
            raise ValueError("stain jitter needs the original images and the preprocessor (originals=, preprocessor=)")
        self.stain_rng = np.random.default_rng([seed, 1])  # its own stream: the crops' windows do not change
        self.stain_sources = stain_sources(originals, preprocessor) if augment and stain > 0 else {}

    def _window(self) -> int:
        """The side cut from the image: ``size``, or size/zoom for a random zoom (resized to size)."""
        if not (self.augment and self.zoom > 0):
            return self.size
        zoom = float(np.exp(self.rng.uniform(-np.log1p(self.zoom), np.log1p(self.zoom))))
        return max(8, int(round(self.size / zoom)))

    def crop(self, index: int):
        source = self.stain_sources.get(index)  # (original colour image, its statistics) when stains are jittered
        image, target, window = self.images[index] if source is None else source[0], self.targets[index], self._window()
        if image.shape[0] < window or image.shape[1] < window:
            image, target = pad_to(np.asarray(image), window), pad_to(np.asarray(target), window)
        y = int(self.rng.integers(0, image.shape[0] - window + 1))
        x = int(self.rng.integers(0, image.shape[1] - window + 1))
        image = image[y:y + window, x:x + window]
        if source is None:
            image = normalize(image, self.ranges[index])
        else:
            image = self.preprocessor.apply(stain_jitter(np.asarray(image), self.stain, self.stain_rng), source[1])
        target = np.asarray(target[y:y + window, x:x + window])
        if window != self.size:
            image, target = resize_crop(image, target, self.size)
        if self.augment:
            k = int(self.rng.integers(4))
            image, target = np.rot90(image, k), np.rot90(target, k)
            if self.rng.random() < 0.5:
                image, target = image[:, ::-1], target[:, ::-1]
        return np.ascontiguousarray(image), np.ascontiguousarray(target)[..., None]

    def __iter__(self):
        while True:
            yield self.crop(int(self.rng.choice(len(self.images), p=self.weights)))


def resize_crop(image: np.ndarray, target: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """A float32 H x W x C crop resized to size x size with Pillow's bilinear filter (which
    smooths when it shrinks), channel by channel, and its target by nearest neighbour (each
    output pixel takes the target pixel under its centre): a sixth of scikit-image's time, whose
    resize was most of the crop sampler's."""
    from PIL import Image

    channels = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], np.float32))  # mode "F"
                           .resize((size, size), Image.BILINEAR)) for c in range(image.shape[-1])]
    rows = ((np.arange(size) + 0.5) * target.shape[0] / size).astype(int)
    cols = ((np.arange(size) + 0.5) * target.shape[1] / size).astype(int)
    return np.stack(channels, axis=-1), target[rows[:, None], cols]


def stain_sources(originals, preprocessor: Preprocessor) -> dict:
    """{index: (image, its whole-image Statistics)} of the colour images among ``originals``."""
    from .dataset import is_colour

    return {index: (image, preprocessor.statistics(image)) for index, image in enumerate(originals)
            if is_colour(np.asarray(image)[::2, ::2])}


def stain_jitter(image: np.ndarray, strength: float, rng) -> np.ndarray:
    """The RGB(A) image with each stain's amount scaled by a random factor in [1 - strength,
    1 + strength] (HED jitter, Tellez et al. 2018): each pixel's optical density is split into
    hematoxylin, eosin and DAB by colour deconvolution (Ruifrok & Johnston's matrix,
    scikit-image's ``hed_from_rgb``), scaled, and recombined. Same dtype; intensities below one
    8-bit level count as one level."""
    from skimage.color import hed_from_rgb, rgb_from_hed

    top = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else 1.0
    density = -np.log(np.maximum(image[..., :3].astype(np.float32) / np.float32(top), np.float32(1 / 255)))
    factors = rng.uniform(1.0 - strength, 1.0 + strength, 3)
    mixing = ((hed_from_rgb * factors[None, :]) @ rgb_from_hed).astype(np.float32)  # stains, scaled, back to density
    rgb = np.clip(np.exp(-(density @ mixing)) * np.float32(top), 0, top)
    rgb = np.round(rgb) if image.dtype.kind in "ui" else rgb
    return np.concatenate([rgb.astype(image.dtype), image[..., 3:]], axis=-1)


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


DEGRADATIONS = {"gamma": 0.3, "inverted_gamma": 0.1, "noise": 0.1, "low_resolution": 0.25}  # nnU-Net's odds


def degrade_augment(images, seed, odds: dict = DEGRADATIONS):
    """nnU-Net's intensity degradations, each sample on its own dice roll (``odds``): gamma (0.7-1.5,
    within the sample's own min-max range), inverted gamma (the same on the mirrored intensities),
    Gaussian noise (sigma up to 0.1 of the 0..1 range) and simulated low resolution (down to
    0.5-1x the size, nearest, and back, bilinear; one factor per batch).
    """
    import tensorflow as tf

    n, size = tf.shape(images)[0], tf.shape(images)[1:3]
    seeds = tf.random.experimental.stateless_split(seed, 10)

    def chosen(name, key):
        return tf.random.stateless_uniform([n, 1, 1, 1], seeds[key]) < odds[name]

    low = tf.reduce_min(images, axis=[1, 2, 3], keepdims=True)
    span = tf.maximum(tf.reduce_max(images, axis=[1, 2, 3], keepdims=True) - low, 1e-6)
    unit = (images - low) / span
    below_one = tf.random.stateless_uniform([n, 1, 1, 1], seeds[0], 0.7, 1.0)
    above_one = tf.random.stateless_uniform([n, 1, 1, 1], seeds[1], 1.0, 1.5)
    gamma = tf.where(tf.random.stateless_uniform([n, 1, 1, 1], seeds[2]) < 0.5, below_one, above_one)
    unit = tf.where(chosen("gamma", 3), unit**gamma, unit)
    unit = tf.where(chosen("inverted_gamma", 4), 1 - (1 - unit)**gamma, unit)
    images = unit * span + low
    sigma = tf.random.stateless_uniform([n, 1, 1, 1], seeds[5], 0.0, 0.1)
    noise = tf.random.stateless_normal(tf.shape(images), seeds[6]) * sigma
    images = tf.where(chosen("noise", 7), images + noise, images)
    factor = tf.random.stateless_uniform([], seeds[8], 0.5, 1.0)
    small = tf.cast(tf.round(tf.cast(size, tf.float32) * factor), tf.int32)
    blurred = tf.image.resize(tf.image.resize(images, small, "nearest"), size, "bilinear")
    return tf.where(chosen("low_resolution", 9), blurred, images)


def make_train_dataset(images, targets, ranges, config, global_batch: int, originals=None):
    """Repeated tf.data pipeline: crops -> batch -> photometric augmentation (and degradations) -> prefetch.
    ``originals``: the images before preprocessing, which stain augmentation needs."""
    import tensorflow as tf

    size, channels = config.image_size, np.asarray(images[0]).shape[-1]
    sampler = CropSampler(images, targets, ranges, size, config.seed, config.augment, config.zoom_augment,
                          config.crop_sampling, config.stain_augment, originals, Preprocessor.for_config(config))
    dataset = tf.data.Dataset.from_generator(
        lambda: iter(sampler),
        output_signature=(tf.TensorSpec((size, size, channels), tf.float32), tf.TensorSpec((size, size, 1), tf.uint8)))
    dataset = dataset.batch(global_batch, drop_remainder=True)
    if config.augment:
        dataset = dataset.enumerate().map(
            lambda step, batch: (augment_batch(batch[0], tf.stack([tf.constant(config.seed, tf.int64), step]),
                                               config.degrade_augment), batch[1]),
            num_parallel_calls=2)
    return without_autotune(dataset.prefetch(2))


def augment_batch(images, seed, degrade: bool):
    """The photometric augmentation of a training batch, then (``degrade``) nnU-Net's degradations."""
    import tensorflow as tf

    images = photometric_augment(images, seed)  # which draws from the first three keys of the seed's split
    return degrade_augment(images, tf.random.experimental.stateless_split(seed, 4)[3]) if degrade else images


def make_validation_dataset(tiles, global_batch: int):
    """The fixed validation tiles as a cached tf.data pipeline."""
    import tensorflow as tf

    return without_autotune(tf.data.Dataset.from_tensor_slices(tiles).batch(global_batch).cache().prefetch(2))


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
        image, target = pad_to(np.asarray(image), size), pad_to(np.asarray(target), size)
        for y in range(0, image.shape[0] - size + 1, size):
            for x in range(0, image.shape[1] - size + 1, size):
                xs.append(normalize(image[y:y + size, x:x + size], value_range))
                ys.append(target[y:y + size, x:x + size, None])
    if len(xs) > max_tiles:
        keep = np.linspace(0, len(xs) - 1, max_tiles).round().astype(int)
        xs, ys = [xs[i] for i in keep], [ys[i] for i in keep]
    return np.stack(xs), np.stack(ys)


def default_steps(images, config, global_batch: int) -> int:
    """One epoch = as many crops as it takes to cover the training pixels once (at least 4 steps)."""
    if config.steps_per_epoch:
        return config.steps_per_epoch
    pixels = sum(im.shape[0] * im.shape[1] for im in images)
    return max(4, math.ceil(pixels / config.image_size**2 / global_batch))
