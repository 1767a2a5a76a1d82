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
        # the same tiles and blending; only the batches differ, which moves a float by an ulp on some CPUs
        np.testing.assert_allclose(predictor.probabilities(window), whole[y0:y1, x0:x1], rtol=0, atol=1e-6)
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


def _nuclei_run(tmp_path):
    """A run folder holding the bright-disks model (as training saves a run)."""
    run = tmp_path / "run"
    run.mkdir()
    _bright_disks_model().save(run / "best.keras")
    Config(kind="dsb2018", head="boundary", num_classes=3, tile_size=64, tta=False, color_mode="gray",
           extra={"palette": [[0, 0, 0], [255, 220, 0], [255, 0, 200]]}).save(run / "config.json")
    return run


def _disks_tiff(tmp_path, shape=(200, 260)):
    import tifffile

    image = np.full((*shape, 3), 20, np.uint8)
    for centre in [(64, 64), (60, 128), (130, 62), (128, 128), (150, 200), (30, 230), (190, 20)]:
        image[disk(shape, centre, 10)] = 220
    tifffile.imwrite(tmp_path / "big.tif", image, tile=(64, 64))
    return tmp_path / "big.tif", image


def test_large_image_to_ome_zarr_equals_in_memory_and_resumes(tmp_path):
    import zarr

    from unet.large_images import RECORDS, predict_large_image
    from unet.nuclei import nucleus_table
    from unet.run import Run

    run, (path, image) = _nuclei_run(tmp_path), _disks_tiff(tmp_path)
    out = tmp_path / "out.zarr"
    first = predict_large_image(run, path, out, block_size=64, halo=32, progress=False)
    assert first["blocks"] == first["blocks_computed"] == 20 and first["nuclei"] == 7 and first["cut_components"] == 0
    labels = zarr.open_array(str(out / "0"), mode="r")[:]
    in_memory = Run.load(run).predict(image)[1]
    assert nuclei_scores(in_memory, labels)["map"] == 1.0 and len(np.unique(labels)) == 8
    group = zarr.open_group(str(out), mode="r")
    assert group.attrs["multiscales"][0]["datasets"][0]["path"] == "0" and (out / "overview.png").is_file()
    import csv

    rows = list(csv.DictReader(open(out / "nuclei.csv")))
    expected = sorted(nucleus_table("", image, in_memory), key=lambda row: (row["centroid_y"], row["centroid_x"]))
    rows = sorted(rows, key=lambda row: (float(row["centroid_y"]), float(row["centroid_x"])))
    for row, want in zip(rows, expected, strict=True):
        for key in ("area", "centroid_y", "centroid_x", "equivalent_diameter", "eccentricity", "mean_intensity"):
            assert float(row[key]) == pytest.approx(want[key], abs=2e-3), key
    # interrupted: one block's record lost (its chunk maybe half written): only that block runs again
    record = sorted((out / RECORDS).glob("*.npz"))[5]
    record.unlink()
    again = predict_large_image(run, path, out, block_size=64, halo=32, progress=False)
    assert again["blocks_computed"] == 1 and np.array_equal(zarr.open_array(str(out / "0"), mode="r")[:], labels)
    with pytest.raises(DataError, match="holds another prediction .*block_size"):
        predict_large_image(run, path, out, block_size=128, halo=32, progress=False)


def test_a_local_cluster_of_two_worker_processes_gives_the_same_labels(tmp_path):
    import zarr
    from distributed import LocalCluster

    from unet.large_images import predict_large_image

    run, (path, _) = _nuclei_run(tmp_path), _disks_tiff(tmp_path)
    predict_large_image(run, path, tmp_path / "local.zarr", block_size=64, halo=32, progress=False)
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as cluster:
        summary = predict_large_image(run, path, tmp_path / "cluster.zarr", block_size=64, halo=32, progress=False,
                                      scheduler=cluster.scheduler_address)
    assert summary["blocks_computed"] == 20
    assert np.array_equal(zarr.open_array(str(tmp_path / "cluster.zarr" / "0"), mode="r")[:],
                          zarr.open_array(str(tmp_path / "local.zarr" / "0"), mode="r")[:])


