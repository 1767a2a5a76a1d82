"""Nucleus-size normalisation: diameters, the training rescale, and the model's own estimate."""

import keras
import numpy as np
import pytest

from conftest import disk
from unet.config import Config, ConfigError
from unet.dataset import Dataset
from unet.inference import nucleus_scale, predict_image
from unet.scale import FACTOR_RANGE, median_diameter, resize_by, rescale_dataset, scale_factor

CENTRES = [(16, 16), (16, 48), (16, 80), (48, 16), (48, 48), (48, 80), (80, 16), (80, 48), (80, 80)]


def _disks(radius: int, shape=(96, 96)) -> np.ndarray:
    instances = np.zeros(shape, np.uint16)
    for label, centre in enumerate(CENTRES, start=1):
        instances[disk(shape, centre, radius)] = label
    return instances


def _image(instances: np.ndarray) -> np.ndarray:
    return np.repeat(np.where(instances > 0, 200, 20).astype(np.uint8)[..., None], 3, axis=-1)


def test_the_median_diameter_is_that_of_the_median_disc_and_unknown_without_nuclei():
    assert median_diameter(_disks(5)) == pytest.approx(10.0, rel=0.05)
    assert np.isnan(median_diameter(np.zeros((8, 8), np.uint16)))
    assert scale_factor(10.0, 20.0) == 2.0 and scale_factor(float("nan"), 20.0) == 1.0
    assert scale_factor(1.0, 1000.0) == FACTOR_RANGE[1] and scale_factor(1000.0, 1.0) == FACTOR_RANGE[0]


def test_resizing_keeps_dtype_and_labels_and_rescaling_brings_nuclei_to_the_target():
    instances = _disks(5)
    image = _image(instances)
    bigger = resize_by(instances, 2.0, labels=True)
    assert bigger.shape == (192, 192) and bigger.dtype == np.uint16 and set(np.unique(bigger)) == set(np.unique(instances))
    assert resize_by(image, 0.5).dtype == np.uint8 and resize_by(image, 1.0) is image
    data = Dataset("dsb2018", ["a", "b"], [image, _image(_disks(10, (192, 192)))],
                   [(instances > 0).astype(np.uint8), (_disks(10, (192, 192)) > 0).astype(np.uint8)],
                   [instances, _disks(10, (192, 192))])
    rescaled = rescale_dataset(data, 15.0)
    for image, mask, nuclei in zip(rescaled.images, rescaled.masks, rescaled.instances):
        assert median_diameter(nuclei) == pytest.approx(15.0, rel=0.08)
        assert image.shape[:2] == mask.shape == nuclei.shape and np.array_equal(mask, nuclei > 0)
    small, large = (image.shape[0] for image in rescaled.images)  # 96 px of 10 px nuclei, 192 px of 20 px
    assert abs(small - large) <= 2 and 135 <= small <= 150


def _bright_is_nucleus_model():
    """A 'model' whose interior probability is the normalised intensity above 0.5 (no training)."""
    inputs = keras.Input((None, None, 1))
    logits = keras.layers.Conv2D(3, 1, kernel_initializer=keras.initializers.Constant([[[[-40.0, 40.0, 0.0]]]]),
                                 bias_initializer=keras.initializers.Constant([20.0, -20.0, -100.0]))(inputs)
    return keras.Model(inputs, keras.layers.Softmax()(logits))


def test_prediction_estimates_the_scale_from_the_models_own_nuclei_and_answers_at_native_size():
    model, instances = _bright_is_nucleus_model(), _disks(5)
    config = Config(nucleus_diameter=20.0, tta=False)
    assert nucleus_scale(model, config, _image(instances)) == pytest.approx(2.0, rel=0.08)
    assert nucleus_scale(model, config.replace(nucleus_diameter=10.0), _image(instances)) == pytest.approx(1.0, rel=0.08)
    probabilities, labels = predict_image(model, config, _image(instances))
    assert probabilities.shape == (96, 96, 3) and labels.shape == (96, 96) and labels.max() == len(CENTRES)
    assert np.allclose(probabilities.sum(axis=-1), 1.0, atol=1e-3)


def test_the_setting_is_for_nuclei_crops_and_refused_where_images_are_not_rescaled():
    from unet.tasks import task_for

    tissue = Dataset("tissue", ["a"], [_image(_disks(5))], [(_disks(5) > 0).astype(np.uint8)])
    with pytest.raises(ConfigError, match="nucleus_diameter"):  # checked before a run folder is made
        task_for("tissue").head(Config(kind="tissue", nucleus_diameter=20.0), tissue)
    with pytest.raises(ConfigError, match="nucleus_diameter"):
        Config(input_mode="resize", nucleus_diameter=20.0)
    from unet.blockwise import BlockPredictor

    with pytest.raises(ConfigError, match="block-wise prediction runs at native scale"):
        BlockPredictor(_bright_is_nucleus_model(), Config(nucleus_diameter=20.0), _image(_disks(5)))


def test_the_benchmark_reports_how_close_the_estimated_scale_comes_to_the_true_one():
    from conftest import benchmark_module

    probe = benchmark_module("inference_scale")
    instances = [_disks(5), _disks(8, (128, 128))]
    data = Dataset("dsb2018", ["a", "b"], [_image(t) for t in instances], [(t > 0).astype(np.uint8) for t in instances],
                   instances)
    report = probe.estimated_scales(_bright_is_nucleus_model(), Config(nucleus_diameter=20.0, tta=False), data)
    assert report["images"] == 2 and report["within_10_percent"] == 1.0 and report["median_abs_log2_error"] < 0.1
    assert report["map_at_estimated_scales"] == pytest.approx(report["map_at_true_scales"], abs=0.05)
    assert report["map_at_true_scales"] > 0.8  # bright disks on a dark ground: the 'model' finds them all
