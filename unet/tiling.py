"""Sliding-window prediction of images of any size, for any predictor of batches.

``predict_tiled(predict_fn, image)`` cuts a normalised image into overlapping tiles, calls
``predict_fn`` on batches of them (N x h x w x C in, N x h x w x K out) and blends the
results. Test-time augmentation is a wrapper around the predictor (:func:`with_tta`), as
MONAI's sliding-window inferer takes any predictor.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
from tqdm.auto import tqdm

from .progress import bars_shown

Predictor = Callable[[np.ndarray], np.ndarray]
DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]


def model_stride(model) -> int:
    """The size multiple a model needs (2**depth for the U-Net, 1 for anything without a SizeCheck)."""
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "multiple"):
            return int(layer.multiple)
    return 1


def model_predictor(model) -> Predictor:
    """A Keras model as a predictor: float32 probabilities of a batch."""
    def predict(batch: np.ndarray) -> np.ndarray:
        return np.asarray(model.predict_on_batch(np.ascontiguousarray(batch)), np.float32)

    return predict


def with_tta(predict_fn: Predictor) -> Predictor:
    """The mean of ``predict_fn`` over the 8 flips and 90-degree rotations of each batch."""
    def predict(batch: np.ndarray) -> np.ndarray:
        total = None
        for k, flip in DIHEDRAL:
            view = np.rot90(np.flip(batch, axis=2) if flip else batch, k, axes=(1, 2))
            out = np.rot90(predict_fn(np.ascontiguousarray(view)), -k, axes=(1, 2))
            out = np.flip(out, axis=2) if flip else out
            total = out if total is None else total + out
        return total / len(DIHEDRAL)

    return predict


def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def _axis_weights(tile: int, start: int, length: int, margin: int, ramp: int) -> np.ndarray:
    """1-D blending weights of one tile: zero within ``margin`` of an edge that lies inside the
    image, then a raised-cosine ramp of ``ramp`` pixels up to 1; image edges get full weight."""
    weights = np.ones(tile, np.float64)
    ramp_up = np.sin(np.linspace(0, np.pi / 2, ramp + 2)[1:-1]) ** 2 if ramp else np.zeros(0)
    if start > 0:
        weights[:margin] = 0
        weights[margin:margin + ramp] = ramp_up
    if start + tile < length:
        weights[tile - margin:] = 0
        weights[tile - margin - ramp:tile - margin] = np.minimum(weights[tile - margin - ramp:tile - margin],
                                                                 ramp_up[::-1])
    return weights


def tile_layout(height: int, width: int, tile_size: int, overlap: float, stride: int = 1) -> dict:
    """Where ``predict_tiled`` cuts an image: the padded size, the tile size, the tiles' top-left
    corners and the blending margin and ramp (pixels)."""
    if tile_size % stride:
        raise ValueError(f"tile_size {tile_size} is not a multiple of the model stride {stride}")
    padded_h, padded_w = (math.ceil(s / stride) * stride for s in (height, width))
    tile_h, tile_w = min(tile_size, padded_h), min(tile_size, padded_w)
    overlap_px = int(round(overlap * tile_size))
    step = max(stride, (tile_size - overlap_px) // stride * stride)
    starts = [(y, x) for y in _tile_starts(padded_h, tile_h, step) for x in _tile_starts(padded_w, tile_w, step)]
    return {"padded": (padded_h, padded_w), "tile": (tile_h, tile_w), "starts": starts,
            "margin": overlap_px // 4, "ramp": overlap_px // 2}


def predict_tiled(predict_fn: Predictor, image: np.ndarray, tile_size: int = 256, overlap: float = 0.25,
                  batch_size: int = 4, stride: int = 1, progress: bool = False) -> np.ndarray:
    """Probabilities (H, W, K) of an already normalised image (H, W[, C]) of any size.

    The image is mirror-padded to the predictor's ``stride`` and cut into overlapping tiles (a
    single pass when it fits in one tile). Each tile's weight is zero within overlap/4 of an
    inner edge and ramps smoothly to 1, so seams are blended and, when overlap/4 covers the
    model's receptive field, the result equals the untiled prediction.
    """
    x = np.asarray(image, np.float32)
    x = x[..., None] if x.ndim == 2 else x
    height, width = x.shape[:2]
    layout = tile_layout(height, width, tile_size, overlap, stride)
    padded = pad_to_layout(x, layout)
    return blend_tiles(source_tiles(predict_fn, padded, (0, 0), layout), layout, (0, height, 0, width), batch_size,
                       progress)


def pad_to_layout(x: np.ndarray, layout: dict, size: tuple[int, int] | None = None, bottom: bool = True,
                  right: bool = True) -> np.ndarray:
    """``x`` mirror-padded at the bottom and right as the layout pads the whole image of ``size``
    (default: x's own size); a window of the image is padded only at the edges it shares with it."""
    height, width = size or x.shape[:2]
    pad_h = layout["padded"][0] - height if bottom else 0
    pad_w = layout["padded"][1] - width if right else 0
    mode = "reflect" if min(x.shape[:2]) > 1 else "edge"
    return np.pad(x, ((0, pad_h), (0, pad_w), (0, 0)), mode=mode)


def tiles_for_window(layout: dict, window: tuple[int, int, int, int]) -> list[tuple[int, int]]:
    """The tiles of ``layout`` whose weight is nonzero somewhere in ``window`` (y0, y1, x0, x1),
    in the layout's order."""
    (tile_h, tile_w), margin, (padded_h, padded_w) = layout["tile"], layout["margin"], layout["padded"]
    y0, y1, x0, x1 = window

    def reaches(start, tile, length, low, high):
        first = start + (margin if start > 0 else 0)
        last = start + tile - (margin if start + tile < length else 0)
        return first < high and last > low

    return [(y, x) for y, x in layout["starts"]
            if reaches(y, tile_h, padded_h, y0, y1) and reaches(x, tile_w, padded_w, x0, x1)]


def source_tiles(predict_fn: Predictor, source: np.ndarray, origin: tuple[int, int], layout: dict):
    """The predictions of a batch of the layout's tiles (their top-left corners), cut from
    ``source``: the normalised, padded image from ``origin`` (its top-left corner in image
    coordinates)."""
    tile_h, tile_w = layout["tile"]

    def predict(starts: list[tuple[int, int]]) -> np.ndarray:
        return predict_fn(np.stack([source[y - origin[0]:y - origin[0] + tile_h, x - origin[1]:x - origin[1] + tile_w]
                                    for y, x in starts]))

    return predict


def blend_tiles(tile_predictions, layout: dict, window: tuple[int, int, int, int], batch_size: int = 4,
                progress: bool = False) -> np.ndarray:
    """The blended probabilities of ``window`` (y0, y1, x0, x1 in image coordinates) from the
    layout's tiles; ``tile_predictions(starts)`` predicts a batch of them (``source_tiles``). A
    window gives exactly the values the whole image gives there: same tiles, weights and order."""
    (tile_h, tile_w), (padded_h, padded_w) = layout["tile"], layout["padded"]
    margin, ramp = layout["margin"], layout["ramp"]
    y0, y1, x0, x1 = window
    starts = tiles_for_window(layout, window)
    total = weight_sum = None
    bar = tqdm(total=len(starts), desc="tiles", disable=not progress or not bars_shown(), leave=False)
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        out = tile_predictions(chunk)
        if total is None:
            total = np.zeros((y1 - y0, x1 - x0, out.shape[-1]), np.float64)
            weight_sum = np.zeros((y1 - y0, x1 - x0, 1), np.float64)
        for (y, x), tile in zip(chunk, out):
            w = np.outer(_axis_weights(tile_h, y, padded_h, margin, ramp),
                         _axis_weights(tile_w, x, padded_w, margin, ramp))[..., None]
            top, left, bottom, right = max(y, y0), max(x, x0), min(y + tile_h, y1), min(x + tile_w, x1)
            if bottom <= top or right <= left:
                continue
            total[top - y0:bottom - y0, left - x0:right - x0] += (w * tile)[top - y:bottom - y, left - x:right - x]
            weight_sum[top - y0:bottom - y0, left - x0:right - x0] += w[top - y:bottom - y, left - x:right - x]
        bar.update(len(chunk))
    bar.close()
    return np.divide(total, weight_sum, out=total).astype(np.float32)  # in place: one float64 array, not two
