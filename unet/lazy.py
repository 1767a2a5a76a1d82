"""Images larger than memory, read lazily: one reader for TIFF / OME-TIFF (``tifffile`` as a
zarr store), zarr and OME-Zarr arrays, and ordinary PNG/JPEG files.

``open_lazy(path)`` gives a Dask array of the image as the in-memory readers give it (H x W x 3,
uint8: alpha dropped, gray replicated, 16-bit rescaled from the image's own range), read chunk
by chunk when it is computed. Pyramids (OME-TIFF sub-resolutions, OME-Zarr multiscales) give
the level asked for; level 0 is full resolution.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .io import DataError, read_rgb

TIFF_SUFFIXES = (".tif", ".tiff")
CHUNK = 2048  # chunk side of images read without chunks of their own (PNG/JPEG)


def open_lazy(path: str | Path, level: int = 0):
    """The image at ``path`` as a Dask array (H, W, 3) uint8; see the module's note."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such image")
    suffix = path.suffix.lower()
    try:
        if suffix == ".zarr" or (path / "zarr.json").is_file() or (path / ".zarray").is_file():
            array, axes = _open_zarr(path, level)
        elif suffix in TIFF_SUFFIXES:
            array, axes = _open_tiff(path, level)
        else:
            import dask.array as da

            return da.from_array(read_rgb(path), chunks=(CHUNK, CHUNK, 3))
    except DataError:
        raise
    except Exception as error:  # tifffile, zarr and numcodecs raise many types for broken files
        raise DataError(f"{path}: unreadable or truncated image ({type(error).__name__}: {error})") from None
    return _as_rgb(path, array, axes)


def _open_tiff(path: Path, level: int):
    import tifffile
    import zarr

    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its damaged-tag messages: our one line says it
    with tifffile.TiffFile(path) as tiff:
        series = tiff.series[0]
        levels, axes = len(series.levels), series.axes
        size = path.stat().st_size
        for page in series.pages:  # a truncated file: tags lost, or image data past its end
            if page is None or not page.dataoffsets or not any(page.databytecounts) or any(
                    offset + count > size for offset, count in zip(page.dataoffsets, page.databytecounts)):
                raise DataError(f"{path}: truncated TIFF (image data missing or past the end of the file, "
                                f"{size} bytes)")
    if level >= levels:
        raise DataError(f"{path}: pyramid level {level} asked for, the file has {levels}")
    store = tifffile.imread(path, aszarr=True, level=level)
    return zarr.open(store, mode="r"), axes


def _open_zarr(path: Path, level: int):
    """A zarr array, or the level of an OME-Zarr multiscale image (``multiscales`` metadata)."""
    import zarr

    node = zarr.open(str(path), mode="r")
    if isinstance(node, zarr.Array):
        return node, _guess_axes(node.shape)
    attributes = dict(node.attrs)
    multiscales = attributes.get("multiscales") or attributes.get("ome", {}).get("multiscales")
    if not multiscales:
        raise DataError(f"{path}: a zarr group without OME-Zarr 'multiscales' metadata (give the array itself)")
    datasets = multiscales[0]["datasets"]
    if level >= len(datasets):
        raise DataError(f"{path}: pyramid level {level} asked for, the image has {len(datasets)}")
    axes = "".join(axis["name"] if isinstance(axis, dict) else axis for axis in multiscales[0].get("axes", []))
    array = node[datasets[level]["path"]]
    return array, axes.upper() or _guess_axes(array.shape)


class _NamedReader:
    """An array whose reads raise a DataError naming the file (a chunk that is corrupt or missing
    on disk is found when it is read, chunk by chunk)."""

    def __init__(self, array, path: Path):
        self.array, self.path = array, path
        self.shape, self.dtype, self.ndim = tuple(array.shape), np.dtype(array.dtype), len(array.shape)

    def __getitem__(self, index):
        try:
            return np.asarray(self.array[index])
        except Exception as error:  # decoders raise many types
            raise DataError(f"{self.path}: unreadable or truncated image data ({type(error).__name__}: "
                            f"{error})") from None


def _guess_axes(shape) -> str:
    """'YX', 'YXS' (channels last), 'CYX' (channels first, at most 4) or 'ZYX' for an array without axes."""
    if len(shape) == 2:
        return "YX"
    if len(shape) == 3:
        return "YXS" if shape[2] <= 4 else "CYX" if shape[0] <= 4 else "ZYX"  # ZYX: a stack of planes
    return "?" * len(shape)


def _as_rgb(path: Path, array, axes: str):
    """(H, W, 3) uint8 Dask array of an array with named axes; singleton T/Z/C axes are dropped."""
    import dask.array as da

    axes = axes.upper().replace("S", "C")
    if len(axes) != array.ndim:
        raise DataError(f"{path}: {array.ndim}-D array with axes {axes!r}: cannot tell height and width")
    extra = [i for i, axis in enumerate(axes) if axis not in "YXC"]
    if any(array.shape[i] != 1 for i in extra) or "Y" not in axes or "X" not in axes:
        raise DataError(f"{path}: not a 2-D image (shape {tuple(array.shape)}, axes {axes}); "
                        "give one plane of a stack or time series")
    if array.dtype.kind not in "ui" or array.dtype.itemsize > 2:
        raise DataError(f"{path}: {array.dtype} pixels; images are 8- or 16-bit integers")
    chunks = getattr(array, "chunks", None) or tuple(min(n, CHUNK) for n in array.shape)
    image = da.from_array(_NamedReader(array, path), chunks=chunks, asarray=True, fancy=False)
    image = image[tuple(0 if i in extra else slice(None) for i in range(array.ndim))]
    kept = [axis for axis in axes if axis in "YXC"]
    image = da.transpose(image, [kept.index(a) for a in "YXC" if a in kept])
    if "C" not in kept:
        image = image[..., None]
    if image.shape[2] not in (1, 3, 4):
        raise DataError(f"{path}: {image.shape[2]} channels; images have 1 (gray), 3 (RGB) or 4 (RGBA)")
    image = image[..., :3] if image.shape[2] >= 3 else da.repeat(image, 3, axis=2)
    if image.dtype != np.uint8:  # 16-bit: rescaled from the image's own range, as io.to_rgb does
        low, high = (float(v) for v in da.compute(image.min(), image.max()))
        scale = 255.0 / (high - low) if high > low else 0.0
        image = da.round((image.astype(np.float64) - low) * scale).astype(np.uint8)
    return image
