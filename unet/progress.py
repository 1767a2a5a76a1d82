"""Progress of long loops: a tqdm bar in a terminal or notebook, plain lines in a log.

``make demo`` runs the notebook headless and shows its output as a log, where a bar's
carriage returns and widgets do not work; it sets ``UNET_PROGRESS=lines``.
"""

from __future__ import annotations

import os
import time

LINES = "lines"


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
        from tqdm.auto import tqdm

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
