"""Time building and hitting the NPY cache of a dataset folder, with peak memory.

    .venv/bin/python benchmarks/cache.py --data ../shared/data/dsb2018_sample

Each measurement runs in a fresh process so that its peak RSS is its own.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
import unet.data as data
start = time.perf_counter()
dataset = data.load_dataset({folder!r}, npy_dir={npy!r}, progress=False, verbose=False, stray="ignore")
pixels = sum(int(im.shape[0] * im.shape[1]) for im in dataset.images)
touched = sum(int(im[::64, ::64].sum()) for im in dataset.images)  # touch the memory map
seconds = time.perf_counter() - start
print(json.dumps({{"seconds": seconds, "images": len(dataset), "pixels": pixels,
                  "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""


def measure(folder: str, npy: str, workers: int | None = None) -> dict:
    code = CHILD.format(root=str(ROOT), folder=folder, npy=npy)
    if workers:
        code = code.replace("import unet.data as data", f"import unet.data as data\nimport unet.progress\n"
                            f"unet.progress.DECODE_WORKERS = {workers}")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "dsb2018_sample"))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    npy = tempfile.mkdtemp(prefix="cache-bench-")
    try:
        rows = []
        for label, workers in (("build, 1 thread", 1), ("build, default threads", None)):
            for _ in range(args.repeats):
                shutil.rmtree(npy, ignore_errors=True)
                rows.append((label, measure(args.data, npy, workers)))
        for _ in range(args.repeats):
            rows.append(("hit", measure(args.data, npy)))
        size = sum(p.stat().st_size for p in Path(npy).rglob("*") if p.is_file())
    finally:
        shutil.rmtree(npy, ignore_errors=True)
    print(f"data: {args.data}")
    print(f"{'case':<24} {'best s':>8} {'median s':>9} {'peak RSS MB':>12}")
    best = {}
    for label in dict.fromkeys(label for label, _ in rows):
        times = sorted(r["seconds"] for l, r in rows if l == label)
        peak = max(r["peak_rss_mb"] for l, r in rows if l == label)
        best[label] = times[0]
        print(f"{label:<24} {times[0]:>8.3f} {times[len(times) // 2]:>9.3f} {peak:>12.0f}")
    first = rows[0][1]
    print(f"images: {first['images']}, pixels: {first['pixels'] / 1e6:.1f} M, cache on disk: {size / 2**20:.1f} MiB")
    print(f"ratio build/hit: {best['build, default threads'] / best['hit']:.0f}x; "
          f"threads speed-up: {best['build, 1 thread'] / best['build, default threads']:.2f}x")


if __name__ == "__main__":
    main()
