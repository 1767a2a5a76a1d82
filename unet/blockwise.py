"""Block-wise prediction of images larger than memory, on Dask.

The image is cut into blocks (``block_size``, default 2048 px). Each block is predicted from
the tiles of the *whole image's* tile layout that reach it, normalised with the whole image's
statistics (``Preprocessor.statistics``), so its probabilities equal those of the in-memory
prediction exactly (same tiles, weights and blending); a block reads only the window of the
image its tiles cover.

Tissue: each block's class map is its own. Nuclei: each block runs the watershed on itself plus
a ``halo`` (default 128 px) of context on every side, and a nucleus gets a global id from its
anchor, its first pixel in raster order, in image coordinates. A nucleus that crosses a block
border is seen whole by both blocks, so both give it the same id: it is stitched by
construction, never cut in two or counted twice, as long as its connected foreground fits in
the halo (``cut_components`` counts those that do not).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from .preprocess import Preprocessor, Statistics
from .tasks import task_for
from .tiling import blend_tiles, model_stride, pad_to_layout, source_tiles, tile_layout, tiles_for_window

DEFAULT_BLOCK = 2048  # a block's working memory grows with the square of its side (RESULTS.md: peak RSS)
DEFAULT_HALO = 128


@dataclass
class BlockPredictor:
    """Predicts windows of one image with one model, as the in-memory path would."""

    model: object
    config: object
    image: object  # (H, W, 3) uint8, NumPy or Dask
    halo: int = DEFAULT_HALO
    statistics: Statistics | None = None
    cache_tiles: int = 256  # tile predictions kept for neighbouring blocks (about 1 MB each)
    layout: dict = field(init=False)

    def __post_init__(self):
        if self.config.nucleus_diameter:
            from .config import ConfigError

            raise ConfigError("nucleus_diameter", f"this run sees images rescaled to nuclei "
                              f"{self.config.nucleus_diameter:g} px across; block-wise prediction runs at native "
                              "scale only: predict the image in memory (unet predict)")
        self.preprocessor = Preprocessor.for_config(self.config)
        if self.statistics is None:
            self.statistics = self.preprocessor.statistics(self.image)
        height, width = self.image.shape[:2]
        self.layout = tile_layout(height, width, self.config.tile_size, self.config.tile_overlap,
                                  model_stride(self.model))
        from .inference import predictor

        self.predict_fn = predictor(self.model, self.config.tta)
        self.task = task_for(self.config.kind)
        self.cache: dict[tuple[int, int], np.ndarray] = {}
        self.lock = threading.Lock()

    def probabilities(self, window: tuple[int, int, int, int]) -> np.ndarray:
        """Probabilities of ``window`` (y0, y1, x0, x1), equal to the whole image's there. Tiles
        that reach beyond the window are kept for the neighbouring blocks (``cache_tiles``)."""
        height, width = self.image.shape[:2]
        (tile_h, tile_w) = self.layout["tile"]
        starts = tiles_for_window(self.layout, window)
        if all(start in self.cache for start in starts):
            return blend_tiles(self._cached_or(None), self.layout, window, self.config.batch_size)
        top, left = min(y for y, _ in starts), min(x for _, x in starts)
        bottom, right = max(y for y, _ in starts) + tile_h, max(x for _, x in starts) + tile_w
        pixels = self.pixels((top, min(bottom, height), left, min(right, width)))
        x = pad_to_layout(self.preprocessor.apply(pixels, self.statistics), self.layout, (height - top, width - left),
                          bottom > height, right > width)
        del pixels
        predict = source_tiles(self.predict_fn, x, (top, left), self.layout)
        return blend_tiles(self._cached_or(predict, window), self.layout, window, self.config.batch_size)

    def _cached_or(self, predict, window=None):
        """Tile predictions from the cache, the others from ``predict``; those reaching beyond
        ``window`` are cached (the oldest dropped beyond ``cache_tiles``)."""
        tile_h, tile_w = self.layout["tile"]

        def tiles(starts):
            with self.lock:
                known = {start: self.cache[start] for start in starts if start in self.cache}
            missing = [start for start in starts if start not in known]
            fresh = dict(zip(missing, predict(missing))) if missing else {}
            with self.lock:
                for (y, x), tile in fresh.items():
                    if window and not (y >= window[0] and y + tile_h <= window[1] and x >= window[2]
                                       and x + tile_w <= window[3]):
                        self.cache[(y, x)] = tile
                        while len(self.cache) > self.cache_tiles:
                            self.cache.pop(next(iter(self.cache)))
            return np.stack([fresh[start] if start in fresh else known[start] for start in starts])

        return tiles

    def pixels(self, window: tuple[int, int, int, int]) -> np.ndarray:
        """The image's pixels in ``window``, read now (a lazy image reads only its chunks there)."""
        y0, y1, x0, x1 = window
        pixels = self.image[y0:y1, x0:x1]
        return pixels.compute(scheduler="synchronous") if hasattr(pixels, "compute") else np.asarray(pixels)

    def labels(self, window: tuple[int, int, int, int]) -> tuple[np.ndarray, int, np.ndarray | None]:
        """(labels of ``window``: global nucleus ids or the class map, the nuclei cut by the halo,
        the class probabilities for tasks without instances, else None)."""
        if self.task.instances:
            return (*self.nuclei(window), None)
        probabilities = self.probabilities(window)
        return self.task.labels(probabilities, self.config), 0, probabilities

    def nuclei(self, window: tuple[int, int, int, int]) -> tuple[np.ndarray, int]:
        """(global nucleus ids of ``window``, uint32 or uint64; 0 background, the number of
        foreground components cut by the halo). Ids are ``anchor_y * width + anchor_x + 1``."""
        height, width = self.image.shape[:2]
        y0, y1, x0, x1 = window
        outer = (max(0, y0 - self.halo), min(height, y1 + self.halo), max(0, x0 - self.halo),
                 min(width, x1 + self.halo))
        labels = self.task.labels(self.probabilities(outer), self.config)
        values, first = np.unique(labels, return_index=True)
        rows, cols = np.divmod(first, labels.shape[1])
        dtype = label_dtype(height, width, instances=True)
        ids = np.zeros(int(values.max()) + 1, dtype)
        ids[values] = (outer[0] + rows).astype(dtype) * width + (outer[2] + cols) + 1
        ids[0] = 0
        core_box = (y0 - outer[0], y1 - outer[0], x0 - outer[2], x1 - outer[2])  # the window inside ``outer``
        core = labels[core_box[0]:core_box[1], core_box[2]:core_box[3]]
        return ids[core], cut_components(labels, core_box, _inner_edges(outer, height, width))


