"""Training and inference speed, against a naive baseline and against the machine's own peak.

    .venv/bin/python benchmarks/throughput.py                      # everything, ~10 min on 2 cores
    .venv/bin/python benchmarks/throughput.py --skip-inference --filters 16

Training: images/s at 256x256, batch 8, for
  * the project's pipeline: precision 'auto', tf.data random crops with augmentation and
    prefetch, a repeated dataset with steps_per_epoch, the project's loss and metrics;
  * a naive baseline in the same run: the same architecture in float32 built from Keras's
    stock layers (its unfused BatchNormalization), ``model.fit`` on NumPy arrays (BCE,
    accuracy), the usual starter-notebook recipe.
Throughput is wall-clock images over whole ``fit`` calls (epoch boundaries and the end of fit
included; the seconds ``fit`` spends after training ended, tearing down its input pipeline,
are printed beside), after one warm-up call. Each measurement runs in a fresh process, and
the variants are repeated in turn (``--repeats``): the figure is the median, with the range
beside it. FLOPs: forward convolution FLOPs per image (x3 for a training step). Peak: a large
3x3 convolution in the same precision, timed in the same run.
Inference: the tiler on native DSB sizes. Data: synthetic images (speed does not depend on
content).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def conv_peak_gflops(precision: str, seconds: float = 4.0) -> float:
    """GFLOP/s of a large 3x3 convolution (batch 8, 128x128, 128->128 channels) in ``precision``."""
    import tensorflow as tf

    dtype = {"mixed_bfloat16": tf.bfloat16, "mixed_float16": tf.float16}.get(precision, tf.float32)
    x = tf.random.normal([8, 128, 128, 128], dtype=tf.float32)
    w = tf.random.normal([3, 3, 128, 128], dtype=tf.float32)
    x, w = tf.cast(x, dtype), tf.cast(w, dtype)
    conv = tf.function(lambda a, b: tf.nn.conv2d(a, b, 1, "SAME"))
    conv(x, w).numpy()
    flops = 2 * 8 * 128 * 128 * 128 * 128 * 9
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        conv(x, w).numpy()
        count += 1
    return flops * count / (time.perf_counter() - start) / 1e9


def end_of_training_clock():
    """A callback that notes when training ended, to time what ``fit`` does after it (teardown)."""
    import keras

    class Clock(keras.callbacks.Callback):
        def on_train_end(self, logs=None):
            self.end = time.perf_counter()

    return Clock()


def synthetic_arrays(count: int, size: int, seed: int = 0):
    from unet.synthetic import nuclei_scene

    rng = np.random.default_rng(seed)
    images, targets = [], []
    for _ in range(count):
        image, masks = nuclei_scene(rng, (size, size), "fluorescence")
        instances = np.zeros((size, size), np.uint16)
        for k, mask in enumerate(masks, start=1):
            instances[mask & (instances == 0)] = k
        images.append(image)
        targets.append(instances)
    return images, targets


def train_project(base: int, images, instances, steps: int, epochs: int) -> dict:
    """The project's training pipeline; returns images/s over whole fit calls."""
    import keras

    from unet.config import Config
    from unet.losses import SegmentationLoss, make_metrics
    from unet.model import build_unet
    from unet.device import keep_freed_memory, precision_policy, resolve_precision
    from unet.nuclei import boundary_target
    from unet.pipeline import make_train_dataset, prepare_arrays

    keep_freed_memory()  # as training does

    config = Config(image_size=256, batch_size=8, base_filters=base, steps_per_epoch=steps, epochs=epochs,
                    color_mode="rgb")  # 3 input channels, as the baseline
    precision = resolve_precision("auto")
    targets = [boundary_target(i) for i in instances]
    with precision_policy(precision):
        arrays, target_arrays, ranges = prepare_arrays(images, targets, config)
        data = make_train_dataset(arrays, target_arrays, ranges, config, config.batch_size)
        model = build_unet(3, 3, base, 4)
        model.compile(keras.optimizers.Adam(1e-3), SegmentationLoss(3), metrics=make_metrics(3, ["b", "i", "e"]))
        model.fit(data, epochs=1, steps_per_epoch=3, verbose=0)  # warm-up: tracing
        clock, start = end_of_training_clock(), time.perf_counter()
        model.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=0, callbacks=[clock])
        seconds = time.perf_counter() - start
    return {"precision": precision, "images_per_s": epochs * steps * 8 / seconds, "seconds": seconds,
            "teardown_seconds": time.perf_counter() - clock.end, "model": model}


