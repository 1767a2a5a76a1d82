"""Images larger than memory predicted into OME-Zarr labels, block by block on Dask.

``predict_large_image(run, image, out)`` reads the image lazily (``lazy.open_lazy``), computes
its normalisation statistics once, and sends one task per block (``blockwise``) to a Dask
cluster: by default an in-process one (threads), or any ``dask.distributed`` scheduler
(``scheduler='tcp://...'``; each worker loads the run and opens the image itself). Every block
writes its own chunks of ``OUT.zarr/0`` and then a record in ``OUT.zarr/.blocks/``; a block
without a record is not done, so an interrupted run started again computes only what is
missing. Finally the pyramid levels, the OME-Zarr (NGFF 0.4) metadata, a downsampled overlay
and, for nuclei, ``nuclei.csv`` (one row per nucleus of the whole image) are written.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .blockwise import DEFAULT_BLOCK, DEFAULT_HALO, BlockPredictor, block_windows, label_dtype
from .cluster import map_tasks
from .io import DataError, claim_output_folder, save_png, write_csv
from .preprocess import Statistics

LABELS, PROBABILITIES, RECORDS, OVERVIEW_SIDE = "0", "probabilities", ".blocks", 2048
MOMENTS = ("area", "sum_y", "sum_x", "sum_yy", "sum_xx", "sum_xy", "sum_intensity")


@dataclass(frozen=True)
class Job:
    """What a block task needs (sent to every worker): the run's spec, the image and the output."""

    run: tuple  # Run.spec(): the model file and the config with the settings asked for
    image: str
    level: int
    out: str
    halo: int
    statistics: Statistics
    probabilities: bool = False  # tissue: also write the class probabilities (``OUT.zarr/probabilities``)

    @property
    def key(self) -> tuple:
        return self.run[0], json.dumps(self.run[1].to_dict(), sort_keys=True, default=str), self.image, self.level, \
            self.halo, self.statistics


_PREDICTORS: dict[tuple, BlockPredictor] = {}  # per process: the image opened once per job


def _predictor(job: Job) -> BlockPredictor:
    if job.key not in _PREDICTORS:
        from .lazy import open_lazy
        from .run import Run

        run = Run.from_spec(job.run)
        _PREDICTORS[job.key] = BlockPredictor(run.model, run.config, open_lazy(job.image, job.level), job.halo,
                                              job.statistics)
    return _PREDICTORS[job.key]


def _record_path(out: Path, window) -> Path:
    return out / RECORDS / f"{window[0]}_{window[2]}.npz"


def predict_block(job: Job, window: tuple[int, int, int, int]) -> dict:
    """Predict one block, write its chunks, then its record (the block's nucleus moments)."""
    import zarr

    predictor = _predictor(job)
    y0, y1, x0, x1 = window
    labels, cut, probabilities = predictor.labels(window)
    moments = {}
    if predictor.task.instances:
        moments = nucleus_moments(labels, predictor.pixels(window).astype(np.float32).mean(axis=-1), (y0, x0))
    elif job.probabilities:
        zarr.open_array(str(Path(job.out) / PROBABILITIES), mode="r+")[y0:y1, x0:x1] = probabilities
    zarr.open_array(str(Path(job.out) / LABELS), mode="r+")[y0:y1, x0:x1] = labels
    record = _record_path(Path(job.out), window)
    with tempfile.NamedTemporaryFile(dir=record.parent, suffix=".npz", delete=False) as handle:
        np.savez(handle, cut=cut, **moments)
    os.replace(handle.name, record)
    return {"window": window, "cut": cut}


def nucleus_moments(labels: np.ndarray, intensity: np.ndarray, origin: tuple[int, int]) -> dict[str, np.ndarray]:
    """Per nucleus id of a block: pixel count and sums of coordinates (image coordinates), their
    squares and products, and intensity; blocks' sums add up to the whole nucleus's."""
    ids, inverse = np.unique(labels, return_inverse=True)
    inverse = inverse.ravel()
    ys, xs = np.indices(labels.shape, dtype=np.float64)
    ys, xs = (ys + origin[0]).ravel(), (xs + origin[1]).ravel()
    sums = {"area": np.ones_like(ys), "sum_y": ys, "sum_x": xs, "sum_yy": ys * ys, "sum_xx": xs * xs,
            "sum_xy": ys * xs, "sum_intensity": intensity.ravel().astype(np.float64)}
    keep = ids > 0
    return {"ids": ids[keep], **{key: np.bincount(inverse, weights=value, minlength=len(ids))[keep]
                                 for key, value in sums.items()}}


