"""What the model sees: one :class:`Preprocessor` shared by training crops and prediction.

An image becomes the model's input in two steps: its channels (RGB, one gray channel turned
bright-on-dark, or a stained image's hematoxylin density; see :func:`model_input`), then a
per-image percentile normalisation (1st to 99.8th percentile -> 0..1, as CSBDeep's
``normalize``). Training crops are normalised with their whole image's range, so a crop looks
as it will in a whole-image prediction.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .dataset import is_colour

COLOR_MODES = ("rgb", "gray", "hematoxylin")


def intensity_range(image: np.ndarray) -> tuple[float, float]:
    """The 1st and 99.8th percentile of a whole image (all channels), as in CSBDeep."""
    return _percentiles(np.asarray(image)[::2, ::2] if image.size > 2**20 else np.asarray(image))


def normalize(image: np.ndarray, value_range: tuple[float, float] | None = None) -> np.ndarray:
    """float32 image scaled so that the whole image's percentile range maps to 0..1."""
    low, high = intensity_range(image) if value_range is None else value_range
    return (np.asarray(image, np.float32) - low) * np.float32(1.0 / (high - low))


def model_input(image: np.ndarray, color_mode: str) -> np.ndarray:
    """The image as the model sees it (before normalization), H x W x channels.

    'gray': the mean of the colour channels, inverted when the image's background (its
    median) is brighter than the middle of its intensity range, so that brightfield and
    stained (H&E) images show bright objects on a dark background like fluorescence.
    'hematoxylin': gray images as 'gray'; a colour image (:func:`is_colour`, decided on every
    second row and column) becomes its hematoxylin optical density (float32), the stain of
    nuclei, separated from eosin by colour deconvolution (scikit-image's ``hed_from_rgb``).
    """
    image = np.asarray(image)
    if color_mode == "rgb":
        return _rgb(image)
    if color_mode == "hematoxylin" and is_colour(image[::2, ::2]):
        return _hematoxylin(image)
    gray = _gray(image)
    low, high = intensity_range(gray)
    return _gray_channel(gray, image.dtype, bool(np.median(gray[::2, ::2]) > (low + high) / 2))


def _rgb(image: np.ndarray) -> np.ndarray:
    return image if image.ndim == 3 else np.repeat(image[..., None], 3, axis=2)


def _gray(image: np.ndarray) -> np.ndarray:
    return image.mean(axis=2) if image.ndim == 3 else image.astype(np.float32)


def _hematoxylin(image: np.ndarray) -> np.ndarray:
    """The hematoxylin optical density of an RGB(A) image x 255, H x W x 1 float32 (0: no stain):
    on the scale of 8-bit images, so that the normalisation's smallest range (one level) means
    the same for both.

    Per pixel as scikit-image's ``rgb2hed`` (Ruifrok & Johnston's deconvolution matrix), written
    as a per-pixel sum so that a block of an image gives exactly the whole image's values.
    Intensities below one 8-bit level count as one level: a few black pixels would otherwise
    reach several times the density of a dark nucleus (1.8 against the 0.3-0.5 of the 99.8th
    percentile on DSB2018's colour test images) and set the image's normalisation range."""
    from skimage.color import hed_from_rgb

    scale = float(np.iinfo(image.dtype).max) if image.dtype.kind in "ui" else 1.0
    density = np.log(np.maximum(image[..., :3].astype(np.float32) / np.float32(scale), np.float32(1 / 255)))
    weights = (hed_from_rgb[:, 0] / np.log(1e-6)).astype(np.float32)
    stain = density[..., 0] * weights[0] + density[..., 1] * weights[1] + density[..., 2] * weights[2]
    return (np.maximum(stain, np.float32(0)) * np.float32(255))[..., None]


