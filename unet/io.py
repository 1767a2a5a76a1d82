"""File helpers shared by every stage: atomic writes and image reading."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image

IMAGE_SUFFIXES = {".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp"}
_UMASK = os.umask(0)
os.umask(_UMASK)


class DataError(ValueError):
    """Bad input data. The message names each offending file and what is wrong with it."""

    def __init__(self, problems: str | list[str]):
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        super().__init__("\n".join(self.problems))


@contextlib.contextmanager
def atomic_path(path: str | Path, suffix: str | None = None):
    """Yield a temporary path beside ``path`` (ending in ``suffix``, default the path's own, for
    writers that check it); move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix if suffix is None else suffix,
                               dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text)


def save_png(path: str | Path, array: np.ndarray, palette: np.ndarray | None = None) -> None:
    """Write a PNG atomically: uint8 gray/RGB/RGBA, uint16 gray, or a 'P' image with ``palette``."""
    if palette is not None:
        image = Image.fromarray(np.asarray(array, np.uint8), mode="P")
        flat = np.zeros((256, 3), np.uint8)
        flat[: len(palette)] = palette
        image.putpalette(flat.ravel().tolist())
    elif array.dtype == np.uint16:
        image = Image.fromarray(array)
    else:
        image = Image.fromarray(np.asarray(array, np.uint8))
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def is_image_file(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")


def list_images(folder: str | Path) -> list[Path]:
    """Image files of a folder, sorted; other files (``.DS_Store``, notes) are ignored."""
    return sorted(p for p in Path(folder).iterdir() if is_image_file(p))


def open_image(path: str | Path) -> Image.Image:
    """Open and fully decode an image, turning any decoder failure into a DataError."""
    try:
        image = Image.open(path)
        image.load()
    except Exception as error:  # PIL raises many types for truncated or foreign files
        raise DataError(f"{path}: unreadable or corrupt image ({error})") from None
    return image


def to_rgb(image: Image.Image | np.ndarray) -> np.ndarray:
    """RGBA, RGB, palette, gray and 16-bit images as an RGB uint8 array.

    Alpha is dropped, gray is replicated, 16-bit data is rescaled linearly from its own
    range (min..max) to 0..255.
    """
    if isinstance(image, Image.Image):
        if image.mode in ("P", "PA", "LA", "CMYK", "YCbCr", "1"):
            image = image.convert("RGBA" if "A" in image.mode else "RGB")
        array = np.asarray(image)
    else:
        array = np.asarray(image)
    if array.ndim == 3 and array.shape[2] == 4:
        array = array[..., :3]
    if array.dtype != np.uint8:
        array = array.astype(np.float64)
        low, high = float(array.min()), float(array.max())
        scale = 255.0 / (high - low) if high > low else 0.0
        array = np.round((array - low) * scale).astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=2)
    elif array.shape[2] == 1:
        array = np.repeat(array, 3, axis=2)
    return np.ascontiguousarray(array[..., :3])


def read_rgb(path: str | Path) -> np.ndarray:
    return to_rgb(open_image(path))


def write_csv(path: str | Path, rows: list[dict], header: list[str]) -> None:
    """A CSV file with a header row, written atomically."""
    import csv

    with atomic_path(path) as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header)
        writer.writeheader()
        writer.writerows(rows)


PREDICTION_MARKER = "prediction.json"


def claim_output_folder(out: str | Path, inputs, description: dict | None = None) -> Path:
    """Make ``out`` ready for predictions (marked with ``description``), or refuse it with a
    DataError; without ``description`` only check, creating nothing.

    Refused: a folder that is, contains or lies inside one of the ``inputs`` (writing there
    would overwrite or mix with the data), and a folder holding ``images/`` or a ``masks/`` that
    this project did not write (ground truth). A folder it wrote before is marked by
    ``prediction.json`` (``description``) and may be written again.
    """
    import json

    out = Path(out)
    resolved = out.resolve()
    for folder in inputs:
        folder = Path(folder).resolve()
        if resolved == folder or folder in resolved.parents or resolved in folder.parents:
            raise DataError(f"{out}: predictions must go to a folder outside the input folder {folder}")
    if out.exists() and not out.is_dir():
        raise DataError(f"{out}: exists and is not a folder")
    ours = (out / PREDICTION_MARKER).is_file()
    if (out / "images").is_dir() or ((out / "masks").is_dir() and not ours):
        raise DataError(f"{out}: holds images/ or masks/ that predict did not write (a dataset?); "
                        "choose an empty or new output folder")
    if description is None:
        return out
    out.mkdir(parents=True, exist_ok=True)
    write_text_atomic(out / PREDICTION_MARKER, json.dumps(description, indent=2) + "\n")
    return out
