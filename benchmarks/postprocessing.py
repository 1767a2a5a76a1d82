"""Variants of the nuclei post-processing, scored on a saved run's validation images.

    .venv/bin/python benchmarks/postprocessing.py logs/benchmarks/RUN
    .venv/bin/python benchmarks/postprocessing.py logs/benchmarks/RUN --variants base,smooth --grid 0.5,0.6,0.7
    .venv/bin/python benchmarks/postprocessing.py logs/benchmarks/RUN --unmatched

The run predicts its validation images (its ``val_list`` or seeded split, its TTA) once; the
probabilities are kept beside the model (``postprocessing_validation.npz``) for the next call.
Each variant is then scored with the DSB2018 metric at every (seed threshold, foreground
threshold, minimum area) of the grid, and its best mean is printed: a variant that wins here
is a candidate for ``nuclei.nuclei_from_probabilities``. Test images take no part.

Variants: 'base' (the project's watershed), 'fill' (holes inside a nucleus join it),
'seed_difference' (seeds where interior - boundary passes the seed threshold),
'surface_boundary' / 'surface_difference' (the watershed floods the boundary probability, or
boundary - interior, instead of -interior), 'smooth' (probabilities blurred, Gaussian sigma 1
pixel, first), 'grow' / 'shrink' (every nucleus one pixel larger / its outer ring removed),
'relative_area' (the minimum area never above a quarter of the image's median nucleus, so that
images of tiny nuclei keep them).

``--unmatched`` instead reports, at the run's own tuned thresholds, the share of validation
true nuclei matched (IoU > 0.5) by modality and contrast (the nucleus's mean normalised input
less the background's median: faint nuclei have a small one) and by area.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402


def project(p, seed, foreground, area):
    from unet.nuclei import nuclei_from_probabilities

    return nuclei_from_probabilities(p, area, seed, foreground)


def watershed_variant(p, seed, foreground, area, seeds_from="interior", surface="interior", smooth=0.0):
    """The project's 3-class watershed with another seed map, flooded surface or blurred input."""
    from unet.nuclei import grow_seeds

    p = ndi.gaussian_filter(p, (smooth, smooth, 0)) if smooth else p
    interior, boundary = p[..., 1], p[..., 2]
    mask = interior + boundary > foreground
    seed_map = interior - boundary if seeds_from == "difference" else interior
    elevation = {"interior": -interior, "boundary": boundary, "difference": boundary - interior}[surface]
    return grow_seeds(ndi.label((seed_map > seed) & mask)[0], elevation, mask, area)


def filled(labels):
    from skimage.segmentation import expand_labels

    holes = ndi.binary_fill_holes(labels > 0) & (labels == 0)
    return np.where(holes, expand_labels(labels, 3), labels).astype(labels.dtype) if holes.any() else labels


def shrunk(labels):
    from skimage.segmentation import find_boundaries

    return np.where(find_boundaries(labels, mode="inner"), 0, labels).astype(labels.dtype)


def grown(labels):
    from skimage.segmentation import expand_labels

    return expand_labels(labels, 1)


RELATIVE_AREA = 0.25


def relative_area(p, seed, foreground, area):
    """The project's nuclei, with a minimum area of at most RELATIVE_AREA times their median area."""
    from unet.nuclei import relabel_instances

    labels = project(p, seed, foreground, 1)
    sizes = np.bincount(labels.ravel())[1:]
    return relabel_instances(labels, int(min(area, max(1.0, RELATIVE_AREA * np.median(sizes))))) if sizes.size else labels


VARIANTS = {
    "base": project,
    "fill": lambda *key: filled(project(*key)),
    "seed_difference": lambda *key: watershed_variant(*key, seeds_from="difference"),
    "surface_boundary": lambda *key: watershed_variant(*key, surface="boundary"),
    "surface_difference": lambda *key: watershed_variant(*key, surface="difference"),
    "smooth": lambda *key: watershed_variant(*key, smooth=1.0),
    "grow": lambda *key: grown(project(*key)),
    "shrink": lambda *key: shrunk(project(*key)),
    "relative_area": relative_area,
}
_IMAGES: dict = {}


def _load(path: str) -> None:
    with np.load(path) as saved:
        _IMAGES.update({key: saved[key].astype(np.float32) if key.startswith("p_") else saved[key]
                        for key in saved.files})  # probabilities back to float32 once, not per score


def _score(job) -> float:
    from unet.evaluation import nuclei_scores

    variant, image_id, key = job
    return nuclei_scores(_IMAGES[f"t_{image_id}"], VARIANTS[variant](_IMAGES[f"p_{image_id}"], *key))["map"]


def validation_probabilities(run_dir: Path) -> Path:
    """The run's validation probabilities (float16) and true labels, predicted once into the run folder."""
    path = run_dir / "postprocessing_validation.npz"
    if path.is_file():
        return path
    from unet.data import load_from_config, split_for_training
    from unet.inference import predict_probabilities
    from unet.run import Run

    run = Run.load(run_dir)
    val_set = split_for_training(load_from_config(run.config, progress=False), run.config)[1]
    start, arrays = time.perf_counter(), {}
    for image_id, image, truth in zip(val_set.ids, val_set.images, val_set.instances):
        arrays[f"p_{image_id}"] = predict_probabilities(run.model, run.config, np.asarray(image)).astype(np.float16)
        arrays[f"t_{image_id}"] = np.asarray(truth)
    print(f"predicted {len(val_set)} validation images in {time.perf_counter() - start:.0f} s", flush=True)
    partial = path.with_name(path.stem + ".partial.npz")
    np.savez(partial, **arrays)
    os.replace(partial, path)
    return path


