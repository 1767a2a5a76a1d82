"""Dask for many tasks: a client of a ``dask.distributed`` scheduler, or of an in-process
cluster by default, and a map over items that shows one progress line per finished task."""

from __future__ import annotations

import contextlib
import logging
import time


@contextlib.contextmanager
def dask_client(scheduler: str | None = None, workers: int = 1):
    """A client of ``scheduler`` (an address such as ``tcp://host:8786``), or of an in-process
    cluster of ``workers`` threads, closed when the block ends."""
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with LocalCluster(processes=False, n_workers=1, threads_per_worker=workers, dashboard_address=None,
                      silence_logs=logging.WARNING) as cluster, Client(cluster) as client:
        yield client


def map_tasks(function, items: list, scheduler: str | None = None, workers: int = 1, progress: bool = True,
              desc: str = "tasks") -> list:
    """``[function(item) for item in items]`` as Dask tasks, results in the items' order; a line
    per finished task (done/total, seconds, an estimate of those left)."""
    from distributed import as_completed

    with dask_client(scheduler, workers) as client:
        futures = client.map(function, items, pure=False)
        index = {future.key: i for i, future in enumerate(futures)}
        results, start = [None] * len(items), time.perf_counter()
        for done, future in enumerate(as_completed(futures), 1):
            results[index[future.key]] = future.result()
            if progress:
                elapsed = time.perf_counter() - start
                print(f"  {desc} {done}/{len(items)} ({elapsed:.0f} s, about "
                      f"{elapsed / done * (len(items) - done):.0f} s left)", flush=True)
        return results
