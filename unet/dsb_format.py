"""The DSB2018 Kaggle layout: ``<id>/images/<id>.png`` with one mask per nucleus in
``<id>/masks/``, or run-length rows (``stage1_solution.csv``) in the folder or beside it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from .dataset import Dataset
from .io import DataError, is_image_file, list_images, open_image, to_rgb
from .progress import parallel_map
from .rle import read_rle_csv, rle_decode

KIND = "dsb2018"
SETTINGS = ()  # decoding takes no settings: the cache depends on the files only
RLE_FILES = ("stage1_solution.csv", "stage1_train_labels.csv")
WHOLE_IMAGE_SHARE = 0.9  # an instance mask covering more of its image is refused (inverted or filled mask)


def is_sample(folder: Path) -> bool:
    """A Kaggle ``<id>/`` folder: ``images/`` holding an image named after the folder."""
    images = folder / "images"
    return images.is_dir() and any(p.stem == folder.name for p in images.iterdir() if is_image_file(p))


def is_layout(folder: Path) -> bool:
    """A DSB2018 root (stage1_train/ or stage1_test/) or a folder of ``<id>/`` samples."""
    return ((folder / "stage1_train").is_dir() or (folder / "stage1_test").is_dir()
            or any(is_sample(sub) for sub in folder.iterdir() if sub.is_dir()))


def _rle_tables(folder: Path) -> dict[str, list]:
    """Run-length labels found in the folder or beside it, merged by image id."""
    table: dict[str, list] = {}
    for directory in (folder, folder.parent):
        for name in RLE_FILES:
            if (directory / name).is_file():
                for key, rows in read_rle_csv(directory / name).items():
                    table.setdefault(key, rows)
    return table


def _dsb_sources(folder: Path) -> list[Path]:
    samples = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not samples:
        raise DataError(f"{folder}: empty folder (no <id>/images/<id>.png samples)")
    return samples


def source_files(folder: Path) -> list[Path]:
    """Every file the decoded dataset depends on (for the cache fingerprint)."""
    files = []
    for sample in _dsb_sources(folder):
        for sub in ("images", "masks"):
            if (sample / sub).is_dir():
                files += [p for p in (sample / sub).iterdir() if is_image_file(p)]
    files += [d / n for d in (folder, folder.parent) for n in RLE_FILES if (d / n).is_file()]
    return sorted(files)


def mask_foreground(image: Image.Image) -> np.ndarray:
    """The foreground of one instance mask, read from its gray or colour content whatever the
    mode: an RGBA mask with opaque black around a white nucleus is the nucleus, not the whole
    image. Alpha counts only when the colour channels hold nothing (a nucleus drawn in alpha)."""
    if image.mode in ("P", "PA"):
        image = image.convert("RGBA")
    array = np.asarray(image)
    if array.ndim == 2:
        return array > 0
    colour, alpha = array[..., :-1] if image.mode in ("LA", "RGBA") else array, None
    if image.mode in ("LA", "RGBA"):
        alpha = array[..., -1]
    foreground = colour.any(axis=2)
    if not foreground.any() and alpha is not None and alpha.min() < alpha.max():
        foreground = alpha > 0
    return foreground


def instances_from_layers(layers: list[np.ndarray], names: list[str], shape) -> tuple[np.ndarray, list[str]]:
    """(uint16 instance map, notes) from one boolean layer per nucleus, in the given order.

    A pixel claimed by several layers keeps the earliest one (deterministic overlaps). A layer
    that ends up with no pixel of its own (empty, or a duplicate of earlier masks) is no nucleus:
    it is left out, and a note names it. Instances are numbered 1..n without gaps.
    """
    instances = np.zeros(shape, np.uint16)
    notes, first_owner = [], {}
    for layer, name in zip(layers, names):
        own = layer & (instances == 0)
        if not layer.any():
            notes.append(f"{name}: empty mask (no foreground pixel): not counted as a nucleus")
            continue
        if not own.any():
            owners = np.unique(instances[layer])
            if len(owners) == 1 and (instances == owners[0]).sum() == layer.sum():
                what = f"duplicate of {first_owner[int(owners[0])]}"
            else:
                what = "covered entirely by " + ", ".join(first_owner[int(v)] for v in owners)
            notes.append(f"{name}: {what}: not counted as a nucleus")
            continue
        label = len(first_owner) + 1
        instances[own] = label
        first_owner[label] = name
    return instances, notes


def _mask_file_layers(mask_files: list[Path], shape) -> tuple[list, list[str], list[str]]:
    """(boolean layers, names, problems) of a sample's mask PNGs."""
    layers, names, problems = [], [], []
    for path in mask_files:
        try:
            mask = mask_foreground(open_image(path))
        except DataError as error:
            problems += error.problems
            continue
        if mask.shape[:2] != shape:
            problems.append(f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from its "
                            f"image {shape[1]}x{shape[0]}")
            continue
        layers.append(mask)
        names.append(str(path))
    return layers, names, problems