def nucleus_rows(records: list[dict]) -> list[dict]:
    """``nuclei.csv`` rows of the whole image from the blocks' moments (as ``nuclei.nucleus_table``)."""
    ids = np.concatenate([r["ids"] for r in records]) if records else np.zeros(0, np.uint64)
    unique, inverse = np.unique(ids, return_inverse=True)
    total = {key: np.bincount(inverse, weights=np.concatenate([r[key] for r in records]), minlength=len(unique))
             for key in MOMENTS} if len(ids) else {key: np.zeros(0) for key in MOMENTS}
    rows = []
    for i, nucleus in enumerate(unique):
        area = total["area"][i]
        cy, cx = total["sum_y"][i] / area, total["sum_x"][i] / area
        cov_yy = total["sum_yy"][i] / area - cy * cy
        cov_xx = total["sum_xx"][i] / area - cx * cx
        cov_xy = total["sum_xy"][i] / area - cy * cx
        spread = np.sqrt(max(((cov_yy - cov_xx) / 2) ** 2 + cov_xy**2, 0.0))
        major, minor = (cov_yy + cov_xx) / 2 + spread, (cov_yy + cov_xx) / 2 - spread
        rows.append({"image": "", "label": int(nucleus), "area": int(area), "centroid_y": round(cy, 2),
                     "centroid_x": round(cx, 2), "equivalent_diameter": round(float(np.sqrt(4 * area / np.pi)), 3),
                     "eccentricity": round(float(np.sqrt(1 - minor / major)) if major > 0 else 0.0, 4),
                     "mean_intensity": round(total["sum_intensity"][i] / area, 3)})
    return rows


def _open_output(out: Path, image, description: dict, dtype, classes: int) -> None:
    """Create ``OUT.zarr`` with its full-resolution labels array, or check that an existing one
    holds an interrupted prediction of the same run, image and blocks (then it resumes)."""
    import zarr

    marker = out / "prediction.json"
    if marker.is_file():
        previous = json.loads(marker.read_text())
        if previous != description:
            changed = sorted(key for key in description if previous.get(key) != description[key])
            raise DataError(f"{out}: holds another prediction (different {', '.join(changed)}); "
                            "choose a new output, or delete it to start again")
    claim_output_folder(out, [description["image"]], description)
    (out / RECORDS).mkdir(exist_ok=True)
    block, shape = description["block_size"], image.shape[:2]
    arrays = {LABELS: (shape, (block, block), dtype)}
    if description["probabilities"]:
        arrays[PROBABILITIES] = ((*shape, classes), (block, block, classes), "float16")
    for name, (array_shape, chunks, array_dtype) in arrays.items():
        if not (out / name).exists():  # zarr v2 with '/' chunk keys, as NGFF 0.4 readers expect
            zarr.create_array(str(out / name), shape=array_shape, chunks=chunks, dtype=array_dtype, fill_value=0,
                              zarr_format=2, chunk_key_encoding={"name": "v2", "separator": "/"})