def _inner_edges(window, height: int, width: int) -> tuple[bool, bool, bool, bool]:
    """Which edges of a window (top, bottom, left, right) lie inside the image."""
    y0, y1, x0, x1 = window
    return y0 > 0, y1 < height, x0 > 0, x1 < width


def cut_components(labels: np.ndarray, core_box, inner_edges) -> int:
    """Nuclei with pixels in the core that touch an edge of the context lying inside the image:
    their extent beyond the context is unknown, so their id may disagree with a neighbour's."""
    y0, y1, x0, x1 = core_box
    in_core = set(np.unique(labels[y0:y1, x0:x1]).tolist()) - {0}
    edges = [labels[0], labels[-1], labels[:, 0], labels[:, -1]]
    touching = set().union(*[set(np.unique(edge).tolist()) for edge, inner in zip(edges, inner_edges) if inner])
    return len((touching - {0}) & in_core)


def label_dtype(height: int, width: int, instances: bool):
    """The label map's dtype: uint8 classes, or nucleus ids (up to height * width + 1) in uint32 or uint64."""
    if not instances:
        return np.uint8
    return np.uint32 if height * width < 2**32 - 1 else np.uint64


def block_windows(height: int, width: int, block_size: int) -> list[tuple[int, int, int, int]]:
    """The blocks (y0, y1, x0, x1) that tile an image, row by row."""
    return [(y, min(y + block_size, height), x, min(x + block_size, width))
            for y in range(0, height, block_size) for x in range(0, width, block_size)]


def predict_blockwise(model, config, image, block_size: int = DEFAULT_BLOCK, halo: int = DEFAULT_HALO):
    """(label map as a lazy Dask array, the :class:`BlockPredictor`): nuclei ids or tissue classes,
    one block per chunk, computed when asked (``.compute()`` or ``.to_zarr``)."""
    import dask.array as da

    block = BlockPredictor(model, config, image, halo)
    height, width = image.shape[:2]
    dtype = label_dtype(height, width, block.task.instances)

    def predict(block_info=None):
        (y0, y1), (x0, x1) = block_info[None]["array-location"]
        return block.labels((y0, y1, x0, x1))[0]

    chunks = tuple(tuple(min(block_size, n - start) for start in range(0, n, block_size)) for n in (height, width))
    return da.map_blocks(predict, chunks=chunks, dtype=dtype, meta=np.empty((0, 0), dtype)), block