def train_naive(base: int, images, instances, epochs: int) -> dict:
    """float32, model.fit on NumPy arrays, BCE + accuracy, Keras's own layers (unfused batch norm)."""
    import keras

    from unet.device import precision_policy
    from unet.model import build_unet

    x = np.stack(images).astype(np.float32) / 255.0
    y = (np.stack(instances) > 0).astype(np.float32)[..., None]
    with precision_policy("float32"):
        model = build_unet(3, 1, base, 4, fast_layers=False)
        model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", metrics=["accuracy"])
        model.fit(x[:24], y[:24], batch_size=8, epochs=1, verbose=0)  # warm-up: tracing
        clock, start = end_of_training_clock(), time.perf_counter()
        model.fit(x, y, batch_size=8, epochs=epochs, verbose=0, callbacks=[clock])
        seconds = time.perf_counter() - start
    return {"precision": "float32", "images_per_s": epochs * len(x) / seconds, "seconds": seconds,
            "teardown_seconds": time.perf_counter() - clock.end}


def inference_speed(model, sizes, repeats: int = 2) -> list[dict]:
    """Seconds per image through the tiler (tile 256, overlap 0.25, batch 8) and the FLOPs it
    runs: every tile's forward pass, the overlaps and the padding included."""
    from unet.model import forward_flops
    from unet.preprocess import normalize
    from unet.tiling import model_predictor, model_stride, predict_tiled, tile_layout

    rows = []
    rng = np.random.default_rng(0)
    for height, width in sizes:
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        predict_fn, stride = model_predictor(model), model_stride(model)
        predict_tiled(predict_fn, normalize(image), 256, 0.25, 8, stride)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            predict_tiled(predict_fn, normalize(image), 256, 0.25, 8, stride)
        seconds = (time.perf_counter() - start) / repeats
        layout = tile_layout(height, width, 256, 0.25, model_stride(model))
        executed = len(layout["starts"]) * forward_flops(model, *layout["tile"]) / 1e9
        rows.append({"size": f"{height}x{width}", "seconds": seconds, "images_per_s": 1 / seconds,
                     "megapixels_per_s": height * width / seconds / 1e6, "tiles": len(layout["starts"]),
                     "executed_gflop_per_image": executed, "executed_gflops": executed / seconds})
    return rows


