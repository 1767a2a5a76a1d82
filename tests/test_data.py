import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import PALETTE, disk, write_dsb_sample, write_tissue
from unet.cli import main as cli
from unet.data import decode_dataset, load_dataset
from unet.io import DataError, read_rgb
from unet.rle import read_rle_csv, rle_decode, rle_encode
from unet.synthetic import write_sample


# ----------------------------------------------------------------------------- RLE

def test_rle_is_one_based_and_column_major():
    mask = np.array([[0, 1, 1],
                     [0, 1, 0]], bool)
    # column-major pixel numbers: (0,0)=1 (1,0)=2 (0,1)=3 (1,1)=4 (0,2)=5 (1,2)=6
    assert rle_encode(mask) == "3 3"
    assert np.array_equal(rle_decode("3 3", mask.shape), mask)
    assert np.array_equal(rle_decode("2 1 5 1", mask.shape), np.array([[0, 0, 1], [1, 0, 0]], bool))


def test_rle_round_trip_random_masks():
    rng = np.random.default_rng(3)
    for _ in range(20):
        mask = rng.random((rng.integers(1, 30), rng.integers(1, 30))) < rng.random()
        assert np.array_equal(rle_decode(rle_encode(mask), mask.shape), mask)


def test_rle_rejects_runs_outside_the_image():
    with pytest.raises(ValueError, match="outside"):
        rle_decode("5 10", (3, 3))


# ----------------------------------------------------------------------------- DSB2018

def test_dsb_union_and_instances(dsb_dir):
    data = decode_dataset(dsb_dir, progress=False)
    assert data.kind == "dsb2018" and data.ids == ["aaa", "bbb", "ccc"]
    for image in data.images:
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
    inst, union = data.instances[0], data.masks[0]
    assert inst.dtype == np.uint16 and inst.max() == 3
    a, b = disk((40, 48), (15, 15), 8), disk((40, 48), (15, 27), 8)
    assert (a & b).any()
    assert np.all(inst[a & b] == 1)  # overlap goes to the first mask in name order
    assert np.array_equal(inst == 2, b & ~a)
    assert np.array_equal(union, (inst > 0).astype(np.uint8))


def test_dsb_image_modes_become_rgb(dsb_dir):
    data = decode_dataset(dsb_dir, progress=False)
    rgba = np.asarray(Image.open(dsb_dir / "aaa/images/aaa.png"))
    gray = np.asarray(Image.open(dsb_dir / "ccc/images/ccc.png"))
    assert np.array_equal(data.images[0], rgba[..., :3])
    assert np.array_equal(data.images[2], np.stack([gray] * 3, axis=2))


def test_16_bit_image_is_rescaled(tmp_path):
    values = np.array([[1000, 2000], [3000, 5000]], np.uint16)
    Image.fromarray(values).save(tmp_path / "x.png")
    rgb = read_rgb(tmp_path / "x.png")
    assert rgb.dtype == np.uint8 and rgb[0, 0, 0] == 0 and rgb[1, 1, 2] == 255
    assert rgb[0, 1, 1] == round(1000 / 4000 * 255)


def test_rle_labels_equal_png_masks(dsb_test_dir, tmp_path):
    test, masks = dsb_test_dir
    data = decode_dataset(test, "dsb2018", progress=False)
    assert data.ids == ["ttt"]
    for k, mask in enumerate(masks, start=1):
        assert np.array_equal(data.instances[0] == k, mask)
    # the same nuclei written as PNG masks decode to the same maps
    png = tmp_path / "png"
    write_dsb_sample(png, "ttt", data.images[0], masks, mode="RGB")
    assert np.array_equal(decode_dataset(png, "dsb2018", progress=False).instances[0], data.instances[0])


def test_read_rle_csv_groups_rows(dsb_test_dir):
    test, masks = dsb_test_dir
    rows = read_rle_csv(test.parent / "stage1_solution.csv")
    assert list(rows) == ["ttt"] and len(rows["ttt"]) == 2 and rows["ttt"][0][1] == (30, 36)


# ----------------------------------------------------------------------------- tissue

