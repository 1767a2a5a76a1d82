"""Images larger than memory: peak memory and speed of block-wise prediction (synthetic images).

    .venv/bin/python benchmarks/large_image.py --side 20000 --compare-side 4096 --block-size 2048

1. Writes a synthetic RGB scene of ``--side`` x ``--side`` pixels as a tiled TIFF (tile by tile,
   never whole in memory) and predicts it with ``unet predict --image`` in a fresh process,
   reporting wall time and the process's peak RSS (``ru_maxrss``).
2. Throughput side by side on a ``--compare-side`` image that fits in memory, same model, TTA
   off, same process, each after a warm-up: the in-memory tiler (``Run.predict``) against
   block-wise prediction of the same image from a TIFF; megapixels per second and their ratio.
3. With ``--mosaic-run RUN`` (a trained nuclei run): a mosaic of real 256x256 DSB images predicted in
   memory and block by block, scored against each other with the DSB2018 metric.
The model of 1 and 2 is an untrained U-Net of the default size (base 16, depth 4) for 4 tissue classes:
speed and memory do not depend on the weights. Reported in RESULTS.md with the machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np  # noqa: E402

TILE = 512


def scene_tiles(side: int, seed: int = 0):
    """Tiles (row by row) of a synthetic scene: coloured blobs on a stained background."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:TILE, :TILE]
    for _ in range((-(-side // TILE)) ** 2):
        tile = np.empty((TILE, TILE, 3), np.uint8)
        tile[:] = rng.integers(150, 230, 3)
        for _ in range(6):
            y, x, r = rng.integers(0, TILE, 2).tolist() + [int(rng.integers(10, 60))]
            tile[(yy - y) ** 2 + (xx - x) ** 2 < r * r] = rng.integers(20, 200, 3)
        yield tile


def write_scene(path: Path, side: int) -> float:
    import tifffile

    start = time.perf_counter()
    tifffile.imwrite(path, scene_tiles(side), shape=(side, side, 3), dtype=np.uint8, tile=(TILE, TILE),
                     photometric="rgb", compression="zlib", bigtiff=True)
    return time.perf_counter() - start


def make_run(folder: Path) -> Path:
    import keras

    from unet.config import Config
    from unet.device import precision_policy, resolve_precision
    from unet.model import build_unet

    folder.mkdir(parents=True, exist_ok=True)
    keras.utils.set_random_seed(0)
    with precision_policy(resolve_precision("auto")):
        build_unet(3, 4, 16, 4).save(folder / "best.keras")
    palette = [[0, 0, 0], [230, 25, 75], [60, 180, 75], [0, 130, 200]]
    Config(kind="tissue", head="multiclass", num_classes=4, color_mode="rgb", tta=False, batch_size=8,
           extra={"palette": palette, "class_names": ["a", "b", "c", "d"]}).save(folder / "config.json")
    return folder


CHILD = """
import json, resource, sys, time
sys.path.insert(0, {root!r})
from unet.large_images import predict_large_image
start = time.perf_counter()
summary = predict_large_image({run!r}, {image!r}, {out!r}, block_size={block}, progress=False)
print(json.dumps({{"seconds": time.perf_counter() - start, "blocks": summary["blocks"],
                  "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}}))
"""


def blockwise_in_fresh_process(run: Path, image: Path, out: Path, block: int) -> dict:
    code = CHILD.format(root=str(ROOT), run=str(run), image=str(image), out=str(out), block=block)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


def side_by_side(run: Path, image: Path, work: Path, block: int) -> dict:
    """Seconds of the in-memory prediction (``Run.predict`` of the image read whole) and of the
    block-wise one (``predict_large_image``, all of it: statistics, blocks, pyramid, overview) of
    the same image in this process, each after a warm-up on a small image (tracing, start-up)."""
    from unet.io import read_rgb
    from unet.large_images import predict_large_image
    from unet.run import Run

    loaded, pixels = Run.load(run), read_rgb(image)
    small = work / "warm-up.tif"
    write_scene(small, 600)
    loaded.predict(pixels[:600, :600])
    start = time.perf_counter()
    in_memory = loaded.predict(pixels)[1]
    memory = time.perf_counter() - start
    predict_large_image(run, small, work / f"warm-up-{time.time_ns()}.zarr", block, progress=False)
    start, out = time.perf_counter(), work / f"compare-{time.time_ns()}.zarr"
    predict_large_image(run, image, out, block, progress=False)
    seconds = time.perf_counter() - start
    import zarr

    blockwise = zarr.open_array(str(out / "0"), mode="r")[:]
    return {"in_memory_seconds": memory, "blockwise_seconds": seconds,
            "classes_identical": bool(np.array_equal(in_memory, blockwise)),
            "pixels_differing": int((in_memory != blockwise).sum())}


def mosaic_agreement(run: Path, data: Path, work: Path, side: int = 2048, block: int = 512) -> dict:
    """A trained nuclei run on a mosaic of real 256x256 DSB images (``side`` px a side), in memory
    and block by block: the DSB2018 score of one against the other and the objects counted."""
    import tifffile
    import zarr

    from unet.data import load_dataset
    from unet.evaluation import nuclei_scores
    from unet.large_images import predict_large_image
    from unet.run import Run

    dataset = load_dataset(data, progress=False, verbose=False, stray="ignore", require_labels=False)
    tiles = [np.asarray(im) for im in dataset.images if np.asarray(im).shape[:2] == (256, 256)]
    per_side = side // 256
    if len(tiles) < per_side**2:
        raise SystemExit(f"{data}: {len(tiles)} images of 256x256, {per_side**2} needed")
    rows = [np.concatenate(tiles[r * per_side:(r + 1) * per_side], axis=1) for r in range(per_side)]
    mosaic = np.concatenate(rows, axis=0)
    tifffile.imwrite(work / "mosaic.tif", mosaic, tile=(256, 256))
    in_memory = Run.load(run).predict(mosaic)[1]
    out = work / f"mosaic-{time.time_ns()}.zarr"
    summary = predict_large_image(run, work / "mosaic.tif", out, block, progress=False)
    blockwise = zarr.open_array(str(out / "0"), mode="r")[:]
    score = nuclei_scores(in_memory, blockwise)
    return {"side": side, "block": block, "map_blockwise_vs_in_memory": score["map"],
            "in_memory_nuclei": int(in_memory.max()), "blockwise_nuclei": len(np.unique(blockwise)) - 1,
            "cut_components": summary["cut_components"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=20000, help="side of the large image (0: skip)")
    parser.add_argument("--compare-side", type=int, default=4096, help="side of the side-by-side image (0: skip)")
    parser.add_argument("--block-size", type=int, default=2048)
    parser.add_argument("--work", type=Path, help="folder for the images and outputs (default: a temporary one)")
    parser.add_argument("--mosaic-run", type=Path, help="a trained nuclei run: also compare on a real DSB mosaic")
    parser.add_argument("--mosaic-data", type=Path, default=ROOT.parent / "shared/data/dsb2018/stage1_train")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="large-image-"))
    work.mkdir(parents=True, exist_ok=True)
    run = make_run(work / "run")
    results = {"machine": {"cores": os.cpu_count()}, "block_size": args.block_size}
    if args.compare_side:
        image = work / f"scene-{args.compare_side}.tif"
        write_scene(image, args.compare_side)
        seconds = side_by_side(run, image, work, args.block_size)
        megapixels = args.compare_side**2 / 1e6
        memory, blocks = seconds["in_memory_seconds"], seconds["blockwise_seconds"]
        results["compare"] = {"side": args.compare_side, **seconds, "in_memory_mp_per_s": megapixels / memory,
                              "blockwise_mp_per_s": megapixels / blocks, "ratio": memory / blocks}
        print(f"{args.compare_side}^2 px, TTA off: in memory {megapixels / memory:.3f} MP/s, block-wise "
              f"{megapixels / blocks:.3f} MP/s (statistics, blocks, pyramid, overview): {memory / blocks:.0%}; "
              f"classes identical: {seconds['classes_identical']} ({seconds['pixels_differing']} pixels differ)",
              flush=True)
    if args.side:
        image = work / f"scene-{args.side}.tif"
        written = write_scene(image, args.side)
        large = blockwise_in_fresh_process(run, image, work / "large.zarr", args.block_size)
        results["large"] = {"side": args.side, "write_seconds": written, **large,
                            "mp_per_s": args.side**2 / 1e6 / large["seconds"]}
        print(f"{args.side}^2 px ({image.stat().st_size / 2**30:.2f} GiB TIFF, written in {written:.0f} s): "
              f"{large['seconds']:.0f} s, {args.side**2 / 1e6 / large['seconds']:.2f} MP/s, peak RSS "
              f"{large['peak_rss_gb']:.2f} GB", flush=True)
    if args.mosaic_run:
        results["mosaic"] = mosaic_agreement(args.mosaic_run, args.mosaic_data, work)
        print(f"real DSB mosaic {results['mosaic']['side']}^2 px, blocks of {results['mosaic']['block']}: DSB score of "
              f"block-wise against in-memory {results['mosaic']['map_blockwise_vs_in_memory']:.4f}, nuclei "
              f"{results['mosaic']['blockwise_nuclei']} vs {results['mosaic']['in_memory_nuclei']}", flush=True)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