def worker(args) -> dict:
    """One measurement in this (fresh) process: 'peak', 'project', 'naive' or 'inference'."""
    from unet.device import precision_policy, resolve_precision
    from unet.model import build_unet, forward_flops

    if args.worker == "peak":
        return {p: conv_peak_gflops(p) for p in dict.fromkeys(["float32", resolve_precision("auto")])}
    if args.worker == "inference":
        precision = resolve_precision("auto")
        with precision_policy(precision):
            model = build_unet(3, 3, 16, 4)
        sizes = [(256, 256), (256, 320), (520, 696), (1024, 1024), (1040, 1388)]
        return {"precision": precision, "rows": inference_speed(model, sizes)}
    base = args.filters[0]
    images, instances = synthetic_arrays(args.images, 256)
    if args.worker == "project":
        run = train_project(base, images, instances, args.images // 8, args.epochs)
        run["forward_gflop_per_image"] = forward_flops(run.pop("model"), 256, 256) / 1e9
        return run
    return train_naive(base, images, instances, args.epochs)


def _steady(runs: list[dict]) -> float:
    """Median images/s with the seconds after training ended (pipeline teardown) left out."""
    return float(np.median([r["images_per_s"] * r["seconds"] / (r["seconds"] - r["teardown_seconds"]) for r in runs]))


def spawn(kind: str, args, base: int | None = None) -> dict:
    """Run one measurement in a fresh Python process (no threads or memory left over from another)."""
    import subprocess

    command = [sys.executable, __file__, "--worker", kind, "--images", str(args.images), "--epochs", str(args.epochs)]
    if base is not None:
        command += ["--filters", str(base)]
    done = subprocess.run(command, capture_output=True, text=True)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode or not lines:
        raise RuntimeError(f"worker {kind} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filters", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--images", type=int, default=96, help="training images (256x256) per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=3, help="interleaved repeats of each training measurement")
    parser.add_argument("--skip-training", action="store_true")
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--worker", choices=["peak", "project", "naive", "inference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print("RESULT " + json.dumps(worker(args), default=str))
        return

    from unet.device import environment

    env = environment()
    print(f"machine: {os.cpu_count()} cores, GPUs: {env['gpus'] or 'none'}, TF {env['tensorflow']}, "
          f"Keras {env['keras']}; data: synthetic 256x256 nuclei images; every figure from a fresh process")
    peak = spawn("peak", args)
    print("peak (large 3x3 conv): " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peak.items()))
    results = {"environment": env, "peak_gflops": peak, "training": [], "inference": []}

    bases = [] if args.skip_training else args.filters
    runs = {(base, variant): [] for base in bases for variant in ("project", "naive")}
    for repeat in range(args.repeats):  # interleaved, so that slow spells of the machine hit both variants
        for base, variant in runs:
            runs[base, variant].append(spawn(variant, args, base))
    if bases:
        print(f"\n{'base':>4} {'variant':<28} {'img/s median (min-max)':>24} {'GFLOP/img':>10} {'GFLOP/s':>8} "
              f"{'of peak':>8} {'ratio':>6} {'end-of-fit s':>12} {'ratio w/o that':>15}")
    for base in bases:
        naive_speed = float(np.median([r["images_per_s"] for r in runs[base, "naive"]]))
        fwd = runs[base, "project"][0]["forward_gflop_per_image"]
        for variant, name in (("project", "project (auto precision)"), ("naive", "naive (float32, NumPy fit)")):
            speeds = [r["images_per_s"] for r in runs[base, variant]]
            speed, precision = float(np.median(speeds)), runs[base, variant][0]["precision"]
            achieved = 3 * fwd * speed
            spread = f"{speed:.2f} ({min(speeds):.2f}-{max(speeds):.2f})"
            print(f"{base:>4} {name:<28} {spread:>24} {fwd:>10.2f} {achieved:>8.0f} "
                  f"{achieved / peak[precision]:>8.0%} {speed / naive_speed:>5.2f}x "
                  f"{np.median([r['teardown_seconds'] for r in runs[base, variant]]):>12.2f} "
                  f"{_steady(runs[base, variant]) / _steady(runs[base, 'naive']):>14.2f}x")
            results["training"].append({"base_filters": base, "variant": name, "precision": precision,
                                        "images_per_s": speed, "images_per_s_runs": speeds,
                                        "forward_gflop_per_image": fwd, "achieved_gflops": achieved,
                                        "fraction_of_peak": achieved / peak[precision],
                                        "ratio_to_naive": speed / naive_speed,
                                        "end_of_fit_seconds": [r["teardown_seconds"] for r in runs[base, variant]]})

    if not args.skip_inference:
        inference = spawn("inference", args)
        print(f"\ninference through the tiler (base 16, tile 256, overlap 0.25, batch 8, {inference['precision']}):")
        peak_gflops = peak[inference["precision"]]
        print(f"  {'size':>10} {'tiles':>5} {'s/image':>8} {'img/s':>6} {'MP/s':>6} {'GFLOP/img':>9} "
              f"{'GFLOP/s':>8} {'of peak':>7}   (GFLOP: every tile's forward pass, overlap and padding included)")
        for row in inference["rows"]:
            row["fraction_of_peak"] = row["executed_gflops"] / peak_gflops
            print(f"  {row['size']:>10} {row['tiles']:>5} {row['seconds']:>8.3f} {row['images_per_s']:>6.2f} "
                  f"{row['megapixels_per_s']:>6.2f} {row['executed_gflop_per_image']:>9.1f} "
                  f"{row['executed_gflops']:>8.0f} {row['fraction_of_peak']:>7.0%}")
            results["inference"].append(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