@pytest.mark.parametrize("mode", ["P", "L", "RGB"])
def test_tissue_masks_decode_to_class_indices(tmp_path, mode):
    labels = write_tissue(tmp_path / "t", mode)
    data = decode_dataset(tmp_path / "t", progress=False)
    assert data.kind == "tissue" and data.num_classes == 4
    for got, want in zip(data.masks, labels):
        if mode == "RGB":  # classes are the colours in ascending order; the palette keeps them
            assert np.array_equal(data.palette[got], PALETTE[want])
        else:
            assert np.array_equal(got, want)
    if mode == "P":
        assert np.array_equal(data.palette, PALETTE)


def test_rgb_masks_follow_the_classes_file(tmp_path):
    labels = write_tissue(tmp_path / "t", "RGB", n=2)
    (tmp_path / "t/classes.csv").write_text("index,name,value\n0,bg,#000000\n1,r,#ff0000\n2,g,#00ff00\n3,b,#0000ff\n")
    data = decode_dataset(tmp_path / "t", progress=False)
    assert data.class_names == ["bg", "r", "g", "b"] and np.array_equal(data.masks[1], labels[1])
    shares = data.class_shares()
    assert abs(sum(shares.values()) - 1) < 1e-9 and all(s > 0 for s in shares.values())


def _add_stray(path: Path, value: int, count: int):
    image = Image.open(path)
    array = np.array(image)
    array.ravel()[:count] = value
    out = Image.fromarray(array, mode=image.mode)
    if image.mode == "P":  # a full 256-entry palette, so that the PNG keeps 8-bit indices
        out.putpalette((image.getpalette() + [128] * 768)[:768])
    out.save(path)


def test_stray_values_raise_with_file_and_pixel_count(tmp_path):
    write_tissue(tmp_path / "t", "L", n=8)
    _add_stray(tmp_path / "t/masks/s3.png", 7, 3)
    with pytest.raises(DataError) as error:
        decode_dataset(tmp_path / "t", progress=False)
    assert "s3.png" in str(error.value) and "7: 3 px" in str(error.value)


def test_stray_values_map_to_ignore_label(tmp_path):
    labels = write_tissue(tmp_path / "t", "L", n=8)
    _add_stray(tmp_path / "t/masks/s3.png", 7, 3)
    data = decode_dataset(tmp_path / "t", stray="ignore", progress=False)
    assert data.num_classes == 4  # the stray value did not become a class
    assert np.all(data.masks[3].ravel()[:3] == 255)
    assert np.array_equal(data.masks[3].ravel()[3:], labels[3].ravel()[3:])
    assert any("s3.png" in line for line in data.report)


def test_unknown_palette_index_is_a_stray_with_classes_file(tmp_path):
    write_tissue(tmp_path / "t", "P", n=4)
    (tmp_path / "t/classes.csv").write_text("index,name\n0,bg\n1,a\n2,b\n3,c\n")
    _add_stray(tmp_path / "t/masks/s1.png", 9, 5)
    with pytest.raises(DataError, match=r"s1.png: palette index outside the classes \(9: 5 px\)"):
        decode_dataset(tmp_path / "t", progress=False)
    data = decode_dataset(tmp_path / "t", stray="ignore", progress=False)
    assert data.class_names == ["bg", "a", "b", "c"]


def test_forced_mask_mode_is_checked(tmp_path):
    write_tissue(tmp_path / "t", "L", n=2)
    with pytest.raises(DataError, match="not 'P'"):
        decode_dataset(tmp_path / "t", mask_mode="P", progress=False)


# ----------------------------------------------------------------------------- cache

def test_cache_hit_rebuild_on_change_and_on_corruption(dsb_dir, tmp_path, capsys):
    npy = tmp_path / "npy"
    first = load_dataset(dsb_dir, npy_dir=npy, progress=False)
    assert "building cache" in capsys.readouterr().out
    second = load_dataset(dsb_dir, npy_dir=npy, progress=False)
    assert "cache hit" in capsys.readouterr().out
    assert isinstance(second.images[0].base, np.memmap) or isinstance(second.images[0], np.memmap)
    for x, y in zip(first.instances, second.instances):
        assert np.array_equal(x, y)

    # a changed mask rebuilds, and the new content is served
    mask_path = dsb_dir / "bbb/masks/m000.png"
    Image.fromarray((255 * disk((32, 32), (20, 20), 3)).astype(np.uint8), mode="L").save(mask_path)
    os.utime(mask_path, ns=(1, 1))
    third = load_dataset(dsb_dir, npy_dir=npy, progress=False)
    assert "building cache" in capsys.readouterr().out
    assert third.instances[1][20, 20] == 1 and third.instances[1][10, 10] == 0

    # a truncated cache file is detected and rebuilt
    cache = next(p for p in npy.iterdir() if not p.name.startswith("."))
    images_npy = cache / "images.npy"
    images_npy.write_bytes(images_npy.read_bytes()[:-10])
    fourth = load_dataset(dsb_dir, npy_dir=npy, progress=False)
    assert "building cache" in capsys.readouterr().out
    assert np.array_equal(fourth.images[0], first.images[0])
    # a garbled header too
    images_npy.write_bytes(b"garbage" + images_npy.read_bytes()[7:])
    load_dataset(dsb_dir, npy_dir=npy, progress=False)
    assert "building cache" in capsys.readouterr().out
    assert [p.name for p in npy.iterdir()] == [cache.name]  # no temporary leftovers