CONTRAST_EDGES = (0.0, 0.1, 0.2, 0.3, 0.5, np.inf)  # |nucleus mean - background median|, normalised input
AREA_EDGES = (0, 24, 48, 100, 200, 400, np.inf)  # pixels


def nucleus_rows(truth: np.ndarray, labels: np.ndarray, model_input: np.ndarray) -> np.ndarray:
    """Per true nucleus: (area, |contrast|, best IoU with a predicted nucleus). Contrast: the
    nucleus's mean model input (channels averaged) less the median of the image's background."""
    from unet.evaluation import iou_matrix

    gray = model_input.mean(axis=-1) if model_input.ndim == 3 else model_input
    ids = np.unique(truth)
    ids = ids[ids > 0]
    areas = np.bincount(truth.ravel())[ids]
    means = np.bincount(truth.ravel(), gray.ravel())[ids] / areas
    contrast = np.abs(means - np.median(gray[truth == 0])) if (truth == 0).any() else np.abs(means)
    iou = iou_matrix(truth, labels)
    best = iou.max(axis=1) if iou.shape[1] else np.zeros(len(ids))
    return np.stack([areas, contrast, best], axis=1)


def unmatched_report(run_dir: Path, path: Path) -> str:
    """Share of the validation true nuclei matched (IoU > 0.5) at the run's tuned thresholds, by
    modality and contrast, and by area."""
    from unet.config import Config
    from unet.data import load_from_config, split_for_training
    from unet.dataset import modality
    from unet.preprocess import Preprocessor
    from unet.run import CONFIG_FILE
    from unet.tuning import apply_thresholds

    config = apply_thresholds(Config.load(run_dir / CONFIG_FILE), run_dir)  # the model is not needed here
    val_set = split_for_training(load_from_config(config, progress=False), config)[1]
    preprocessor = Preprocessor.for_config(config)
    rows, groups = [], []
    with np.load(path) as saved:
        for image_id, image in zip(val_set.ids, val_set.images):
            labels = project(saved[f"p_{image_id}"].astype(np.float32), config.seed_threshold,
                             config.foreground_threshold, config.min_nucleus_area)
            rows.append(nucleus_rows(saved[f"t_{image_id}"], labels, preprocessor(np.asarray(image))))
            groups += [modality(image)] * len(rows[-1])
    rows, groups = np.concatenate(rows), np.array(groups)
    lines = [f"validation true nuclei matched at IoU > 0.5 (thresholds {config.seed_threshold} / "
             f"{config.foreground_threshold} / {config.min_nucleus_area} px)", "group | |contrast| | nuclei | matched"]

    def line(label, selected, edges, column):
        for low, high in zip(edges[:-1], edges[1:]):
            inside = selected & (rows[:, column] >= low) & (rows[:, column] < high)
            if inside.any():
                lines.append(f"{label} | {low:g}-{high:g} | {inside.sum()} | {(rows[inside, 2] > 0.5).mean():.3f}")

    for group in sorted(set(groups)):
        line(group, groups == group, CONTRAST_EDGES, 1)
    lines.append("all | area (px) | nuclei | matched")
    line("all", np.ones(len(rows), bool), AREA_EDGES, 0)
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", type=Path, help="a nuclei run folder (its best.keras and config.json)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of {', '.join(VARIANTS)}")
    parser.add_argument("--grid", default="0.5,0.6,0.7,0.8", help="seed and foreground thresholds")
    parser.add_argument("--areas", default="12,24,48", help="minimum nucleus areas")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--unmatched", action="store_true",
                        help="instead: which true nuclei the run's own thresholds miss, by contrast and area")
    args = parser.parse_args()
    unknown = set(args.variants.split(",")) - set(VARIANTS)
    if unknown:
        raise SystemExit(f"--variants: unknown {sorted(unknown)}; known: {', '.join(VARIANTS)}")
    from unet.io import DataError

    try:
        path = validation_probabilities(args.run)
    except DataError as error:  # no such run, or not a model: one line, not a traceback
        parser.error(str(error))
    if args.unmatched:
        print(unmatched_report(args.run, path))
        return
    with np.load(path) as saved:
        ids = [key[2:] for key in saved.files if key.startswith("t_")]
    grid, areas = [float(v) for v in args.grid.split(",")], [int(v) for v in args.areas.split(",")]
    keys = [(seed, foreground, area) for seed in grid for foreground in grid for area in areas]
    with Pool(args.workers, _load, (str(path),)) as pool:
        for variant in args.variants.split(","):
            start = time.perf_counter()
            means = {key: float(np.mean(pool.map(_score, [(variant, i, key) for i in ids], chunksize=4)))
                     for key in keys}
            best = max(means, key=means.get)
            print(f"{variant:<20} best validation mAP {means[best]:.4f} at seed / foreground / area {best} "
                  f"({len(ids)} images, {time.perf_counter() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main()
