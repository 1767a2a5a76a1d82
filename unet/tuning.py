"""Post-processing thresholds chosen per run on its validation images, as StarDist's
``optimize_thresholds`` does, and kept in the run folder as ``thresholds.json``.

The nuclei watershed has three knobs: the interior probability that makes a seed, the
foreground probability that is nucleus, and the smallest nucleus kept. After training, the
model predicts the validation images once; the knobs are searched on those probabilities with
the DSB2018 score (seed x foreground on a grid, then the minimum area), never on a test set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

THRESHOLDS_FILE = "thresholds.json"
SEED_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
FOREGROUND_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
TUNED = ("seed_threshold", "foreground_threshold", "min_nucleus_area")


def mean_map(probabilities: list[np.ndarray], truths: list[np.ndarray], seed: float, foreground: float,
             min_area: int) -> float:
    """Mean DSB2018 score over images of the nuclei these thresholds give."""
    from .evaluation import nuclei_scores
    from .nuclei import nuclei_from_probabilities

    return float(np.mean([nuclei_scores(truth, nuclei_from_probabilities(p, min_area, seed, foreground))["map"]
                          for p, truth in zip(probabilities, truths)]))


def tune_nuclei_thresholds(probabilities: list[np.ndarray], truths: list[np.ndarray], config) -> dict:
    """The best (seed, foreground, minimum area) on these images, the score it gives and the
    score of the config's own values. Ties keep the config's values (no change without a gain)."""
    default = (config.seed_threshold, config.foreground_threshold, config.min_nucleus_area)
    seeds = SEED_GRID if probabilities[0].shape[-1] == 3 else (config.seed_threshold,)  # binary head: no seeds
    scores = {default: mean_map(probabilities, truths, *default)}
    for seed in seeds:
        for foreground in FOREGROUND_GRID:
            key = (seed, foreground, config.min_nucleus_area)
            if key not in scores:
                scores[key] = mean_map(probabilities, truths, *key)
    best = max(scores, key=lambda key: (scores[key], key == default))
    for area in (max(1, config.min_nucleus_area // 2), 2 * config.min_nucleus_area):
        key = (best[0], best[1], area)
        scores.setdefault(key, mean_map(probabilities, truths, *key))
    best = max(scores, key=lambda key: (scores[key], key == default))
    return {**dict(zip(TUNED, best)), "validation_map": scores[best], "untuned_map": scores[default],
            "untuned": dict(zip(TUNED, default)), "images": len(truths),
            "searched": [{**dict(zip(TUNED, key)), "map": value} for key, value in sorted(scores.items())]}


def tune_run(run, val_set) -> dict:
    """Predict the validation images with ``run`` (a :class:`~unet.run.Run`), tune, and write
    ``thresholds.json`` into its folder."""
    from .inference import predict_probabilities
    from .io import write_text_atomic

    probabilities = [predict_probabilities(run.model, run.config, np.asarray(image)) for image in val_set.images]
    result = tune_nuclei_thresholds(probabilities, [np.asarray(t) for t in val_set.instances], run.config)
    write_text_atomic(Path(run.run_dir) / THRESHOLDS_FILE, json.dumps(result, indent=2) + "\n")
    return result


def apply_thresholds(config, run_dir: Path):
    """``config`` with the run's tuned thresholds, when its folder holds a ``thresholds.json``."""
    path = Path(run_dir) / THRESHOLDS_FILE
    if not path.is_file():
        return config
    from .io import DataError

    try:
        tuned = json.loads(path.read_text())
        return config.replace(**{key: type(getattr(config, key))(tuned[key]) for key in TUNED})
    except (ValueError, KeyError, TypeError) as error:
        raise DataError(f"{path}: not a thresholds file of this project ({type(error).__name__}: {error})") from None