def test_cache_rebuilds_when_settings_change(tmp_path, capsys):
    write_tissue(tmp_path / "t", "L", n=6)
    _add_stray(tmp_path / "t/masks/s2.png", 7, 2)
    npy = tmp_path / "npy"
    load_dataset(tmp_path / "t", npy_dir=npy, stray="ignore", progress=False)
    with pytest.raises(DataError):  # the cached 'ignore' result is not served for 'error'
        load_dataset(tmp_path / "t", npy_dir=npy, stray="error", progress=False)


def test_split_is_deterministic_and_80_20(tmp_path):
    write_tissue(tmp_path / "t", "P", n=10, shape=(8, 8))
    data = decode_dataset(tmp_path / "t", progress=False)
    train, val = data.split(0.2, seed=1)
    assert len(train) == 8 and len(val) == 2 and not set(train.ids) & set(val.ids)
    assert sorted(train.ids + val.ids) == sorted(data.ids)
    assert data.split(0.2, seed=1)[1].ids == val.ids
    assert any(data.split(0.2, seed=s)[1].ids != val.ids for s in range(2, 6))


# ----------------------------------------------------------------------------- check

def _check(path, capsys, *extra):
    code = cli(["check", str(path), "--quiet", *extra])
    out = capsys.readouterr()
    return code, out.out + out.err


def test_check_accepts_good_data_and_ignores_junk_files(dsb_dir, capsys):
    (dsb_dir / ".DS_Store").write_bytes(b"\0\1junk")
    (dsb_dir / "aaa" / "masks" / ".DS_Store").write_bytes(b"\0\1junk")
    (dsb_dir / "aaa" / "masks" / "notes.txt").write_text("hello")
    code, out = _check(dsb_dir, capsys)
    assert code == 0 and "3 images" in out and "nuclei: 6" in out


