"""What the model sees: colour mode, inversion, percentile normalisation."""

import numpy as np
import pytest

from unet.config import Config
from unet.preprocess import Preprocessor, model_input, normalize


def _scene(background: int, objects: int) -> np.ndarray:
    image = np.full((40, 50, 3), background, np.uint8)
    image[10:20, 10:20] = objects
    return image


def test_gray_model_input_shows_bright_objects_on_dark():
    fluorescence, brightfield = _scene(10, 200), _scene(220, 60)
    brightfield[..., 2] = 250  # a stained (coloured) image
    for image in (fluorescence, brightfield):
        gray = model_input(image, "gray")
        assert gray.shape == (40, 50, 1) and gray.dtype == np.uint8
        assert gray[15, 15, 0] > gray[0, 0, 0] + 100  # the object is the bright part
    assert model_input(fluorescence, "gray")[15, 15, 0] == 200  # not inverted: the channel mean
    assert model_input(brightfield, "gray")[15, 15, 0] == 255 - round((60 + 60 + 250) / 3)
    assert np.array_equal(model_input(brightfield, "rgb"), brightfield)
    assert model_input(brightfield[..., 0], "rgb").shape == (40, 50, 3)


def test_color_mode_auto_is_gray_for_nuclei_and_rgb_for_tissue():
    assert Preprocessor.for_config(Config(kind="dsb2018")).channels == 1
    assert Preprocessor.for_config(Config(kind="tissue")).channels == 3
    assert Preprocessor.for_config(Config(kind="tissue", color_mode="gray")).channels == 1
    with pytest.raises(ValueError, match="color_mode"):
        Preprocessor.for_config(Config(color_mode="hsv"))


def test_normalize_uses_the_whole_image_range():
    image = np.arange(1000, dtype=np.float64).reshape(10, 100) % 256
    out = normalize(image.astype(np.uint8))
    assert out.dtype == np.float32 and -0.05 < out.min() < 0.01 and 0.99 < out.max() < 1.05


@pytest.mark.parametrize("mode", ["gray", "rgb"])
@pytest.mark.parametrize("shape, background", [((60, 70, 3), 40), ((1100, 1000, 3), 200), ((700, 600, 3), 30),
                                               ((1030, 1030), 220)])
def test_statistics_applied_block_by_block_equal_the_whole_image(mode, shape, background):
    """Normalising blocks with the whole image's statistics gives exactly the whole image's input,
    from a NumPy or a Dask array (the block-wise prediction path)."""
    import dask.array as da

    rng = np.random.default_rng(len(shape) + shape[0])
    scene = np.full(shape, float(background))
    scene[::50, ::3] = 255 - background  # objects in the other contrast
    image = np.clip(scene + rng.normal(0, 10, shape), 0, 255).astype(np.uint8)
    preprocessor = Preprocessor(mode)
    whole = preprocessor(image)
    statistics = preprocessor.statistics(image)
    assert statistics == preprocessor.statistics(da.from_array(image, chunks=256))
    assert statistics.invert == (mode == "gray" and background > 127)
    np.testing.assert_array_equal(preprocessor.apply(image, statistics), whole)
    block = (slice(37, 300), slice(11, 250))
    np.testing.assert_array_equal(preprocessor.apply(image[block], statistics), whole[block])


def _stained(shape=(48, 60)) -> np.ndarray:
    """A brightfield H&E-like scene: white background, pink (eosin) cytoplasm, a purple nucleus."""
    image = np.full(shape + (3,), 240, np.uint8)
    image[5:40, 5:55] = (230, 140, 190)  # cytoplasm, eosin
    image[15:30, 20:35] = (90, 60, 150)  # nucleus, hematoxylin
    return image


def test_hematoxylin_mode_shows_the_nuclear_stain_and_leaves_gray_images_gray():
    stained = _stained()
    density = model_input(stained, "hematoxylin")
    assert density.shape == (48, 60, 1) and density.dtype == np.float32 and density.min() >= 0
    nucleus, cytoplasm, background = density[20, 25, 0], density[8, 8, 0], density[45, 2, 0]
    assert nucleus > 3 * max(cytoplasm, background)  # eosin barely counts
    gray = model_input(stained, "gray").astype(float)
    assert gray[8, 8, 0] > 0.4 * gray[20, 25, 0]  # in gray, the cytoplasm is nearly half a nucleus
    gray_scene = _scene(220, 60)
    np.testing.assert_array_equal(model_input(gray_scene, "hematoxylin"), model_input(gray_scene, "gray"))
    assert Preprocessor("hematoxylin").channels == 1
    normalised = Preprocessor("hematoxylin")(stained)  # the density's own range maps to 0..1
    assert normalised[20, 25, 0] > 0.9 and normalised[8, 8, 0] < 0.1
    black = stained.copy()
    black[0, :30], black[1, :30] = 0, 1  # black counts as one level, not as an infinite density
    density = model_input(black, "hematoxylin")
    assert density[0, 0, 0] == density[1, 0, 0] and np.isfinite(density).all()


@pytest.mark.parametrize("shape", [(48, 60), (1100, 1000)])
def test_hematoxylin_statistics_block_by_block_equal_the_whole_image(shape):
    import dask.array as da

    rng = np.random.default_rng(7)
    image = np.clip(np.tile(_stained(), (shape[0] // 48 + 1, shape[1] // 60 + 1, 1))[:shape[0], :shape[1]]
                    + rng.normal(0, 8, shape + (3,)), 0, 255).astype(np.uint8)
    preprocessor = Preprocessor("hematoxylin")
    whole, statistics = preprocessor(image), preprocessor.statistics(da.from_array(image, chunks=256))
    assert statistics.hematoxylin and not statistics.invert
    block = (slice(7, 40), slice(3, 51))
    np.testing.assert_array_equal(preprocessor.apply(image[block], statistics), whole[block])
