"""Datasets: the DSB2018 Kaggle layout and image/mask folders, decoded once into an NPY cache.

Both layouts load into one :class:`Dataset`: RGB uint8 images of any size, a uint8 class
map per image (nuclei: 0/1 union mask; tissue: class indices, ``ignore_label`` for values
that belong to no class) and, for nuclei, a uint16 instance label map kept for evaluation.
"""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from .io import DataError, is_image_file, list_images, open_image, read_rgb, to_rgb
from .progress import bars_shown
from .rle import read_rle_csv, rle_decode

CACHE_VERSION = 3
RLE_FILES = ("stage1_solution.csv", "stage1_train_labels.csv")
CLASSES_FILE = "classes.csv"
DEFAULT_COLORS = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], np.uint8)


@dataclass
class Dataset:
    """Images with their class maps (and instance maps for nuclei), in a fixed id order."""

    kind: str
    ids: list[str]
    images: list[np.ndarray]
    masks: list[np.ndarray] | None
    instances: list[np.ndarray] | None = None
    class_names: list[str] = field(default_factory=lambda: ["background", "nucleus"])
    palette: np.ndarray = field(default_factory=lambda: DEFAULT_COLORS[:2].copy())
    source: str = ""
    report: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices) -> "Dataset":
        pick = lambda items: None if items is None else [items[i] for i in indices]  # noqa: E731
        return Dataset(self.kind, pick(self.ids), pick(self.images), pick(self.masks),
                       pick(self.instances), self.class_names, self.palette, self.source, self.report)

    def split(self, val_fraction: float = 0.2, seed: int = 42) -> tuple["Dataset", "Dataset"]:
        """Deterministic train/validation split: a seeded permutation of the sorted ids."""
        order = np.random.default_rng(seed).permutation(len(self))
        ranked = sorted(range(len(self)), key=lambda i: self.ids[i])
        order = [ranked[i] for i in order]
        n_val = int(round(len(self) * val_fraction))
        n_val = min(max(n_val, 1 if len(self) > 1 else 0), len(self) - 1)
        return self.subset(sorted(order[n_val:])), self.subset(sorted(order[:n_val]))

    def split_by_ids(self, val_ids) -> tuple["Dataset", "Dataset"]:
        """(the other images, the images named in ``val_ids``); every listed id must exist."""
        wanted = set(val_ids)
        missing = sorted(wanted - set(self.ids))
        if missing:
            raise DataError(f"{self.source}: {len(missing)} validation id(s) not in the dataset, e.g. {missing[0]}")
        val = [i for i, name in enumerate(self.ids) if name in wanted]
        return self.subset([i for i in range(len(self)) if i not in set(val)]), self.subset(val)

    def class_shares(self) -> dict[str, float]:
        """Fraction of labelled pixels in each class (ignored pixels excluded)."""
        counts = np.zeros(256, np.int64)
        for mask in self.masks or []:
            counts += np.bincount(np.asarray(mask).ravel(), minlength=256)
        total = counts[: self.num_classes].sum()
        return {name: float(counts[i] / total) if total else 0.0 for i, name in enumerate(self.class_names)}

    def summary(self) -> str:
        shapes = [im.shape[:2] for im in self.images]
        sizes: dict[str, int] = {}
        for h, w in shapes:
            sizes[f"{h}x{w}"] = sizes.get(f"{h}x{w}", 0) + 1
        lines = [f"{self.kind} dataset: {len(self)} images from {self.source}",
                 "  sizes: " + ", ".join(f"{k} x{v}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]))]
        if self.instances is not None:
            counts = [int(inst.max()) for inst in self.instances]
            lines.append(f"  nuclei: {sum(counts)} in all, {np.mean(counts):.1f} per image "
                         f"(min {min(counts)}, max {max(counts)})")
        if self.masks is not None:
            shares = self.class_shares()
            lines.append("  classes: " + ", ".join(f"{n} {100 * s:.1f}%" for n, s in shares.items()))
        lines += [f"  {line}" for line in self.report]
        return "\n".join(lines)


def modality(image) -> str:
    """'colour' (H&E, colour brightfield), 'brightfield' (gray, bright background) or
    'fluorescence' (gray, dark background): the groups DSB2018 results are reported by."""
    rgb = np.asarray(image, np.float32)
    if rgb.ndim == 3 and np.abs(np.diff(rgb[..., :3], axis=2)).mean() > 1.0:
        return "colour"
    return "brightfield" if np.median(rgb) > 127 else "fluorescence"


# ----------------------------------------------------------------------------- layouts

def detect_layout(path: str | Path) -> str:
    """'dsb2018' for the Kaggle layout (or its root), 'tissue' for images/ + masks/ folders."""
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such folder")
    if (path / "images").is_dir():
        return "tissue"
    if (path / "stage1_train").is_dir() or (path / "stage1_test").is_dir():
        return "dsb2018"
    if any(_is_dsb_sample(sub) for sub in path.iterdir() if sub.is_dir()):
        return "dsb2018"
    raise DataError(f"{path}: neither the DSB2018 layout (<id>/images/<id>.png) nor an "
                    "images/ + masks/ folder pair")


def resolve_kind(folder: str | Path, kind: str = "auto") -> str:
    """The folder's layout; an explicit ``kind`` that does not match it is an error."""
    try:
        detected = detect_layout(folder)
    except DataError:
        if kind == "auto":
            raise
        return kind  # decoding names what is missing
    if kind not in ("auto", detected):
        raise DataError(f"{folder}: this is a {detected} folder, not {kind} "
                        f"(use --kind {detected}, or --kind auto to detect it)")
    return detected


def _is_dsb_sample(folder: Path) -> bool:
    """A Kaggle ``<id>/`` folder: ``images/`` holding an image named after the folder."""
    images = folder / "images"
    return images.is_dir() and any(p.stem == folder.name for p in images.iterdir() if is_image_file(p))


def find_splits(path: str | Path) -> tuple[Path, Path | None]:
    """(training folder, test folder or None) of a dataset root.

    A DSB2018 root gives ``stage1_train`` and ``stage1_test``; any other folder is its own
    training folder (validation is split from it).
    """
    path = Path(path)
    if (path / "stage1_train").is_dir():
        test = path / "stage1_test"
        return path / "stage1_train", test if test.is_dir() else None
    return path, None


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


def _source_files(folder: Path, kind: str) -> list[Path]:
    if kind == "dsb2018":
        files = []
        for sample in _dsb_sources(folder):
            for sub in ("images", "masks"):
                if (sample / sub).is_dir():
                    files += [p for p in (sample / sub).iterdir() if is_image_file(p)]
        files += [d / n for d in (folder, folder.parent) for n in RLE_FILES if (d / n).is_file()]
    else:
        files = [p for sub in ("images", "masks") if (folder / sub).is_dir()
                 for p in (folder / sub).iterdir() if is_image_file(p)]
        if (folder / CLASSES_FILE).is_file():
            files.append(folder / CLASSES_FILE)
    return sorted(files)


def fingerprint(folder: Path, kind: str, settings: dict) -> str:
    """Hash of source names, sizes and mtimes, the settings and the cache format version."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, kind, settings], sort_keys=True).encode())
    for path in _source_files(folder, kind):
        stat = path.stat()
        digest.update(f"{path.relative_to(folder.parent)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


# ----------------------------------------------------------------------------- decoding

def parallel_map(function, items, desc: str, workers: int | None = None, progress: bool = True):
    """``[function(x) for x in items]`` on a thread pool with a progress bar.

    Every item is tried; DataErrors are collected and raised together so that one run names
    every bad file.
    """
    results, problems = [None] * len(items), []
    workers = workers or min(8, (os.cpu_count() or 1) + 2)

    def run(index):
        try:
            return index, function(items[index]), None
        except DataError as error:
            return index, None, error.problems

    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(items), desc=desc, leave=False,
                                                   disable=not progress or not bars_shown()) as bar:
        for index, value, error in pool.map(run, range(len(items))):
            results[index] = value
            problems += error or []
            bar.update()
    if problems:
        raise DataError(problems)
    return results


WHOLE_IMAGE_SHARE = 0.9  # an instance mask covering more of its image is refused (inverted or filled mask)


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
    layers, names, problems = [], [], []
    if mask_files:
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
    elif rle_rows:
        for encoded, rle_shape, where in rle_rows:
            if rle_shape is not None and tuple(rle_shape) != shape:
                problems.append(f"{where}: run-length size {rle_shape[1]}x{rle_shape[0]} differs from the image "
                                f"{images[0]} ({shape[1]}x{shape[0]})")
                continue
            try:
                layers.append(rle_decode(encoded, shape))
            except ValueError as error:
                problems.append(f"{where}: bad run-length labels for {sample.name} ({error})")
                continue
            names.append(where)
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


def _read_classes_file(path: Path) -> list[dict]:
    """Rows of ``classes.csv`` checked line by line: 'name' present, 'index' 0, 1, 2, ... in
    order, 'color' a #rrggbb colour, 'value' a gray level or a #rrggbb colour. Each row keeps
    its "file:line" for later messages."""
    with open(path, newline="") as handle:
        rows = list(csv.DictReader(handle))
    if not rows or "name" not in rows[0]:
        raise DataError(f"{path}: needs a header with at least 'name' (and optional index, value, color)")
    problems = []
    for i, row in enumerate(rows):
        row["where"] = where = f"{path}:{i + 2}"
        if not (row.get("name") or "").strip():
            problems.append(f"{where}: empty class name")
        index = (row.get("index") or "").strip()
        if index and (not index.isdigit() or int(index) != i):
            problems.append(f"{where}: index {index!r} should be {i} (indices run 0, 1, 2, ... in order)")
        for key in ("color", "value"):
            text = (row.get(key) or "").strip()
            if text and not (_is_color(text) or (key == "value" and text.isdigit() and int(text) < 65536)):
                expected = "a #rrggbb colour" if key == "color" else "a gray level (0-65535) or a #rrggbb colour"
                problems.append(f"{where}: {key} {text!r} is not {expected}")
    if problems:
        raise DataError(problems)
    return rows


def _is_color(text: str) -> bool:
    digits = text.strip().lstrip("#")
    return len(digits) == 6 and all(c in "0123456789abcdefABCDEF" for c in digits)


def _parse_color(text: str) -> tuple[int, int, int]:
    text = text.strip().lstrip("#")
    return tuple(int(text[i:i + 2], 16) for i in (0, 2, 4))


def _class_values(rows: list[dict], mode: str) -> list[int]:
    """The mask code of each class of ``classes.csv`` for masks of ``mode``."""
    values, problems = [], []
    for i, row in enumerate(rows):
        text = (row.get("value") or "").strip()
        if mode == "P":
            values.append(int(text) if text.isdigit() else i)
        elif mode == "L" and text.isdigit():
            values.append(int(text))
        elif mode == "RGB" and _is_color(text):
            c = _parse_color(text)
            values.append((c[0] << 16) | (c[1] << 8) | c[2])
        else:
            wanted = "a gray level" if mode == "L" else "a #rrggbb colour"
            problems.append(f"{row['where']}: '{mode}' masks need {wanted} in the 'value' column, found {text!r}")
    if problems:
        raise DataError(problems)
    return values


def _decode_raw_mask(path: Path, mode_wanted: str):
    """(raw 2-D code array, mode, palette or None) of a mask; RGB colours packed to int32."""
    image = open_image(path)
    mode = {"P": "P", "L": "L", "1": "L", "RGB": "RGB", "RGBA": "RGB", "LA": "L", "I;16": "L",
            "I": "L"}.get(image.mode)
    if mode is None or (mode_wanted != "auto" and mode != mode_wanted):
        raise DataError(f"{path}: mask mode '{image.mode}' is not "
                        f"{'P, L or RGB' if mode_wanted == 'auto' else repr(mode_wanted)}")
    palette = None
    if mode == "P":
        palette = np.asarray(image.getpalette() or [], np.uint8).reshape(-1, 3)
        codes = np.asarray(image).astype(np.int32)
    elif mode == "L":
        codes = np.asarray(image.convert("L") if image.mode in ("LA", "1") else image).astype(np.int32)
    else:
        rgb = np.asarray(image.convert("RGB")).astype(np.int32)
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
    return codes, mode, palette


def decode_tissue_pair(pair: tuple[Path, Path | None], mask_mode: str):
    image_path, mask_path = pair
    image = to_rgb(open_image(image_path))
    if mask_path is None:
        return image, None
    codes, mode, palette = _decode_raw_mask(mask_path, mask_mode)
    if codes.shape != image.shape[:2]:
        raise DataError(f"{mask_path}: mask size {codes.shape[1]}x{codes.shape[0]} differs from its image "
                        f"{image.shape[1]}x{image.shape[0]}")
    return image, (codes, mode, palette)


def _tissue_pairs(folder: Path, require_labels: bool) -> list[tuple[Path, Path | None]]:
    if not (folder / "images").is_dir():
        raise DataError(f"{folder / 'images'}: missing folder (a tissue dataset holds images/ and masks/)")
    images = {p.stem: p for p in list_images(folder / "images")}
    masks = {p.stem: p for p in list_images(folder / "masks")} if (folder / "masks").is_dir() else {}
    problems = []
    if not images:
        problems.append(f"{folder / 'images'}: empty folder (no images)")
    if require_labels and not masks:
        problems.append(f"{folder / 'masks'}: missing or empty (no masks)")
    if masks or require_labels:
        problems += [f"{images[s]}: no mask with the stem '{s}' in masks/" for s in sorted(set(images) - set(masks))]
        problems += [f"{masks[s]}: no image with the stem '{s}' in images/" for s in sorted(set(masks) - set(images))]
    if problems:
        raise DataError(problems)
    return [(images[s], masks.get(s)) for s in sorted(images)]


def map_tissue_classes(raw, paths, classes_rows, stray: str, ignore_label: int, min_share: float):
    """Map raw mask codes to class indices for a whole dataset.

    'P' masks: the palette index is the class. 'L' and RGB masks: the gray levels or colours
    named in ``classes.csv`` or, without it, the values holding at least ``min_share`` of all
    pixels, in ascending order. Any other value is a stray: reported with its files and pixel
    counts, then raised (``stray='error'``) or mapped to ``ignore_label`` (``stray='ignore'``).
    Returns (class maps, class names, palette, report lines).
    """
    modes = sorted({mode for _, mode, _ in raw})
    if len(modes) > 1:
        by_mode = {m: [str(p) for p, (_, mode, _) in zip(paths, raw) if mode == m][:3] for m in modes}
        raise DataError([f"masks mix modes {modes}; all masks must share one mode"] +
                        [f"  {m}: {', '.join(files)}" for m, files in by_mode.items()])
    mode = modes[0]
    pixel_counts: dict[int, int] = {}
    for codes, _, _ in raw:
        found, counts = np.unique(codes, return_counts=True)
        for v, c in zip(found.tolist(), counts.tolist()):
            pixel_counts[v] = pixel_counts.get(v, 0) + c
    total = sum(pixel_counts.values())

    if classes_rows:
        names = [row["name"] for row in classes_rows]
        class_values = _class_values(classes_rows, mode)
    else:
        class_values = sorted(v for v, c in pixel_counts.items() if c >= min_share * total)
        if mode == "P":
            class_values = list(range(max(class_values) + 1))
        names = None

    lookup = {v: i for i, v in enumerate(class_values)}
    strays = [v for v in pixel_counts if v not in lookup]
    report = []
    if strays:
        label = {"P": "palette index", "L": "gray value", "RGB": "colour"}[mode]
        for path, (codes, _, _) in zip(paths, raw):
            bad = np.isin(codes, strays)
            if bad.any():
                found, counts = np.unique(codes[bad], return_counts=True)
                detail = ", ".join(f"{_format_code(v, mode)}: {c} px" for v, c in zip(found, counts))
                report.append(f"{path}: {label} outside the classes ({detail})")
        if stray == "error":
            raise DataError(report + ["set stray='ignore' (CLI: --stray ignore) to map these pixels "
                                      "to the ignore label, or list the classes in classes.csv"])
        report.append(f"{len(report)} masks hold stray values: mapped to the ignore label {ignore_label}")

    table_size = (1 << 24) if mode == "RGB" else 1 << 16
    table = np.full(table_size, ignore_label, np.uint8)
    for v, i in lookup.items():
        table[v] = i
    masks = [table[codes] for codes, _, _ in raw]

    if names is None:
        names = [f"class {i}" if mode == "P" else f"class {i} ({_format_code(v, mode)})"
                 for i, v in enumerate(class_values)]
    palette = DEFAULT_COLORS[np.arange(len(class_values)) % len(DEFAULT_COLORS)].copy()
    if mode == "P" and raw[0][2] is not None and len(raw[0][2]) >= len(class_values):
        palette = raw[0][2][: len(class_values)].copy()
    elif mode == "RGB":
        palette = np.array([[(v >> 16) & 255, (v >> 8) & 255, v & 255] for v in class_values], np.uint8)
    if classes_rows and all(row.get("color") for row in classes_rows):
        palette = np.array([_parse_color(row["color"]) for row in classes_rows], np.uint8)
    return masks, names, palette, report


def _format_code(value: int, mode: str) -> str:
    return f"#{int(value):06x}" if mode == "RGB" else str(int(value))


# ----------------------------------------------------------------------------- cache

def _pack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.reshape(-1, *a.shape[2:]) for a in arrays])


def _unpack(flat: np.ndarray, index: np.ndarray) -> list[np.ndarray]:
    return [flat[o:o + h * w].reshape(h, w, *flat.shape[1:]) for o, h, w in index]


def _cache_dir(npy_dir: Path, folder: Path, kind: str) -> Path:
    tag = hashlib.sha1(str(folder.resolve()).encode()).hexdigest()[:8]
    return npy_dir / f"{kind}-{folder.name}-{tag}"


def file_crc32(path: Path, chunk: int = 1 << 24) -> int:
    """CRC-32 of a whole file, read in 16 MiB chunks (about 1 GB/s)."""
    crc = 0
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            crc = zlib.crc32(block, crc)
    return crc


_VERIFIED: set[tuple] = set()  # cache files whose checksum this process has verified (path, size, mtime)


def _verified(path: Path, expected_crc: int) -> bool:
    """Whether ``path`` has the CRC-32 recorded at write time; checked once per process and file
    version (a file changed in place gets a new mtime and is checked again)."""
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, expected_crc)
    if key not in _VERIFIED:
        if file_crc32(path) != expected_crc:
            return False
        _VERIFIED.add(key)
    return True


def _read_cache(cache: Path, expected_fingerprint: str) -> Dataset | None:
    """The cached dataset, or None when absent, stale, truncated or corrupt (size, header or
    checksum)."""
    try:
        meta = json.loads((cache / "meta.json").read_text())
        if meta.get("fingerprint") != expected_fingerprint:
            return None
        arrays = {}
        for name, info in meta["files"].items():
            path = cache / f"{name}.npy"
            if path.stat().st_size != info["bytes"] or not _verified(path, info["crc32"]):
                return None
            arrays[name] = np.load(path, mmap_mode="r", allow_pickle=False)
            if list(arrays[name].shape) != info["shape"] or str(arrays[name].dtype) != info["dtype"]:
                return None
    except (OSError, ValueError, KeyError, TypeError, json.JSONDecodeError):
        return None
    index = np.asarray(arrays["index"])
    unpack = lambda name: _unpack(arrays[name], index) if name in arrays else None  # noqa: E731
    return Dataset(meta["kind"], meta["ids"], unpack("images"), unpack("masks"), unpack("instances"),
                   meta["class_names"], np.array(meta["palette"], np.uint8), meta["source"], meta["report"])


def _write_cache(cache: Path, dataset: Dataset, fp: str) -> None:
    """Write all arrays into a fresh folder, then swap it into place."""
    cache.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{cache.name}.", dir=cache.parent))
    try:
        index = np.zeros((len(dataset), 3), np.int64)
        offsets = np.cumsum([0] + [im.shape[0] * im.shape[1] for im in dataset.images])
        index[:, 0] = offsets[:-1]
        index[:, 1:] = [im.shape[:2] for im in dataset.images]
        arrays = {"index": index, "images": _pack(dataset.images)}
        if dataset.masks is not None:
            arrays["masks"] = _pack(dataset.masks)
        if dataset.instances is not None:
            arrays["instances"] = _pack(dataset.instances)
        files = {}
        for name, array in arrays.items():
            np.save(tmp / f"{name}.npy", array, allow_pickle=False)
            files[name] = {"bytes": (tmp / f"{name}.npy").stat().st_size, "shape": list(array.shape),
                           "dtype": str(array.dtype), "crc32": file_crc32(tmp / f"{name}.npy")}
        meta = {"fingerprint": fp, "kind": dataset.kind, "ids": dataset.ids, "files": files,
                "class_names": dataset.class_names, "palette": np.asarray(dataset.palette).tolist(),
                "source": dataset.source, "report": dataset.report}
        (tmp / "meta.json").write_text(json.dumps(meta))
        old = cache.with_name(f".{cache.name}.old")
        shutil.rmtree(old, ignore_errors=True)
        if cache.exists():
            os.replace(cache, old)
        os.replace(tmp, cache)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------- loading

def decode_dataset(folder: str | Path, kind: str = "auto", *, mask_mode: str = "auto", stray: str = "error",
                   ignore_label: int = 255, min_class_share: float = 0.0005, require_labels: bool = True,
                   progress: bool = True) -> Dataset:
    """Decode a dataset folder from its source files (no cache)."""
    folder = Path(folder)
    kind = resolve_kind(folder, kind)
    if kind == "dsb2018":
        folder = find_splits(folder)[0]
        samples = _dsb_sources(folder)
        table = _rle_tables(folder)
        decoded = parallel_map(lambda s: decode_dsb_sample(s, table.get(s.name), require_labels), samples,
                               f"decoding {folder.name}", progress=progress)
        ids = [s.name for s in samples]
        images = [image for image, _, _ in decoded]
        labelled = [inst is not None for _, inst, _ in decoded]
        if any(labelled) and not all(labelled):
            missing = [str(s) for s, ok in zip(samples, labelled) if not ok]
            raise DataError([f"{m}: image without masks" for m in missing])
        instances = [inst for _, inst, _ in decoded] if all(labelled) else None
        masks = None if instances is None else [(inst > 0).astype(np.uint8) for inst in instances]
        notes = [note for _, _, sample_notes in decoded for note in sample_notes]
        if notes:
            notes.append(f"{len(notes)} mask(s) without pixels of their own were left out (listed above)")
        return Dataset(kind, ids, images, masks, instances, source=str(folder), report=notes)
    if kind != "tissue":
        raise ValueError(f"unknown dataset kind {kind!r} (use 'dsb2018' or 'tissue')")
    if mask_mode not in ("auto", "P", "L", "RGB") or stray not in ("error", "ignore"):
        raise ValueError("mask_mode must be auto/P/L/RGB and stray error/ignore")
    pairs = _tissue_pairs(folder, require_labels)
    classes_rows = _read_classes_file(folder / CLASSES_FILE) if (folder / CLASSES_FILE).is_file() else None
    decoded = parallel_map(lambda pair: decode_tissue_pair(pair, mask_mode), pairs,
                           f"decoding {folder.name}", progress=progress)
    ids = [image_path.stem for image_path, _ in pairs]
    images = [image for image, _ in decoded]
    raw = [r for _, r in decoded]
    if any(r is None for r in raw):
        return Dataset(kind, ids, images, None, class_names=[r["name"] for r in classes_rows or []],
                       source=str(folder))
    masks, names, palette, report = map_tissue_classes(raw, [m for _, m in pairs], classes_rows, stray,
                                                       ignore_label, min_class_share)
    return Dataset(kind, ids, images, masks, None, names, palette, str(folder), report)


def load_dataset(folder: str | Path, kind: str = "auto", *, npy_dir: str | Path = "npy", mask_mode: str = "auto",
                 stray: str = "error", ignore_label: int = 255, min_class_share: float = 0.0005,
                 require_labels: bool = True, progress: bool = True, verbose: bool = True) -> Dataset:
    """Load a dataset through the NPY cache, rebuilding it when sources or settings changed."""
    folder = Path(folder)
    kind = resolve_kind(folder, kind)
    if kind == "dsb2018":
        folder = find_splits(folder)[0]
    settings = dict(mask_mode=mask_mode, stray=stray, ignore_label=ignore_label, min_class_share=min_class_share)
    fp = fingerprint(folder, kind, settings if kind == "tissue" else {})
    cache = _cache_dir(Path(npy_dir), folder, kind)
    dataset = _read_cache(cache, fp)
    if dataset is not None:
        if verbose:
            print(f"cache hit: {cache}")
    else:
        if verbose:
            print(f"building cache {cache} from {folder}")
        decoded = decode_dataset(folder, kind, mask_mode=mask_mode, stray=stray, ignore_label=ignore_label,
                                 min_class_share=min_class_share, require_labels=False, progress=progress)
        try:
            _write_cache(cache, decoded, fp)
        except OSError as error:
            raise DataError(f"{cache.parent}: cannot write the NPY cache ({error.strerror or error}); "
                            "choose a writable folder (--npy-dir, or npy_dir in the config)") from None
        dataset = _read_cache(cache, fp)
        if dataset is None:
            raise RuntimeError(f"{cache}: cache written but cannot be read back")
    if require_labels and dataset.masks is None:
        raise DataError(f"{folder}: no labels (no masks and no run-length rows); "
                        "pass require_labels=False to load images only")
    return dataset


def check_dataset(folder: str | Path, kind: str = "auto", **options) -> list[Dataset]:
    """Decode every file of a dataset (for a DSB2018 root, train and test); raise a DataError
    naming each bad file, else return the decoded datasets."""
    folder = Path(folder)
    kind = resolve_kind(folder, kind)
    datasets, problems = [], []
    train, test = find_splits(folder) if kind == "dsb2018" else (folder, None)
    for part, part_options in ((train, options), (test, {**options, "require_labels": False})):
        if part is None:
            continue
        try:
            datasets.append(decode_dataset(part, kind, **part_options))
        except DataError as error:
            problems += error.problems
    if problems:
        raise DataError(problems)
    return datasets


def image_modes(folder: str | Path) -> dict[str, int]:
    """Counts of the PIL modes of a dataset's image files (for summaries)."""
    folder = Path(folder)
    paths = (list(folder.glob("*/images/*")) + list(folder.glob("stage1_*/*/images/*"))
             + (list_images(folder / "images") if (folder / "images").is_dir() else []))
    modes: dict[str, int] = {}
    for path in paths:
        if is_image_file(path):
            with Image.open(path) as image:
                modes[image.mode] = modes.get(image.mode, 0) + 1
    return modes


def load_from_config(config, folder: str | Path | None = None, require_labels: bool = True,
                     progress: bool = True) -> Dataset:
    """``load_dataset`` with the data settings of a :class:`~unet.config.Config`."""
    return load_dataset(folder or config.data_dir, config.kind, npy_dir=config.npy_dir, mask_mode=config.mask_mode,
                        stray=config.stray, ignore_label=config.ignore_label, min_class_share=config.min_class_share,
                        require_labels=require_labels, progress=progress)


def load_folder(path: str | Path, config, require_labels: bool = False) -> Dataset:
    """The images (and labels, when present) of any folder: a DSB2018 root (its stage1_test,
    else stage1_train), a dataset folder in either layout, or a plain folder of images."""
    path = Path(path)
    try:
        layout = detect_layout(path)
    except DataError:
        if require_labels:
            raise
        layout = None
    if layout is None:
        files = list_images(path)
        if not files:
            raise DataError(f"{path}: no images to predict")
        return Dataset(config.kind, [p.stem for p in files], [read_rgb(p) for p in files], None, source=str(path))
    if layout == "dsb2018":  # a root: its stage1_test, else its stage1_train
        path = next((p for p in (path / "stage1_test", path / "stage1_train") if p.is_dir()), path)
    return load_from_config(config.replace(kind=layout), path, require_labels=require_labels)


def split_for_training(dataset: Dataset, config) -> tuple[Dataset, Dataset]:
    """(training, validation) as the config says: the ids listed in ``config.val_list`` (a text
    file, one id per line, '#' comments), else a seeded ``val_fraction`` split."""
    if not config.val_list:
        return dataset.split(config.val_fraction, config.seed)
    path = Path(config.val_list)
    if not path.is_file():
        raise DataError(f"{path}: no such validation list (val_list)")
    lines = (line.split("#", 1)[0].strip() for line in path.read_text().splitlines())
    return dataset.split_by_ids([line for line in lines if line])
