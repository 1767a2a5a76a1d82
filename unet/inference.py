"""Prediction of one image: the run's preprocessing, the tiler (with test-time augmentation),
the scale its nuclei are seen at (``nucleus_diameter``, see ``scale``), and the task's step from
probabilities to labels."""

from __future__ import annotations

import numpy as np

from .preprocess import Preprocessor, normalize
from .tasks import task_for
from .tiling import model_predictor, model_stride, predict_tiled, with_tta


def predictor(model, tta: bool = False):
    """The model as a batch predictor for the tiler; with ``tta`` the mean over 8 flips/rotations."""
    predict_fn = model_predictor(model)
    return with_tta(predict_fn) if tta else predict_fn


ESTIMATE_PASSES = 2  # nucleus size estimates: at native resolution, then at the first estimate's scale


def predict_probabilities(model, config, image: np.ndarray, progress: bool = False) -> np.ndarray:
    """Class probabilities (H, W, C) of an image, at its native size. With ``nucleus_diameter``
    the model sees the image at the scale where its nuclei are that wide (:func:`nucleus_scale`)."""
    if config.nucleus_diameter:
        return probabilities_at_scale(model, config, image, nucleus_scale(model, config, image), progress)
    return native_probabilities(model, config, image, progress)


def nucleus_scale(model, config, image: np.ndarray) -> float:
    """The factor that brings the image's nuclei to ``config.nucleus_diameter`` pixels across,
    from the median of the model's own nuclei (without TTA, fixed default thresholds, so that
    tuning them does not move it): first at native resolution, then at that first estimate."""
    from .nuclei import nuclei_from_probabilities
    from .scale import median_diameter, scale_factor

    quick, factor = config.replace(tta=False), 1.0
    for _ in range(ESTIMATE_PASSES):
        labels = nuclei_from_probabilities(probabilities_at_scale(model, quick, image, factor))
        factor, previous = scale_factor(median_diameter(labels), config.nucleus_diameter), factor
        if factor == previous:  # the same scale again would repeat the same pass
            break
    return factor


def probabilities_at_scale(model, config, image: np.ndarray, factor: float, progress: bool = False) -> np.ndarray:
    """The model's probabilities for ``image`` resized by ``factor``, resized back to its size."""
    from skimage.transform import resize

    from .scale import resize_by

    if factor == 1.0:
        return native_probabilities(model, config, image, progress)
    probabilities = native_probabilities(model, config, resize_by(image, factor), progress)
    return resize(probabilities, np.shape(image)[:2], order=1, anti_aliasing=factor > 1).astype(np.float32)


def native_probabilities(model, config, image: np.ndarray, progress: bool = False) -> np.ndarray:
    """Class probabilities (H, W, C) of the image as given, through the tiler; a model trained in
    'resize' mode sees the image resized to its training size, and its probabilities are resized
    back."""
    preprocessor, predict_fn, stride = Preprocessor.for_config(config), predictor(model, config.tta), model_stride(model)
    if config.input_mode != "resize":
        return predict_tiled(predict_fn, preprocessor(image), config.tile_size, config.tile_overlap,
                             config.batch_size, stride, progress)
    from skimage.transform import resize

    channels = preprocessor.channels_of(image)
    small = resize(np.asarray(channels), (config.image_size, config.image_size), preserve_range=True,
                   anti_aliasing=True)
    probabilities = predict_tiled(predict_fn, normalize(small), config.image_size, 0.0, 1, stride)
    return resize(probabilities, channels.shape[:2], order=1).astype(np.float32)


def predict_image(model, config, image: np.ndarray, progress: bool = False):
    """(probabilities, labels): nuclei instance map (uint16) or tissue class map (uint8)."""
    probabilities = predict_probabilities(model, config, image, progress)
    return probabilities, task_for(config.kind).labels(probabilities, config)
