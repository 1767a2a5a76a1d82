"""Post-processing thresholds chosen per run on its validation images, as StarDist's
``optimize_thresholds`` does, and kept in the run folder as ``thresholds.json``.

The nuclei watershed has three knobs: the interior (or centre) probability that makes a seed, the
foreground probability that is nucleus, and the smallest nucleus kept. After training, the
model predicts the validation images once; the knobs are searched on those probabilities with
the DSB2018 score, never on a test set: seed x foreground on a grid that grows by a step past
any edge the best pair lies on (within 0.1-0.9), then the minimum area, doubled or halved while
that gains, and the grid again at the new area until neither search moves the best (at most
three rounds; then tuning the tuned values again changes nothing).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

THRESHOLDS_FILE = "thresholds.json"
SEED_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
FOREGROUND_GRID = (0.3, 0.4, 0.5, 0.6, 0.7)
GRID_STEP, GRID_LIMITS = 0.1, (0.1, 0.9)  # the grids grow by this step past an edge, up to these limits
MAX_AREA_STEPS = 4  # the minimum area moves at most 4 doublings (or halvings) in one walk
MAX_ROUNDS = 3  # grid, then area walk, again at the new area while the walk moves the best
TUNED = ("seed_threshold", "foreground_threshold", "min_nucleus_area")


def mean_map(probabilities: list[np.ndarray], truths: list[np.ndarray], seed: float, foreground: float,
             min_area: int) -> float:
    """Mean DSB2018 score over images of the nuclei these thresholds give."""
    from .evaluation import nuclei_scores
    from .nuclei import nuclei_from_probabilities

    return float(np.mean([nuclei_scores(truth, nuclei_from_probabilities(p, min_area, seed, foreground))["map"]
                          for p, truth in zip(probabilities, truths)]))


def _grown(grid: list[float], chosen: float) -> bool:
    """Add the next value past ``grid``'s edge when ``chosen`` lies on that edge; True if one was added."""
    low, high = GRID_LIMITS
    if chosen == grid[-1] and grid[-1] + GRID_STEP <= high + 1e-9:
        grid.append(round(grid[-1] + GRID_STEP, 2))
        return True
    if chosen == grid[0] and grid[0] - GRID_STEP >= low - 1e-9:
        grid.insert(0, round(grid[0] - GRID_STEP, 2))
        return True
    return False


def tune_nuclei_thresholds(probabilities: list[np.ndarray], truths: list[np.ndarray], config) -> dict:
    """The best (seed, foreground, minimum area) on these images, the score it gives and the
    score of the config's own values. Ties keep the config's values (no change without a gain)."""
    default = (config.seed_threshold, config.foreground_threshold, config.min_nucleus_area)
    scores: dict[tuple, float] = {}

    def score(key: tuple) -> float:
        if key not in scores:
            scores[key] = mean_map(probabilities, truths, *key)
        return scores[key]

    def best() -> tuple:
        return max(scores, key=lambda key: (scores[key], key == default))

    seeded = probabilities[0].shape[-1] > 1
    seeds = list(SEED_GRID) if seeded else [config.seed_threshold]  # binary head: no seeds
    foregrounds = list(FOREGROUND_GRID)

    def search_grid(area: int) -> None:
        """Every (seed, foreground) at this area, the grids grown until the best is inside them."""
        while True:
            for seed in seeds:
                for foreground in foregrounds:
                    score((seed, foreground, area))
            seed, foreground, _ = best()
            seed_grown = seeded and _grown(seeds, seed)
            if not _grown(foregrounds, foreground) and not seed_grown:
                return

    def walk_area(seed: float, foreground: float, area: int) -> None:
        """Double, then halve, the minimum area while each step gains."""
        for factor in (2.0, 0.5):
            current = area
            for _ in range(MAX_AREA_STEPS):
                step = max(1, round(current * factor))
                if step == current or score((seed, foreground, step)) <= score((seed, foreground, current)):
                    break
                current = step

    score(default)
    area = config.min_nucleus_area
    for _ in range(MAX_ROUNDS):  # alternate the two searches until the area walk no longer moves the best
        search_grid(area)
        start = best()
        walk_area(*start)
        if best() == start:
            break
        area = best()[2]
    best_key = best()
    return {**dict(zip(TUNED, best_key)), "validation_map": scores[best_key], "untuned_map": scores[default],
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
