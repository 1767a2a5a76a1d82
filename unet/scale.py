"""Nucleus-size normalisation (``nucleus_diameter``), as Cellpose rescales cells to one diameter.

With ``nucleus_diameter`` = D the model sees every image resized so that its median nucleus is
D pixels across. Training resizes each image by its true nuclei (:func:`rescale_dataset`);
prediction estimates the factor from the model's own nuclei, first at native resolution and
then once more at the estimated scale (``inference.predict_probabilities``), and the
probabilities are resized back, so thresholds, labels and scores stay in native pixels.
"""

from __future__ import annotations

import numpy as np

FACTOR_RANGE = (0.25, 4.0)  # the most an image is shrunk or enlarged


def median_diameter(instances: np.ndarray) -> float:
    """The diameter of the disc with the median nucleus area of an instance map (nan: no nuclei)."""
    areas = np.bincount(np.asarray(instances).ravel())[1:]
    areas = areas[areas > 0]
    return float(2.0 * np.sqrt(np.median(areas) / np.pi)) if areas.size else float("nan")


def scale_factor(diameter: float, target: float) -> float:
    """The resize factor that brings nuclei ``diameter`` pixels across to ``target`` (within
    FACTOR_RANGE); 1 when the diameter is unknown."""
    if not np.isfinite(diameter) or diameter <= 0:
        return 1.0
    return float(np.clip(target / diameter, *FACTOR_RANGE))


def resize_by(array: np.ndarray, factor: float, labels: bool = False) -> np.ndarray:
    """``array`` (H, W[, C]) resized by ``factor`` in its own dtype: images bilinearly (smoothed
    when shrunk, integers rounded), label maps by nearest neighbour."""
    from skimage.transform import resize

    array = np.asarray(array)
    shape = (max(1, round(array.shape[0] * factor)), max(1, round(array.shape[1] * factor)))
    if shape == array.shape[:2]:
        return array
    if labels:
        return resize(array, shape, order=0, preserve_range=True, anti_aliasing=False).astype(array.dtype)
    resized = resize(array, shape, order=1, preserve_range=True, anti_aliasing=factor < 1)
    return resized.round().astype(array.dtype) if array.dtype.kind in "ui" else resized.astype(array.dtype)


def rescale_dataset(dataset, target: float):
    """A nuclei :class:`~unet.dataset.Dataset` with each image, mask and instance map resized so
    that its median true nucleus is ``target`` pixels across."""
    from .dataset import Dataset

    factors = [scale_factor(median_diameter(instances), target) for instances in dataset.instances]
    return Dataset(dataset.kind, list(dataset.ids), [resize_by(im, f) for im, f in zip(dataset.images, factors)],
                   [resize_by(m, f, labels=True) for m, f in zip(dataset.masks, factors)],
                   [resize_by(t, f, labels=True) for t, f in zip(dataset.instances, factors)],
                   dataset.class_names, dataset.palette, dataset.source, dataset.report)
