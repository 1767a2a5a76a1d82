"""Fixtures that write tiny datasets in the exact on-disk formats."""

from __future__ import annotations

import csv
import os
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("MPLBACKEND", "Agg")

import numpy as np
import pytest
from PIL import Image

from unet.rle import rle_encode


REPOSITORY = Path(__file__).resolve().parents[1]


def benchmark_module(name: str):
    """A script of benchmarks/ imported as a module (its functions, without running main)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, REPOSITORY / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _repository_outputs() -> set[str]:
    """What lies in the repository's default cache and log folders (the user's, not the tests')."""
    return {str(path.relative_to(REPOSITORY)) for folder in ("npy", "logs") if (REPOSITORY / folder).is_dir()
            for path in (REPOSITORY / folder).iterdir()}


@pytest.fixture(scope="session", autouse=True)
def tests_write_only_their_own_folders():
    """Every test writes under its tmp_path: nothing new appears in the repository's npy/ or logs/."""
    before = _repository_outputs()
    yield
    added = _repository_outputs() - before
    assert not added, f"the tests wrote into the repository: {sorted(added)}"


def disk(shape, center, radius) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - center[0]) ** 2 + (xx - center[1]) ** 2 <= radius**2


def write_dsb_sample(root: Path, sample_id: str, image: np.ndarray, masks: list[np.ndarray], mode: str | None = None):
    folder = root / sample_id
    (folder / "images").mkdir(parents=True)
    Image.fromarray(image, mode=mode).save(folder / "images" / f"{sample_id}.png")
    if masks:
        (folder / "masks").mkdir()
        for k, mask in enumerate(masks):
            Image.fromarray(mask.astype(np.uint8) * 255, mode="L").save(folder / "masks" / f"m{k:03d}.png")
    return folder


@pytest.fixture
def dsb_dir(tmp_path) -> Path:
    """stage1_train with an RGBA, an RGB and a gray image; the RGBA one has overlapping nuclei."""
    root = tmp_path / "dsb" / "stage1_train"
    rng = np.random.default_rng(0)
    shape = (40, 48)
    a, b, c = disk(shape, (15, 15), 8), disk(shape, (15, 27), 8), disk(shape, (32, 36), 5)
    rgba = rng.integers(0, 255, (*shape, 4), dtype=np.uint8)
    write_dsb_sample(root, "aaa", rgba, [a, b, c], mode="RGBA")
    rgb = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    write_dsb_sample(root, "bbb", rgb, [disk((32, 32), (10, 10), 4)], mode="RGB")
    gray = rng.integers(0, 255, (24, 40), dtype=np.uint8)
    write_dsb_sample(root, "ccc", gray, [disk((24, 40), (12, 20), 6), disk((24, 40), (5, 5), 3)], mode="L")
    return root


@pytest.fixture
def dsb_test_dir(tmp_path) -> tuple[Path, list[np.ndarray]]:
    """stage1_test labelled only by stage1_solution.csv, with the masks it encodes."""
    root = tmp_path / "dsb"
    test = root / "stage1_test"
    shape = (30, 36)
    masks = [disk(shape, (8, 8), 5), disk(shape, (20, 25), 7)]
    write_dsb_sample(test, "ttt", np.full((*shape, 3), 100, np.uint8), [], mode="RGB")
    with open(root / "stage1_solution.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", "EncodedPixels", "Height", "Width", "Usage"])
        for mask in masks:
            writer.writerow(["ttt", rle_encode(mask), shape[0], shape[1], "Public"])
    return test, masks


def tissue_labels(seed: int, shape=(32, 32), classes: int = 4) -> np.ndarray:
    labels = np.zeros(shape, np.uint8)
    for k in range(1, classes):
        labels[k * shape[0] // classes:, : (k + 1) * shape[1] // (classes + 1)] = k
    return np.roll(labels, seed, axis=1)


PALETTE = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0], [0, 0, 255]], np.uint8)


def write_tissue(root: Path, mode: str, n: int = 5, shape=(32, 32)) -> list[np.ndarray]:
    """images/*.png (RGBA) and masks/*.png as 'P', 'L' (levels 0/85/170/255) or 'RGB'."""
    (root / "images").mkdir(parents=True)
    (root / "masks").mkdir()
    rng = np.random.default_rng(1)
    labels_all = []
    for i in range(n):
        labels = tissue_labels(i, shape)
        labels_all.append(labels)
        Image.fromarray(rng.integers(0, 255, (*shape, 4), dtype=np.uint8), mode="RGBA").save(root / "images" / f"s{i}.png")
        if mode == "P":
            mask = Image.fromarray(labels, mode="P")
            mask.putpalette(PALETTE.ravel().tolist())
        elif mode == "L":
            mask = Image.fromarray((labels * 85).astype(np.uint8), mode="L")
        else:
            mask = Image.fromarray(PALETTE[labels], mode="RGB")
        mask.save(root / "masks" / f"s{i}.png")
    return labels_all


def fake_run(tmp_path, kind, channels, palette):
    """An untrained run folder (best.keras and config.json, as training saves them) of a tiny U-Net."""
    import keras

    from unet.config import Config
    from unet.model import build_unet
    from unet.preprocess import Preprocessor

    run = tmp_path / f"run_{kind}"
    run.mkdir()
    keras.utils.set_random_seed(1)
    config = Config(kind=kind, head="boundary" if kind == "dsb2018" else "multiclass", num_classes=channels,
                    tile_size=64, npy_dir=str(tmp_path / "npy"), extra={"palette": palette})
    build_unet(Preprocessor.for_config(config).channels, channels, base_filters=2, depth=2).save(run / "best.keras")
    config.save(run / "config.json")
    return run / "best.keras"