def predict_large_image(run_path, image_path, out, block_size: int = DEFAULT_BLOCK, halo: int = DEFAULT_HALO,
                        level: int = 0, scheduler: str | None = None, workers: int = 1, progress: bool = True,
                        probabilities: bool = False, **settings) -> dict:
    """Predict one large image into ``out`` (an ``.zarr`` folder); see the module's note.
    ``probabilities``: tissue class probabilities too (float16, ``OUT.zarr/probabilities``).
    ``settings`` change inference settings of the run (tta, tile_size, min_nucleus_area, ...)."""
    from .lazy import open_lazy
    from .preprocess import Preprocessor
    from .run import Run

    if block_size < 1 or halo < 0 or level < 0:
        raise DataError(f"block size {block_size}, halo {halo}, level {level}: the block size must be at least "
                        "1 pixel, the halo and the pyramid level 0 or more (--block-size, --halo, --level)")
    out, image_path = Path(out), Path(image_path)
    run = Run.load(run_path).with_settings(**settings)
    image = open_lazy(image_path, level)
    height, width = image.shape[:2]
    nuclei = run.task.instances
    dtype = label_dtype(height, width, nuclei)
    description = {"run": str(run.run_dir), "image": str(image_path), "level": level, "block_size": block_size,
                   "halo": halo, "shape": [height, width], "settings": {k: settings[k] for k in sorted(settings)},
                   "probabilities": bool(probabilities and not nuclei)}
    _open_output(out, image, description, dtype, run.config.num_classes)
    job = Job(run.spec(), str(image_path), level, str(out), halo, Preprocessor.for_config(run.config).statistics(image),
              description["probabilities"])
    windows = block_windows(height, width, block_size)
    pending = [w for w in windows if not _record_path(out, w).is_file()]
    start = time.perf_counter()
    if pending:
        try:
            map_tasks(functools.partial(predict_block, job), pending, scheduler, workers, progress, "blocks")
        finally:
            _PREDICTORS.pop(job.key, None)  # this process's copy (its tile cache) is not needed any more
    records = [dict(np.load(_record_path(out, w))) for w in windows]
    summary = _finish(out, run, image, records, nuclei)
    return {**summary, "blocks": len(windows), "blocks_computed": len(pending), "seconds": time.perf_counter() - start,
            "cut_components": int(sum(int(r["cut"]) for r in records))}


def _finish(out: Path, run, image, records: list[dict], nuclei: bool) -> dict:
    """Pyramid levels, OME-Zarr metadata, the overview overlay and the nuclei table."""
    import dask.array as da
    import zarr

    levels = [LABELS]
    labels = da.from_zarr(str(out / LABELS))
    while max(labels.shape) > 1024:
        labels = labels[::2, ::2]
        levels.append(str(len(levels)))
        labels.rechunk(1024).to_zarr(str(out / levels[-1]), overwrite=True, zarr_format=2,
                                     chunk_key_encoding={"name": "v2", "separator": "/"})
        labels = da.from_zarr(str(out / levels[-1]))
    group = zarr.open_group(str(out), mode="a", zarr_format=2)
    group.attrs.update(ome_zarr_attributes(levels, run, nuclei))
    _write_overview(out, run, image, nuclei)
    if not nuclei:
        return {"nuclei": None}
    rows = nucleus_rows(records)
    from .nuclei import TABLE_COLUMNS

    write_csv(out / "nuclei.csv", rows, TABLE_COLUMNS)
    return {"nuclei": len(rows)}


def ome_zarr_attributes(levels: list[str], run, nuclei: bool) -> dict:
    """NGFF 0.4 ``multiscales`` and ``image-label`` metadata of the labels (colours for tissue)."""
    datasets = [{"path": path, "coordinateTransformations": [{"type": "scale", "scale": [2.0**i, 2.0**i]}]}
                for i, path in enumerate(levels)]
    label = {"version": "0.4"}  # standalone labels: the image they belong to is named in prediction.json
    if not nuclei:
        label["colors"] = [{"label-value": i, "rgba": [*map(int, rgb), 255]} for i, rgb in enumerate(run.palette)]
    return {"multiscales": [{"version": "0.4", "name": "labels", "axes": [{"name": "y", "type": "space"},
                                                                          {"name": "x", "type": "space"}],
                             "datasets": datasets}], "image-label": label}


def _write_overview(out: Path, run, image, nuclei: bool) -> None:
    """``overview.png``: the labels drawn over the image, at most ``OVERVIEW_SIDE`` px a side."""
    import zarr
    from skimage.segmentation import relabel_sequential

    step = max(1, -(-max(image.shape[:2]) // OVERVIEW_SIDE))
    small = np.asarray(image[::step, ::step])
    labels = np.asarray(zarr.open_array(str(out / LABELS), mode="r")[::step, ::step])
    if nuclei:
        labels = relabel_sequential(labels)[0]
    save_png(out / "overview.png", run.task.draw(small, labels, run.palette))

