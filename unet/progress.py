"""Progress of long loops: a tqdm bar in a terminal or notebook, plain lines in a log; and
the thread pool that decodes datasets with one bar.

``make demo`` runs the notebook headless and shows its output as a log, where a bar's
carriage returns and widgets do not work; it sets ``UNET_PROGRESS=lines``.
"""

from __future__ import annotations

import os
import time
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from .io import DataError

LINES = "lines"
DECODE_WORKERS: int | None = None  # threads of parallel_map; None: min(8, cores + 2)


def bars_shown() -> bool:
    """Whether progress bars suit the output (not when it is a log; see the module's note)."""
    return os.environ.get("UNET_PROGRESS") != LINES


def progress(items, desc: str, enabled: bool = True):
    """Iterate over ``items`` (a sized collection) and show how far the loop has come."""
    if not enabled:
        yield from items
    elif not bars_shown():
        yield from _lines(items, desc)
    else:
        yield from tqdm(items, desc=desc)


def _lines(items, desc: str):
    """About ten lines per loop: items done, seconds so far and an estimate of those left."""
    total, start = len(items), time.perf_counter()
    step = max(1, total // 10)
    for index, item in enumerate(items):
        if index and index % step == 0:
            _report(desc, index, total, start)
        yield item
    _report(desc, total, total, start)


def _report(desc: str, done: int, total: int, start: float) -> None:
    elapsed = time.perf_counter() - start
    left = elapsed / done * (total - done) if done else 0.0
    print(f"  {desc}: {done}/{total} ({elapsed:.0f} s, about {left:.0f} s left)", flush=True)


def parallel_map(function, items, desc: str, workers: int | None = None, progress: bool = True):
    """``[function(x) for x in items]`` on a thread pool with a progress bar.

    Every item is tried; DataErrors are collected and raised together so that one run names
    every bad file.
    """
    results, problems = [None] * len(items), []
    workers = workers or DECODE_WORKERS or min(8, (os.cpu_count() or 1) + 2)

    def run(index):
        try:
            return index, function(items[index]), None
        except DataError as error:
            return index, None, error.problems

    with ThreadPoolExecutor(workers) as pool, tqdm(total=len(items), desc=desc, leave=False,
                                                   disable=not progress or not bars_shown()) as bar:
        for index, value, error in pool.map(run, range(len(items))):
            results[index] = value
            problems += error or []
            bar.update()
    if problems:
        raise DataError(problems)
    return results
