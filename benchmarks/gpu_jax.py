"""GPU training and inference speed where TensorFlow is not installed: Keras 3 on its JAX backend.

    KERAS_BACKEND=jax python benchmarks/gpu_jax.py [--json FILE]

Why this exists: the GPU machines lent to this project carry JAX but no TensorFlow, and the
TensorFlow wheel (with its CUDA libraries, gigabytes) cannot be brought to them. The model,
loss and metrics of the package are pure Keras 3, so they run unchanged on the JAX backend,
where every train step is XLA-compiled. What this script cannot run is the tf.data input
pipeline (crops and augmentation): both variants here are fed from NumPy arrays, so the
figures are the model's training speed (loss, metrics and optimizer included), not the
whole project pipeline's. On a GPU machine with TensorFlow, ``benchmarks/throughput.py`` gives
the full figures (precision 'auto' = mixed_float16 and XLA there).

Variants, per base width and batch size, 256x256 images:
  * naive: float32, binary cross-entropy + accuracy (the starter-notebook recipe);
  * project: mixed_float16, the project's 3-class CE + Dice loss and confusion-matrix metrics.
Throughput is wall-clock images over whole ``fit`` calls after one warm-up call (compilation).
Peak: a large 3x3 convolution in the same precision, jitted, timed in the same run.
Inference: ``predict_tiled`` (tile 256, overlap 0.25) at native DSB sizes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("KERAS_BACKEND", "jax")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import numpy as np  # noqa: E402


def conv_peak_tflops(dtype: str, seconds: float = 3.0) -> float:
    """TFLOP/s of a large 3x3 convolution (batch 32, 128x128, 256->256 channels, NHWC)."""
    import jax
    import jax.numpy as jnp

    x = jnp.asarray(np.random.default_rng(0).standard_normal((32, 128, 128, 256)), dtype)
    w = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 256, 256)) * 0.05, dtype)
    conv = jax.jit(lambda a, b: jax.lax.conv_general_dilated(a, b, (1, 1), "SAME",
                                                             dimension_numbers=("NHWC", "HWIO", "NHWC")))
    conv(x, w).block_until_ready()
    flops = 2 * 32 * 128 * 128 * 256 * 256 * 9
    count, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        out = conv(x, w)
        count += 1
    out.block_until_ready()
    return flops * count / (time.perf_counter() - start) / 1e12


def time_fit(model, x, y, batch: int, epochs: int) -> float:
    model.fit(x[: 3 * batch], y[: 3 * batch], batch_size=batch, epochs=1, verbose=0)  # compile
    start = time.perf_counter()
    model.fit(x, y, batch_size=batch, epochs=epochs, verbose=0)
    return epochs * len(x) / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--filters", type=int, nargs="+", default=[16, 32])
    parser.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    parser.add_argument("--images", type=int, default=256, help="training images (256x256) per epoch")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    import jax
    import keras

    from throughput import synthetic_arrays
    from unet.device import precision_policy
    from unet.losses import SegmentationLoss, make_metrics
    from unet.model import build_unet, forward_flops
    from unet.nuclei import boundary_target
    from unet.preprocess import normalize
    from unet.tiling import model_predictor, model_stride, predict_tiled

    devices = jax.devices()
    print(f"devices: {[d.device_kind for d in devices]}; JAX {jax.__version__}, Keras {keras.__version__} "
          f"(backend {keras.backend.backend()}); data: synthetic 256x256 nuclei images")
    peak = {"float32": conv_peak_tflops("float32"), "mixed_float16": conv_peak_tflops("float16")}
    print("peak (large 3x3 conv): " + ", ".join(f"{p} {t:.0f} TFLOP/s" for p, t in peak.items()))

    images, instances = synthetic_arrays(args.images, 256)
    x = np.stack(images).astype(np.float32) / 255.0
    y_binary = (np.stack(instances) > 0).astype(np.float32)[..., None]
    y_classes = np.stack([boundary_target(i) for i in instances]).astype(np.int32)
    results = {"devices": [d.device_kind for d in devices], "jax": jax.__version__, "keras": keras.__version__,
               "peak_tflops": peak, "training": [], "inference": []}
    print(f"\n{'base':>4} {'batch':>5} {'variant':<34} {'img/s':>8} {'GFLOP/img':>9} {'TFLOP/s':>8} "
          f"{'of peak':>7} {'ratio':>6}")
    inference_model = None
    for base in args.filters:
        for batch in args.batches:
            with precision_policy("float32"):
                naive = build_unet(3, 1, base, 4)
                naive.compile(keras.optimizers.Adam(1e-3), "binary_crossentropy", metrics=["accuracy"])
                naive_speed = time_fit(naive, x, y_binary, batch, args.epochs)
            with precision_policy("mixed_float16"):
                project = build_unet(3, 3, base, 4)
                project.compile(keras.optimizers.Adam(1e-3), SegmentationLoss(3),
                                metrics=make_metrics(3, ["b", "i", "e"]))
                project_speed = time_fit(project, x, y_classes, batch, args.epochs)
            fwd = forward_flops(project, 256, 256) / 1e9
            for name, precision, speed in (("naive (float32, BCE)", "float32", naive_speed),
                                           ("project model (mixed_float16)", "mixed_float16", project_speed)):
                achieved = 3 * fwd * speed / 1e3
                print(f"{base:>4} {batch:>5} {name:<34} {speed:>8.1f} {fwd:>9.2f} {achieved:>8.1f} "
                      f"{achieved / peak[precision]:>7.1%} {speed / naive_speed:>5.2f}x")
                results["training"].append({"base_filters": base, "batch": batch, "variant": name,
                                            "images_per_s": speed, "forward_gflop_per_image": fwd,
                                            "achieved_tflops": achieved, "ratio_to_naive": speed / naive_speed})
            if base == 16 and batch == args.batches[0]:
                inference_model = project

    print("\ninference through the tiler (base 16, mixed_float16, tile 256, overlap 0.25, batch 8):")
    rng = np.random.default_rng(0)
    for height, width in [(256, 256), (256, 320), (520, 696), (1024, 1024), (1040, 1388)]:
        image = rng.integers(0, 255, (height, width, 3), dtype=np.uint8)
        predict_fn, stride = model_predictor(inference_model), model_stride(inference_model)
        predict_tiled(predict_fn, normalize(image), 256, 0.25, 8, stride)  # compile
        start = time.perf_counter()
        for _ in range(3):
            predict_tiled(predict_fn, normalize(image), 256, 0.25, 8, stride)
        seconds = (time.perf_counter() - start) / 3
        print(f"  {height}x{width:<5}: {seconds * 1e3:7.1f} ms/image, {height * width / seconds / 1e6:6.1f} MP/s")
        results["inference"].append({"size": f"{height}x{width}", "seconds": seconds,
                                     "megapixels_per_s": height * width / seconds / 1e6})
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
