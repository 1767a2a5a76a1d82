"""Kaggle run-length encoding: 1-based pixel starts, column-major order, "start length" pairs."""

from __future__ import annotations

import csv
from collections import defaultdict
from pathlib import Path

import numpy as np

from .io import DataError


def rle_decode(encoded: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode one run-length string into a boolean mask of ``shape`` (height, width)."""
    values = np.asarray(encoded.split(), dtype=np.int64)
    if values.size % 2:
        raise ValueError("odd number of values in run-length string")
    starts, lengths = values[0::2] - 1, values[1::2]
    size = shape[0] * shape[1]
    if values.size and (starts.min() < 0 or (starts + lengths).max() > size or lengths.min() < 1):
        raise ValueError(f"run outside an image of {shape[0]}x{shape[1]} pixels")
    flat = np.zeros(size + 1, np.int32)
    np.add.at(flat, starts, 1)
    np.add.at(flat, starts + lengths, -1)
    return np.cumsum(flat[:-1]).reshape(shape[1], shape[0]).T > 0


def rle_encode(mask: np.ndarray) -> str:
    """Encode a 2-D mask (nonzero = on) as a run-length string."""
    flat = np.concatenate([[0], np.asarray(mask).T.ravel() != 0, [0]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(flat)) + 1
    starts, ends = edges[0::2], edges[1::2]
    return " ".join(f"{s} {e - s}" for s, e in zip(starts, ends))


def read_rle_csv(path: str | Path) -> dict[str, list[tuple[str, tuple[int, int] | None, str]]]:
    """Rows of ``stage1_solution.csv`` or ``stage1_train_labels.csv`` grouped by image id.

    Each entry is (run-length string, (height, width) when the file gives it, "file:line").
    A row that is not a list of integers names its file and line.
    """
    rows: dict[str, list] = defaultdict(list)
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        if not reader.fieldnames or not {"ImageId", "EncodedPixels"} <= set(reader.fieldnames):
            raise DataError(f"{path}: not a run-length CSV (needs ImageId and EncodedPixels columns)")
        for line, row in enumerate(reader, start=2):
            where = f"{path}:{line}"
            shape = None
            if row.get("Height") and row.get("Width"):
                try:
                    shape = (int(row["Height"]), int(row["Width"]))
                except ValueError:
                    raise DataError(f"{where}: Height/Width are not integers") from None
            encoded = (row["EncodedPixels"] or "").strip()
            if not encoded:
                continue
            parts = encoded.split()
            if not all(part.isdigit() for part in parts):
                raise DataError(f"{where}: EncodedPixels must be positive integers (start length ...)")
            if len(parts) % 2:
                raise DataError(f"{where}: EncodedPixels holds an odd number of values (start length pairs)")
            rows[row["ImageId"]].append((encoded, shape, where))
    return dict(rows)


def rle_encode_labels(labels: np.ndarray) -> dict[int, str]:
    """Run-length strings of every nonzero label of an instance map, in one pass over the pixels."""
    flat = np.asarray(labels).T.ravel()
    change = np.flatnonzero(np.diff(flat)) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [flat.size]]))
    values = flat[starts]
    runs: dict[int, list[str]] = {}
    for value, start, length in zip(values.tolist(), starts.tolist(), lengths.tolist()):
        if value:
            runs.setdefault(value, []).append(f"{start + 1} {length}")
    return {value: " ".join(parts) for value, parts in sorted(runs.items())}