def test_predict_a_large_image_through_the_command_line(tmp_path, capsys):
    from unet.cli import main as cli

    run, (path, _) = _nuclei_run(tmp_path), _disks_tiff(tmp_path)
    code = cli(["predict", "--model", str(run), "--image", str(path), "--out", str(tmp_path / "out.zarr"),
                "--block-size", "128", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "6 of 6 blocks computed" in out and "7 nuclei" in out
    assert (tmp_path / "out.zarr" / "nuclei.csv").is_file()
    (tmp_path / "broken.tif").write_bytes(path.read_bytes()[:300])
    code = cli(["predict", "--model", str(run), "--image", str(tmp_path / "broken.tif"), "--out",
                str(tmp_path / "broken.zarr")])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "broken.tif: truncated TIFF" in err
    code = cli(["predict", "--model", str(run), "--image", str(path), "--images", str(tmp_path), "--out",
                str(tmp_path / "x")])
    assert code == 1 and "not both" in capsys.readouterr().err
    code = cli(["predict", "--model", str(run), "--image", str(path), "--out", str(tmp_path / "y.zarr"),
                "--block-size", "0"])
    err = capsys.readouterr().err
    assert code == 1 and err.count("\n") == 1 and "--block-size" in err


def test_an_ome_zarr_pyramid_gives_the_level_asked_for(tmp_path):
    import zarr

    image = _tissue_scene((128, 160))
    group = zarr.open_group(str(tmp_path / "scan.ome.zarr"), mode="w")
    for level in (0, 1):
        planar = np.moveaxis(image[:: 2**level, :: 2**level], 2, 0)
        group.create_array(str(level), shape=planar.shape, chunks=(3, 64, 64), dtype="uint8")[:] = planar
    group.attrs["multiscales"] = [{"version": "0.4", "axes": [{"name": "c", "type": "channel"},
                                                              {"name": "y", "type": "space"},
                                                              {"name": "x", "type": "space"}],
                                   "datasets": [{"path": "0"}, {"path": "1"}]}]
    np.testing.assert_array_equal(open_lazy(tmp_path / "scan.ome.zarr").compute(), image)
    np.testing.assert_array_equal(open_lazy(tmp_path / "scan.ome.zarr", level=1).compute(), image[::2, ::2])
    with pytest.raises(DataError, match="level 2 asked for, the image has 2"):
        open_lazy(tmp_path / "scan.ome.zarr", level=2)


def test_tissue_classes_and_probabilities_of_a_large_image_equal_in_memory(tmp_path):
    import tifffile
    import zarr

    from unet.large_images import predict_large_image
    from unet.run import Run

    from conftest import fake_run

    image = _tissue_scene((200, 250))
    tifffile.imwrite(tmp_path / "scan.tif", image, tile=(64, 64))
    run = fake_run(tmp_path, "tissue", 4, [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25]])
    summary = predict_large_image(run, tmp_path / "scan.tif", tmp_path / "out.zarr", block_size=128, progress=False,
                                  probabilities=True, tta=False)
    probabilities, labels = Run.load(run).with_settings(tta=False).predict(image)
    assert summary["nuclei"] is None and summary["blocks"] == 4
    np.testing.assert_array_equal(zarr.open_array(str(tmp_path / "out.zarr" / "0"), mode="r")[:], labels)
    stored = zarr.open_array(str(tmp_path / "out.zarr" / "probabilities"), mode="r")[:]
    np.testing.assert_allclose(stored, probabilities.astype(np.float16), rtol=0, atol=5e-4)  # a float16 step at most
    colors = zarr.open_group(str(tmp_path / "out.zarr"), mode="r").attrs["image-label"]["colors"]
    assert colors[1] == {"label-value": 1, "rgba": [230, 25, 75, 255]}
