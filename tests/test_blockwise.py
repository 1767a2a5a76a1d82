"""Images larger than memory: lazy readers, and block-wise prediction equal to in-memory."""

import keras
import numpy as np
import pytest
from keras import layers

from conftest import disk
from unet.blockwise import BlockPredictor, block_windows, predict_blockwise
from unet.config import Config
from unet.device import precision_policy
from unet.evaluation import nuclei_scores
from unet.inference import predict_image, predict_probabilities
from unet.io import DataError, read_rgb, save_png
from unet.lazy import open_lazy
from unet.model import build_unet


@pytest.fixture(autouse=True)
def float32_policy():
    with precision_policy("float32"):
        yield


def _tissue_scene(shape=(300, 420)) -> np.ndarray:
    rng = np.random.default_rng(7)
    image = np.zeros((*shape, 3), np.uint8)
    for _ in range(40):
        y, x, r = rng.integers(0, shape[0]), rng.integers(0, shape[1]), rng.integers(8, 40)
        image[disk(shape, (y, x), r)] = rng.integers(0, 255, 3)
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


def test_tissue_blocks_give_the_in_memory_probabilities_and_classes():
    keras.utils.set_random_seed(2)
    model = build_unet(3, 4, base_filters=2, depth=2)
    config = Config(kind="tissue", tile_size=64, tile_overlap=0.25, tta=False, batch_size=3)
    image = _tissue_scene()
    whole = predict_probabilities(model, config, image)
    predictor = BlockPredictor(model, config, image)
    for window in block_windows(300, 420, 100):  # block borders fall across tiles and inside the padding
        y0, y1, x0, x1 = window
        np.testing.assert_array_equal(predictor.probabilities(window), whole[y0:y1, x0:x1])
    import dask.array as da

    labels, _ = predict_blockwise(model, config, da.from_array(image, chunks=(128, 128, 3)), block_size=128)
    assert labels.chunksize == (128, 128)
    np.testing.assert_array_equal(labels.compute(), predict_image(model, config, image)[1])


def _bright_disks_model() -> keras.Model:
    """A fixed 1x1-convolution 'nuclei model': bright (normalised > 0.5) pixels are interior."""
    model = keras.Sequential([keras.Input((None, None, 1)), layers.Conv2D(3, 1), layers.Softmax()])
    model.layers[0].set_weights([np.array([[[[-20.0, 20.0, 0.0]]]], np.float32),
                                 np.array([10.0, -10.0, -3.0], np.float32)])
    return model


def test_nuclei_across_block_borders_are_stitched_not_split_or_doubled():
    shape = (256, 300)
    image = np.full((*shape, 3), 20, np.uint8)
    centres = [(64, 64), (64, 128), (70, 190), (128, 60), (130, 140), (192, 200), (200, 255), (30, 250)]
    for centre in centres:  # many lie on the 64-pixel block grid, one spans four blocks
        image[disk(shape, centre, 11)] = 220
    model, config = _bright_disks_model(), Config(kind="dsb2018", tile_size=64, tta=False, min_nucleus_area=12)
    in_memory = predict_image(model, config, image)[1]
    assert in_memory.max() == len(centres)
    blockwise, predictor = predict_blockwise(model, config, image, block_size=64, halo=32)
    labels = blockwise.compute()
    assert nuclei_scores(in_memory, labels)["map"] == 1.0
    for nucleus in range(1, in_memory.max() + 1):  # each nucleus holds exactly one id, its own
        assert len(np.unique(labels[in_memory == nucleus])) == 1
    assert len(np.unique(labels)) - 1 == len(centres)
    assert all(predictor.nuclei(window)[1] == 0 for window in block_windows(*shape, 64))


def test_a_halo_smaller_than_a_nucleus_is_reported():
    shape = (128, 128)
    image = np.full((*shape, 3), 20, np.uint8)
    image[disk(shape, (64, 64), 30)] = 220
    predictor = BlockPredictor(_bright_disks_model(), Config(kind="dsb2018", tile_size=64, tta=False), image, halo=8)
    assert predictor.nuclei((0, 64, 0, 64))[1] == 1


def test_lazy_readers_give_what_the_in_memory_reader_gives(tmp_path):
    import tifffile
    import zarr

    image = _tissue_scene((130, 170))
    save_png(tmp_path / "scene.png", image)
    tifffile.imwrite(tmp_path / "scene.tif", image, tile=(64, 64))
    tifffile.imwrite(tmp_path / "scene16.ome.tif", image.astype(np.uint16) * 200, tile=(64, 64), ome=True)
    array = zarr.create_array(str(tmp_path / "planar.zarr"), shape=(3, 130, 170), chunks=(3, 64, 64), dtype="uint8")
    array[:] = np.moveaxis(image, 2, 0)
    for name in ("scene.png", "scene.tif", "planar.zarr"):
        lazy = open_lazy(tmp_path / name)
        assert lazy.shape == (130, 170, 3) and lazy.dtype == np.uint8
        np.testing.assert_array_equal(lazy.compute(), read_rgb(tmp_path / "scene.png"))
    sixteen = open_lazy(tmp_path / "scene16.ome.tif").compute()
    assert sixteen.dtype == np.uint8 and sixteen.max() == 255 and np.corrcoef(sixteen.ravel(), image.ravel())[0, 1] > 0.99


def test_unreadable_and_non_image_arrays_are_named(tmp_path):
    import tifffile
    import zarr

    tifffile.imwrite(tmp_path / "whole.tif", np.zeros((64, 64, 3), np.uint8))
    (tmp_path / "truncated.tif").write_bytes((tmp_path / "whole.tif").read_bytes()[:200])
    stack = zarr.create_array(str(tmp_path / "stack.zarr"), shape=(5, 40, 40), chunks=(1, 40, 40), dtype="uint8")
    stack[:] = 1
    floats = zarr.create_array(str(tmp_path / "floats.zarr"), shape=(40, 40), chunks=(40, 40), dtype="float32")
    floats[:] = 0.5
    corrupt = zarr.create_array(str(tmp_path / "corrupt.zarr"), shape=(40, 40), chunks=(20, 20), dtype="uint8",
                                compressors=zarr.codecs.ZstdCodec())
    corrupt[:] = 7
    chunk = next(path for path in (tmp_path / "corrupt.zarr").rglob("*") if path.is_file() and path.name == "0")
    chunk.write_bytes(b"not zstd data")
    for name, problem in (("truncated.tif", "truncated TIFF"), ("corrupt.zarr", "unreadable or truncated"),
                          ("stack.zarr", "not a 2-D image"),
                          ("floats.zarr", "float32 pixels"), ("missing.tif", "no such image")):
        with pytest.raises(DataError, match=problem) as error:
            open_lazy(tmp_path / name).compute()
        assert name in str(error.value)
    with pytest.raises(DataError, match="pyramid level 2"):
        open_lazy(tmp_path / "whole.tif", level=2)