def _rle_layers(rle_rows: list, shape, sample: Path, image_path: Path) -> tuple[list, list[str], list[str]]:
    """(boolean layers, names, problems) of a sample's run-length rows; a row's name is its file:line."""
    layers, names, problems = [], [], []
    for encoded, rle_shape, where in rle_rows:
        if rle_shape is not None and tuple(rle_shape) != shape:
            problems.append(f"{where}: run-length size {rle_shape[1]}x{rle_shape[0]} differs from the image "
                            f"{image_path} ({shape[1]}x{shape[0]})")
            continue
        try:
            layers.append(rle_decode(encoded, shape))
        except ValueError as error:
            problems.append(f"{where}: bad run-length labels for {sample.name} ({error})")
            continue
        names.append(where)
    return layers, names, problems


def decode_dsb_sample(sample: Path, rle_rows: list | None, require_labels: bool):
    """(image, instance map or None, notes) of one ``<id>/`` folder.

    Instance masks are read in file-name order (or run-length rows in file order); see
    :func:`instances_from_layers` for overlaps and masks without pixels of their own.
    """
    image_dir = sample / "images"
    images = list_images(image_dir) if image_dir.is_dir() else []
    if len(images) != 1:
        found = "no image" if not images else f"{len(images)} images"
        raise DataError(f"{sample}: expected one image in images/, found {found}")
    image = to_rgb(open_image(images[0]))
    shape = image.shape[:2]
    mask_files = list_images(sample / "masks") if (sample / "masks").is_dir() else []
    if mask_files:
        layers, names, problems = _mask_file_layers(mask_files, shape)
    elif rle_rows:
        layers, names, problems = _rle_layers(rle_rows, shape, sample, images[0])
    elif require_labels:
        raise DataError(f"{sample}: image without masks (no masks/*.png and no run-length rows)")
    else:
        return image, None, []
    for layer, name in zip(layers, names):
        if layer.mean() > WHOLE_IMAGE_SHARE:
            problems.append(f"{name}: the mask covers {100 * layer.mean():.0f}% of its image; an instance mask "
                            "holds one nucleus on a black background (inverted or filled mask?)")
    if problems:
        raise DataError(problems)
    instances, notes = instances_from_layers(layers, names, shape)
    return image, instances, notes


def decode(folder: Path, *, require_labels: bool = True, progress: bool = True) -> Dataset:
    """Decode a stage1_train/stage1_test folder (no cache). Images either all have labels or none."""
    samples = _dsb_sources(folder)
    table = _rle_tables(folder)
    decoded = parallel_map(lambda s: decode_dsb_sample(s, table.get(s.name), require_labels), samples,
                           f"decoding {folder.name}", progress=progress)
    labelled = [instances is not None for _, instances, _ in decoded]
    if any(labelled) and not all(labelled):
        raise DataError([f"{sample}: image without masks" for sample, ok in zip(samples, labelled) if not ok])
    instances = [inst for _, inst, _ in decoded] if all(labelled) else None
    masks = None if instances is None else [(inst > 0).astype(np.uint8) for inst in instances]
    notes = [note for _, _, sample_notes in decoded for note in sample_notes]
    if notes:
        notes.append(f"{len(notes)} mask(s) without pixels of their own were left out (listed above)")
    return Dataset(KIND, [s.name for s in samples], [image for image, _, _ in decoded], masks, instances,
                   source=str(folder), report=notes)
