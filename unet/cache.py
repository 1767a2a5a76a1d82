"""The NPY cache of a decoded dataset: flat memory-mapped arrays, a fingerprint of the source
files and settings, and a CRC-32 per array. A stale, truncated or corrupt cache is rebuilt,
never served; a new cache is written beside the old one and swapped in."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import zlib
from pathlib import Path

import numpy as np

from .dataset import Dataset

CACHE_VERSION = 3


def fingerprint(folder: Path, kind: str, settings: dict, files: list[Path]) -> str:
    """Hash of the source files' names, sizes and mtimes, the settings and the cache format version."""
    digest = hashlib.sha256(json.dumps([CACHE_VERSION, kind, settings], sort_keys=True).encode())
    for path in files:
        stat = path.stat()
        digest.update(f"{path.relative_to(folder.parent)}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()


def _pack(arrays: list[np.ndarray]) -> np.ndarray:
    return np.concatenate([a.reshape(-1, *a.shape[2:]) for a in arrays])


def _unpack(flat: np.ndarray, index: np.ndarray) -> list[np.ndarray]:
    return [flat[o:o + h * w].reshape(h, w, *flat.shape[1:]) for o, h, w in index]


def cache_dir(npy_dir: Path, folder: Path, kind: str) -> Path:
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


def read_cache(cache: Path, expected_fingerprint: str) -> Dataset | None:
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


def write_cache(cache: Path, dataset: Dataset, fp: str) -> None:
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
