"""The sliding-window tiler: seams, coverage, TTA as a wrapper of the predictor."""

import keras
import numpy as np
import pytest
from keras import layers

from unet.device import precision_policy
from unet.inference import predictor
from unet.model import build_unet
from unet.preprocess import normalize
from unet.tiling import model_stride, predict_tiled, tile_layout


def tiled_prediction(model, image, tta=False, **options):
    """The model's probabilities of a whole image through the tiler, as prediction runs it."""
    return predict_tiled(predictor(model, tta), normalize(image), stride=model_stride(model), **options)


@pytest.fixture(autouse=True)
def float32_policy():
    with precision_policy("float32"):
        yield


def test_tiled_equals_untiled_when_the_overlap_covers_the_receptive_field():
    keras.utils.set_random_seed(0)
    model = build_unet(3, 3, base_filters=4, depth=1)
    image = np.random.default_rng(0).integers(0, 255, (80, 112, 3), dtype=np.uint8)
    whole = tiled_prediction(model, image, tile_size=512)  # one pass
    tiled = tiled_prediction(model, image, tile_size=64, overlap=0.75, batch_size=3)  # 2 x 4 tiles
    assert whole.shape == tiled.shape == (80, 112, 3)
    np.testing.assert_allclose(tiled, whole, atol=2e-5)
    # and the untiled pass is the model itself on the image
    direct = np.asarray(model.predict(normalize(image)[None], verbose=0))[0]
    np.testing.assert_allclose(whole, direct, atol=1e-6)


def test_tiled_is_close_to_untiled_for_a_default_depth_unet():
    model = build_unet(3, 1, base_filters=2, depth=4)
    image = np.random.default_rng(1).integers(0, 255, (100, 130, 3), dtype=np.uint8)
    whole = tiled_prediction(model, image, tile_size=256)
    tiled = tiled_prediction(model, image, tile_size=64, overlap=0.5)
    assert np.abs(tiled - whole).mean() < 0.02


@pytest.mark.parametrize("height, width, expected_tiles", [(520, 696, 12), (256, 256, 1), (40, 1000, 5)])
def test_tile_layout_covers_the_padded_image(height, width, expected_tiles):
    layout = tile_layout(height, width, tile_size=256, overlap=0.25, stride=16)
    padded_h, padded_w = layout["padded"]
    assert padded_h % 16 == padded_w % 16 == 0 and 0 <= padded_h - height < 16 and 0 <= padded_w - width < 16
    tile_h, tile_w = layout["tile"]
    covered = np.zeros((padded_h, padded_w), bool)
    for y, x in layout["starts"]:
        assert 0 <= y <= padded_h - tile_h and 0 <= x <= padded_w - tile_w
        covered[y:y + tile_h, x:x + tile_w] = True
    assert covered.all() and len(layout["starts"]) == expected_tiles
    with pytest.raises(ValueError, match="multiple of the model stride"):
        tile_layout(height, width, tile_size=250, overlap=0.25, stride=16)


@pytest.mark.parametrize("tta", [False, True])
def test_identity_model_through_the_tiler_reproduces_its_input(tta):
    identity = keras.Sequential([keras.Input((None, None, 3)), layers.Identity()])
    image = np.random.default_rng(2).integers(0, 255, (50, 77, 3), dtype=np.uint8)
    out = tiled_prediction(identity, image, tta, tile_size=16, overlap=0.5)
    np.testing.assert_allclose(out, normalize(image), atol=1e-5)