def test_check_names_a_corrupt_png(dsb_dir, capsys):
    (dsb_dir / "bbb/masks/m000.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    code, out = _check(dsb_dir, capsys)
    assert code == 1 and "bbb/masks/m000.png: unreadable or corrupt image" in out


def test_check_names_image_without_masks(dsb_dir, capsys):
    write_dsb_sample(dsb_dir, "ddd", np.zeros((8, 8, 3), np.uint8), [], mode="RGB")
    code, out = _check(dsb_dir, capsys)
    assert code == 1 and "ddd: image without masks" in out


def test_check_names_mask_of_other_size(dsb_dir, capsys):
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(dsb_dir / "ccc/masks/m001.png")
    code, out = _check(dsb_dir, capsys)
    assert code == 1 and "ccc/masks/m001.png: mask size 10x10 differs from its image 40x24" in out


def test_check_names_empty_folders(tmp_path, capsys):
    (tmp_path / "empty" / "images").mkdir(parents=True)
    (tmp_path / "empty" / "masks").mkdir()
    code, out = _check(tmp_path / "empty", capsys)
    assert code == 1 and "images: empty folder" in out
    (tmp_path / "dsb" / "stage1_train").mkdir(parents=True)
    code, out = _check(tmp_path / "dsb", capsys)
    assert code == 1 and "stage1_train: empty folder" in out


def test_check_names_unpaired_stems(tmp_path, capsys):
    write_tissue(tmp_path / "t", "P", n=3)
    (tmp_path / "t/images/s1.png").rename(tmp_path / "t/images/other.png")
    code, out = _check(tmp_path / "t", capsys)
    assert code == 1 and "other.png: no mask with the stem 'other'" in out and "s1.png: no image" in out


def test_check_reports_every_bad_file_at_once(dsb_dir, capsys):
    (dsb_dir / "aaa/masks/m000.png").write_bytes(b"broken")
    Image.fromarray(np.zeros((10, 10), np.uint8), mode="L").save(dsb_dir / "ccc/masks/m001.png")
    code, out = _check(dsb_dir, capsys)
    assert code == 1 and "aaa/masks/m000.png" in out and "ccc/masks/m001.png" in out


def test_check_through_python_m(tmp_path):
    write_tissue(tmp_path / "t", "RGB", n=2)
    result = subprocess.run([sys.executable, "-m", "unet", "check", str(tmp_path / "t"), "--quiet"],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert "tissue dataset: 2 images" in result.stdout


# ----------------------------------------------------------------------------- synthetic sample

def _tree_digest(root: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + path.read_bytes())
    return digest.hexdigest()


def test_sample_is_deterministic_and_loads_in_both_layouts(tmp_path):
    a = write_sample(tmp_path / "a", seed=3, n_train=5, n_test=2, n_tissue=1)
    b = write_sample(tmp_path / "b", seed=3, n_train=5, n_test=2, n_tissue=1)
    assert _tree_digest(a) == _tree_digest(b)
    nuclei = decode_dataset(a / "dsb2018", progress=False)
    test = decode_dataset(a / "dsb2018" / "stage1_test", "dsb2018", progress=False)  # run-length labels
    tissue = decode_dataset(a / "tissue", progress=False)
    shapes = {image.shape[:2] for image in nuclei.images}
    assert len(shapes) >= 3 and any(h != w for h, w in shapes)
    assert all(inst.max() >= 3 for inst in nuclei.instances + test.instances)
    assert tissue.images[0].shape == (512, 512, 3) and tissue.num_classes == 4
    assert tissue.class_names == ["background", "stroma", "epithelium", "necrosis"]
    assert Image.open(a / "tissue/masks/tissue_000.png").mode == "P"
    modes = {Image.open(p).mode for p in (a / "dsb2018/stage1_train").glob("*/images/*.png")}
    assert {"RGBA", "RGB", "L"} <= modes


def test_layout_detection_tells_a_dsb_folder_from_a_parent_of_tissue_folders(dsb_dir, tmp_path):
    from unet.data import detect_layout

    write_tissue(tmp_path / "parent" / "tissue", "P", n=1)
    assert detect_layout(tmp_path / "parent" / "tissue") == "tissue"
    with pytest.raises(DataError, match="neither"):
        detect_layout(tmp_path / "parent")
    assert detect_layout(dsb_dir) == "dsb2018" and detect_layout(dsb_dir.parent) == "dsb2018"


def test_a_validation_list_fixes_the_split(dsb_dir, tmp_path):
    from unet.config import Config
    from unet.data import split_for_training

    dataset = decode_dataset(dsb_dir, progress=False)
    listing = tmp_path / "val.txt"
    listing.write_text("# fixed validation ids\nccc  # the gray one\n\naaa\n")
    train, val = split_for_training(dataset, Config(val_list=str(listing)))
    assert val.ids == ["aaa", "ccc"] and train.ids == ["bbb"]
    listing.write_text("aaa\nzzz\n")
    with pytest.raises(DataError, match="1 validation id\\(s\\) not in the dataset, e.g. zzz"):
        split_for_training(dataset, Config(val_list=str(listing)))
    assert split_for_training(dataset, Config(seed=3))[1].ids == dataset.split(0.2, 3)[1].ids


def test_the_committed_validation_list_is_stratified_by_modality():
    listing = Path(__file__).resolve().parents[1] / "benchmarks" / "dsb2018_validation.txt"
    text = listing.read_text()
    ids = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert len(ids) == len(set(ids)) == 124 and all(len(i) == 64 for i in ids)
    assert "# brightfield: 3 of 13" in text and "# colour: 19 of 97" in text and "# fluorescence: 102 of 508" in text


def test_modality_groups_gray_fluorescence_brightfield_and_colour():
    from unet.dataset import modality

    dark, bright = np.full((8, 8, 3), 20, np.uint8), np.full((8, 8, 3), 220, np.uint8)
    stained = bright.copy()
    stained[..., 1] = 120  # a pink/purple H&E-like colour
    assert [modality(dark), modality(bright), modality(stained)] == ["fluorescence", "brightfield", "colour"]
