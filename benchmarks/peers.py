"""StarDist 2D trained from scratch beside the project: same images, same budget, same metric.

    .venv/bin/python -m pip install -r benchmarks/requirements.txt
    .venv/bin/python benchmarks/peers.py --train ../shared/data/dsb2018/stage1_train \\
        --test ../shared/data/dsb2018/stage1_test --minutes 45 --seed 42 --json stardist-s42.json

StarDist's own recipe (its 2D training example for DSB2018, stardist 0.9.2 / csbdeep 0.8.2):
gray input (colour images averaged over their channels), percentile 1-99.8 normalisation per
image, label holes filled, ``Config2D(n_rays=32, grid=(2,2), train_patch_size=(256,256))``, its
random flip/rot90 + intensity (x0.6-2, +-0.2) + Gaussian noise augmenter, the best validation
loss kept, then ``optimize_thresholds`` (probability and NMS thresholds) on the validation
images. Training stops when the wall-clock budget is spent (the epoch in progress ends). The
split is the project's: the ids of ``--val-list`` are validation, the rest trains. Test images
are scored with the project's DSB2018 metric and the same per-group report as accuracy.py.
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

from unet.evaluation import evaluate_nuclei  # noqa: E402


def gray_normalized(image) -> np.ndarray:
    """StarDist's input: one channel (the mean of the colour channels), percentiles 1-99.8 -> 0-1."""
    from csbdeep.utils import normalize

    image = np.asarray(image, np.float32)
    if image.ndim == 3:
        image = image[..., :3].mean(-1)
    return normalize(image, 1, 99.8, axis=(0, 1)).astype(np.float32)


def augmenter(x, y):
    """StarDist's example augmenter: random flips/rot90, intensity change, a little Gaussian noise."""
    axes = tuple(range(y.ndim))
    perm = tuple(np.random.permutation(axes))
    x, y = x.transpose(perm + tuple(range(y.ndim, x.ndim))), y.transpose(perm)
    for ax in axes:
        if np.random.rand() > 0.5:
            x, y = np.flip(x, axis=ax), np.flip(y, axis=ax)
    x = x * np.random.uniform(0.6, 2) + np.random.uniform(-0.2, 0.2)
    x = x + 0.02 * np.random.uniform(0, 1) * np.random.normal(0, 1, x.shape)
    return x, y


def train_stardist(train_set, val_set, seconds: float, seed: int, basedir: Path, name: str,
                   steps_per_epoch: int = 100, patch: int = 256):
    """A StarDist2D trained on ``train_set`` until ``seconds`` are spent, thresholds tuned on ``val_set``."""
    import keras
    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D

    from unet.callbacks import TimeBudget

    keras.utils.set_random_seed(seed)
    x_train = [gray_normalized(image) for image in train_set.images]
    y_train = [fill_label_holes(np.asarray(labels)) for labels in train_set.instances]
    x_val = [gray_normalized(image) for image in val_set.images]
    y_val = [fill_label_holes(np.asarray(labels)) for labels in val_set.instances]
    config = Config2D(n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=(patch, patch),
                      train_steps_per_epoch=steps_per_epoch, use_gpu=False)
    model = StarDist2D(config, name=name, basedir=str(basedir))
    model.prepare_for_training()
    budget = TimeBudget(seconds)
    model.callbacks.append(budget)
    start = time.perf_counter()
    history = model.train(x_train, y_train, validation_data=(x_val, y_val), augmenter=augmenter,
                          epochs=10_000, seed=seed)
    train_seconds = time.perf_counter() - start
    start = time.perf_counter()
    thresholds = model.optimize_thresholds(x_val, y_val)
    return model, {"epochs": len(history.history["loss"]), "train_seconds": train_seconds,
                   "threshold_seconds": time.perf_counter() - start, "thresholds": thresholds,
                   "steps_per_epoch": steps_per_epoch, "budget_spent": budget.spent}


def predict_stardist(model, images) -> list[np.ndarray]:
    """StarDist's label maps for ``images`` (tiled where the image is large), with its tuned thresholds."""
    predictions = []
    for image in images:
        x = gray_normalized(image)
        labels, _ = model.predict_instances(x, n_tiles=model._guess_n_tiles(x), show_tile_progress=False)
        predictions.append(labels)
    return predictions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", required=True, help="a labelled DSB2018 test folder")
    parser.add_argument("--minutes", type=float, default=45.0, help="training budget")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--val-list", default="benchmarks/dsb2018_validation.txt",
                        help="the validation ids (the project's list); empty: a seeded 20%% split")
    parser.add_argument("--steps-per-epoch", type=int, default=100, help="StarDist's default: 100")
    parser.add_argument("--patch", type=int, default=256, help="training patch side (the recipe: 256)")
    parser.add_argument("--logs", default="logs/benchmarks")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()

    from unet.config import Config
    from unet.data import load_from_config, split_for_training
    from unet.device import environment

    config = Config(kind="dsb2018", data_dir=args.train, stray="ignore", seed=args.seed, val_list=args.val_list)
    train_set, val_set = split_for_training(load_from_config(config, progress=False), config)
    test_set = load_from_config(config, args.test, progress=False)
    print(f"stardist: train {len(train_set)} images, validation {len(val_set)}, test {len(test_set)}, "
          f"budget {args.minutes:g} min", flush=True)
    name = f"stardist-s{args.seed}-{time.strftime('%Y%m%d-%H%M%S')}"
    start = time.perf_counter()
    model, info = train_stardist(train_set, val_set, args.minutes * 60, args.seed, Path(args.logs), name,
                                 args.steps_per_epoch, args.patch)
    predict_start = time.perf_counter()
    predictions = predict_stardist(model, test_set.images)
    info["predict_seconds"] = time.perf_counter() - predict_start
    summary, _ = evaluate_nuclei(test_set.ids, test_set.instances, predictions, test_set.images)
    results = {"date": time.strftime("%Y-%m-%d"), "environment": environment(), "command": " ".join(sys.argv),
               "budget_minutes": args.minutes, "train": args.train, "test": args.test,
               "stardist": {**info, "run": str(Path(args.logs) / name),
                            "total_seconds": time.perf_counter() - start, **summary}}
    print(f"stardist: {json.dumps(results['stardist'], default=str)}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
