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
included), after one warm-up call. FLOPs: forward convolution FLOPs per image (x3 for a
training step). Peak: a large 3x3 convolution in the same precision, timed in the same run.
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
    from unet.training import (boundary_target, make_train_dataset, precision_policy, prepare_arrays,
                               resolve_precision)

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
        start = time.perf_counter()
        model.fit(data, epochs=epochs, steps_per_epoch=steps, verbose=0)
        seconds = time.perf_counter() - start
    return {"precision": precision, "images_per_s": epochs * steps * 8 / seconds, "seconds": seconds, "model": model}


def train_naive(base: int, images, instances, epochs: int) -> dict:
    """float32, model.fit on NumPy arrays, BCE + accuracy, Keras's own layers (unfused batch norm)."""
    import keras

    from unet.model import build_unet
    from unet.training import precision_policy

    x = np.stack(images).astype(np.float32) / 255.0
    y = (np.stack(instances) > 0).astype(np.float32)[..., None]
    with precision_policy("float32"):
        model = build_unet(3, 1, base, 4, fused_batch_norm=False)
        model.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", metrics=["accuracy"])
        model.fit(x[:24], y[:24], batch_size=8, epochs=1, verbose=0)  # warm-up: tracing
        start = time.perf_counter()
        model.fit(x, y, batch_size=8, epochs=epochs, verbose=0)
        seconds = time.perf_counter() - start
    return {"precision": "float32", "images_per_s": epochs * len(x) / seconds, "seconds": seconds}


def inference_speed(model, sizes, repeats: int = 2) -> list[dict]:
    from unet.inference import predict_tiled

    rows = []
    rng = np.random.default_rng(0)
    for height, width in sizes:
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        predict_tiled(model, image, tile_size=256, overlap=0.25, batch_size=8)  # warm-up
        start = time.perf_counter()
        for _ in range(repeats):
            predict_tiled(model, image, tile_size=256, overlap=0.25, batch_size=8)
        seconds = (time.perf_counter() - start) / repeats
        rows.append({"size": f"{height}x{width}", "seconds": seconds, "megapixels_per_s": height * width / seconds / 1e6})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filters", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--images", type=int, default=96, help="training images (256x256) per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--skip-inference", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()

    import tensorflow as tf

    from unet.model import forward_flops
    from unet.training import environment, resolve_precision

    env = environment()
    device = tf.config.list_physical_devices("GPU")
    print(f"machine: {os.cpu_count()} cores, GPUs: {[d.name for d in device] or 'none'}, TF {env['tensorflow']}, "
          f"Keras {env['keras']}; data: synthetic 256x256 nuclei images")
    precision = resolve_precision("auto")
    peak = {p: conv_peak_gflops(p) for p in dict.fromkeys(["float32", precision])}
    print("peak (large 3x3 conv): " + ", ".join(f"{p} {g:.0f} GFLOP/s" for p, g in peak.items()))

    images, instances = synthetic_arrays(args.images, 256)
    steps = args.images // 8
    results = {"environment": env, "peak_gflops": peak, "training": [], "inference": []}
    print(f"\n{'base':>4} {'variant':<28} {'img/s':>7} {'GFLOP/img':>10} {'GFLOP/s':>8} {'of peak':>8} {'ratio':>6}")
    model_for_inference = None
    for base in args.filters:
        project = train_project(base, images, instances, steps, args.epochs)
        naive = train_naive(base, images, instances, args.epochs)
        fwd = forward_flops(project["model"], 256, 256) / 1e9
        for name, run in (("project (auto precision)", project), ("naive (float32, NumPy fit)", naive)):
            achieved = 3 * fwd * run["images_per_s"]
            ratio = run["images_per_s"] / naive["images_per_s"]
            print(f"{base:>4} {name:<28} {run['images_per_s']:>7.2f} {fwd:>10.2f} {achieved:>8.0f} "
                  f"{achieved / peak[run['precision']]:>8.0%} {ratio:>5.2f}x")
            results["training"].append({"base_filters": base, "variant": name, "precision": run["precision"],
                                        "images_per_s": run["images_per_s"], "forward_gflop_per_image": fwd,
                                        "achieved_gflops": achieved, "fraction_of_peak": achieved / peak[run["precision"]],
                                        "ratio_to_naive": ratio})
        if base == 16:
            model_for_inference = project["model"]

    if not args.skip_inference and model_for_inference is not None:
        print("\ninference through the tiler (base 16, tile 256, overlap 0.25, batch 8, "
              f"{results['training'][0]['precision']}):")
        sizes = [(256, 256), (256, 320), (520, 696), (1024, 1024), (1040, 1388)]
        fwd_per_pixel = forward_flops(model_for_inference, 256, 256) / 256**2
        for row in inference_speed(model_for_inference, sizes):
            achieved = fwd_per_pixel * row["megapixels_per_s"] * 1e6 / 1e9
            row["achieved_gflops"] = achieved
            print(f"  {row['size']:>10}: {row['seconds']:.3f} s/image, {row['megapixels_per_s']:.2f} MP/s, "
                  f"~{achieved:.0f} GFLOP/s (counting padded tiles: more)")
            results["inference"].append(row)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