def _gray_channel(gray: np.ndarray, dtype, invert: bool) -> np.ndarray:
    """The gray channel in the image's dtype, inverted (max - value) when asked."""
    if invert:
        gray = float(np.iinfo(dtype).max if dtype.kind in "ui" else 1.0) - gray
    dtype = dtype if dtype.kind in "ui" else np.float32
    return np.clip(np.round(gray) if dtype != np.float32 else gray, 0, None).astype(dtype)[..., None]


@dataclass(frozen=True)
class Statistics:
    """What normalisation needs to know of a whole image: whether its gray channel is inverted
    (or, in 'hematoxylin' mode, replaced by the hematoxylin density), and the intensity range
    that maps to 0..1. Applied block by block, it gives every block exactly what the whole
    image would give (see :meth:`Preprocessor.statistics`)."""

    invert: bool
    value_range: tuple[float, float]
    hematoxylin: bool = False


MAX_STATISTICS_PIXELS = 2**24  # a larger image's statistics come from a strided sample of about this size


@dataclass(frozen=True)
class Preprocessor:
    """Colour mode and normalisation of one model; ``Preprocessor.for_config(config)``."""

    color_mode: str

    def __post_init__(self):
        if self.color_mode not in COLOR_MODES:
            raise ValueError(f"color_mode must be one of {COLOR_MODES}, not {self.color_mode!r}")

    @classmethod
    def for_config(cls, config) -> "Preprocessor":
        """The config's colour mode; 'auto' is the task's own (gray for nuclei, RGB for tissue)."""
        from .tasks import task_for

        mode = config.color_mode
        return cls(task_for(config.kind).color_mode if mode == "auto" else mode)

    @property
    def channels(self) -> int:
        return 3 if self.color_mode == "rgb" else 1

    def channels_of(self, image: np.ndarray) -> np.ndarray:
        """The image's model channels, not yet normalised (same dtype)."""
        return model_input(image, self.color_mode)

    def prepare(self, image: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
        """(model channels, the whole image's intensity range): what training crops are cut from."""
        channels = self.channels_of(image)
        return channels, intensity_range(channels)

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """The normalised float32 model input of a whole image."""
        return normalize(self.channels_of(image))

    def statistics(self, image) -> Statistics:
        """The whole image's statistics, from an array or a lazy (Dask) array of any size.

        Up to ``MAX_STATISTICS_PIXELS`` pixels they are exactly those of ``__call__`` (its
        percentiles use every second row and column of images over 2**20 values); a larger
        image is sampled with a coarser stride."""
        height, width = image.shape[:2]
        values = height * width * self.channels
        stride = 1 if values <= 2**20 else max(2, int(np.ceil(np.sqrt(height * width / MAX_STATISTICS_PIXELS))))
        sample = np.asarray(image[::stride, ::stride])
        if self.color_mode == "rgb":
            return Statistics(False, _percentiles(_rgb(sample)))
        decision_sample = sample if stride > 1 else sample[::2, ::2]  # as model_input decides
        if self.color_mode == "hematoxylin" and is_colour(decision_sample):
            return Statistics(False, _percentiles(_hematoxylin(sample)), hematoxylin=True)
        gray = _gray(sample)
        low, high = _percentiles(gray)
        median_sample = gray if stride > 1 else gray[::2, ::2]
        invert = bool(np.median(median_sample) > (low + high) / 2)
        return Statistics(invert, _percentiles(_gray_channel(gray, sample.dtype, invert)))

    def apply(self, block: np.ndarray, statistics: Statistics) -> np.ndarray:
        """The normalised float32 model input of a block of an image with these statistics."""
        block = np.asarray(block)
        if self.color_mode == "rgb":
            channels = _rgb(block)
        elif statistics.hematoxylin:
            channels = _hematoxylin(block)
        else:
            channels = _gray_channel(_gray(block), block.dtype, statistics.invert)
        return normalize(channels, statistics.value_range)


def _percentiles(sample: np.ndarray) -> tuple[float, float]:
    """``intensity_range`` of an already sampled image."""
    low, high = np.percentile(sample, (1.0, 99.8))
    return float(low), float(max(high, low + 1.0))
