"""Image/mask folder pairs (``images/`` + ``masks/``, same file names): palette ('P'), gray
('L') or RGB masks, classes from ``classes.csv`` or found in the masks, strays reported."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from .dataset import DEFAULT_COLORS, Dataset
from .io import DataError, is_image_file, list_images, open_image, to_rgb
from .progress import parallel_map

KIND = "tissue"
SETTINGS = ("mask_mode", "stray", "ignore_label", "min_class_share")  # part of the cache fingerprint
CLASSES_FILE = "classes.csv"


def is_layout(folder: Path) -> bool:
    return (folder / "images").is_dir()


def source_files(folder: Path) -> list[Path]:
    """Every file the decoded dataset depends on (for the cache fingerprint)."""
    files = [p for sub in ("images", "masks") if (folder / sub).is_dir()
             for p in (folder / sub).iterdir() if is_image_file(p)]
    if (folder / CLASSES_FILE).is_file():
        files.append(folder / CLASSES_FILE)
    return sorted(files)


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
    report = _stray_report(raw, paths, [v for v in pixel_counts if v not in lookup], mode)
    if report:
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
    return masks, names, _class_palette(class_values, mode, raw[0][2], classes_rows), report


def _stray_report(raw, paths, strays: list[int], mode: str) -> list[str]:
    """One line per mask holding values outside the classes, with their pixel counts."""
    if not strays:
        return []
    label, report = {"P": "palette index", "L": "gray value", "RGB": "colour"}[mode], []
    for path, (codes, _, _) in zip(paths, raw):
        bad = np.isin(codes, strays)
        if bad.any():
            found, counts = np.unique(codes[bad], return_counts=True)
            detail = ", ".join(f"{_format_code(v, mode)}: {c} px" for v, c in zip(found, counts))
            report.append(f"{path}: {label} outside the classes ({detail})")
    return report


def _class_palette(class_values: list[int], mode: str, mask_palette, classes_rows) -> np.ndarray:
    """The classes' colours: from classes.csv, else the masks' own palette or RGB colours, else defaults."""
    if classes_rows and all(row.get("color") for row in classes_rows):
        return np.array([_parse_color(row["color"]) for row in classes_rows], np.uint8)
    if mode == "P" and mask_palette is not None and len(mask_palette) >= len(class_values):
        return mask_palette[: len(class_values)].copy()
    if mode == "RGB":
        return np.array([[(v >> 16) & 255, (v >> 8) & 255, v & 255] for v in class_values], np.uint8)
    return DEFAULT_COLORS[np.arange(len(class_values)) % len(DEFAULT_COLORS)].copy()


def _format_code(value: int, mode: str) -> str:
    return f"#{int(value):06x}" if mode == "RGB" else str(int(value))


def decode(folder: Path, *, mask_mode: str = "auto", stray: str = "error", ignore_label: int = 255,
           min_class_share: float = 0.0005, require_labels: bool = True, progress: bool = True) -> Dataset:
    """Decode an images/ + masks/ folder (no cache)."""
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
        return Dataset(KIND, ids, images, None, class_names=[r["name"] for r in classes_rows or []],
                       source=str(folder))
    masks, names, palette, report = map_tissue_classes(raw, [m for _, m in pairs], classes_rows, stray,
                                                       ignore_label, min_class_share)
    return Dataset(KIND, ids, images, masks, None, names, palette, str(folder), report)
