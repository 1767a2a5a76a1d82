"""Prediction of one image at native resolution: the run's preprocessing, the tiler (with
test-time augmentation), and the task's step from probabilities to labels."""

from __future__ import annotations

import numpy as np

from .preprocess import Preprocessor, normalize
from .tasks import task_for
from .tiling import model_predictor, model_stride, predict_tiled, with_tta


def predictor(model, tta: bool = False):
    """The model as a batch predictor for the tiler; with ``tta`` the mean over 8 flips/rotations."""
    predict_fn = model_predictor(model)
    return with_tta(predict_fn) if tta else predict_fn


def predict_probabilities(model, config, image: np.ndarray, progress: bool = False) -> np.ndarray:
    """Class probabilities (H, W, C) of an image at native resolution, through the tiler; a model
    trained in 'resize' mode sees the image resized to its training size, and its probabilities
    are resized back."""
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
