"""Accuracy of the project's default recipe against the Kaggle starter baseline, same time budget.

    .venv/bin/python benchmarks/accuracy.py --train ../shared/data/dsb2018_sample/stage1_train \\
        --test ../shared/data/dsb2018_sample/stage1_test --minutes 15
    .venv/bin/python benchmarks/accuracy.py --train ../shared/data/tissue_sample --minutes 6 --image-size 128
    .venv/bin/python benchmarks/accuracy.py --train ... --test ... --evaluate logs/benchmarks/RUN/best.keras --set tta=true

Project: the default configuration (native-resolution crops, 3-class nuclei head with watershed,
or softmax over the tissue classes; tiled prediction at native resolution), trained as
``python -m unet train --max-minutes M`` trains it: the default epochs and early stopping, cut
when the wall-clock budget is spent. (Before 2026-12-01 the benchmark allowed 10,000 epochs and
a patience of 15, so the budget alone ended its runs.)
Baseline, the well-known Kaggle starter ("Keras U-Net starter"): every image resized to
128x128 and scaled by 1/255; its U-Net (16 to 256 filters, ELU, dropout 0.1-0.3, no batch
norm); binary cross-entropy (sparse categorical for tissue), Adam, batch 16, 10% validation
split; threshold 0.5 (argmax for tissue), connected components as nuclei, predictions resized
back. Schedule (``--starter-schedule``): 'kaggle', its own (at most 50 epochs, early stopping
with patience 5, best validation epoch kept); or 'budget', the project's whole budget with the
best validation epoch kept, a stronger baseline than the original. Same precision policy.
Nuclei are scored with the DSB2018 metric on the test folder; tissue with mean and per-class IoU
on the test folder, or on the deterministic 80:20 validation split when there is none.
``--evaluate MODEL`` skips training and scores a saved project model with its run's config
(``--set`` then changes inference settings such as ``tta`` or ``min_nucleus_area``).
``--refit`` also scores the final model, the project's run trained again on its training and
validation images (``python -m unet refit``), as "refit".
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402


def keep_best_weights():
    """Restore, at the end of training, the weights of the epoch with the lowest validation loss."""
    import keras

    class KeepBest(keras.callbacks.Callback):
        def on_train_begin(self, logs=None):
            self.best, self.weights = float("inf"), None

        def on_epoch_end(self, epoch, logs=None):
            if logs and logs.get("val_loss", float("inf")) < self.best:
                self.best, self.weights = logs["val_loss"], self.model.get_weights()

        def on_train_end(self, logs=None):
            if self.weights is not None:
                self.model.set_weights(self.weights)

    return KeepBest()


def run_project(config, train_set, val_set, test_set, seconds: float) -> tuple[list, dict]:
    """The user's path: ``train`` (time budget, tuned thresholds), then ``study.score``."""
    from unet.study import score
    from unet.training import train

    run = train(config.replace(max_minutes=seconds / 60), train_set, val_set, verbose=2)
    return score(run, test_set)[0], {"epochs": len(run.history["loss"]), "train_seconds": run.seconds,
                                     "run": str(run.run_dir)}


def score_saved(run, test_set) -> tuple[list, dict]:
    """Predictions of a saved project run on ``test_set`` (no training)."""
    from unet.study import score

    return score(run, test_set)[0], {"epochs": 0, "train_seconds": 0.0, "run": str(run.run_dir),
                                     "tta": run.config.tta}


def run_refit(run, train_set, val_set, test_set) -> tuple[list, dict]:
    """The project's final model: ``run``'s recipe trained again on its training and validation
    images with the epochs, learning rates and thresholds it chose on validation (``unet refit``)."""
    from unet.study import score
    from unet.training import refit

    final = refit(run, train_set, val_set)
    return score(final, test_set)[0], {"epochs": len(final.history["loss"]), "train_seconds": final.seconds,
                                       "run": str(final.run_dir), "trained_images": len(train_set) + len(val_set)}


def starter_unet(channels: int, num_classes: int):
    """The Kaggle starter's U-Net: 16 to 256 filters, ELU, He init, dropout 0.1-0.3, no batch norm."""
    import keras
    from keras import layers

    def block(x, filters, dropout):
        x = layers.Conv2D(filters, 3, padding="same", activation="elu", kernel_initializer="he_normal")(x)
        x = layers.Dropout(dropout)(x)
        return layers.Conv2D(filters, 3, padding="same", activation="elu", kernel_initializer="he_normal")(x)

    inputs = keras.Input((None, None, channels))
    x, skips = inputs, []
    for filters, dropout in ((16, 0.1), (32, 0.1), (64, 0.2), (128, 0.2)):
        x = block(x, filters, dropout)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    x = block(x, 256, 0.3)
    for (filters, dropout), skip in zip(((128, 0.2), (64, 0.2), (32, 0.1), (16, 0.1)), reversed(skips)):
        x = layers.Conv2DTranspose(filters, 2, strides=2, padding="same")(x)
        x = block(layers.Concatenate()([x, skip]), filters, dropout)
    head = ("sigmoid", 1) if num_classes == 2 else ("softmax", num_classes)
    outputs = layers.Conv2D(head[1], 1, activation=head[0], dtype="float32")(x)
    return keras.Model(inputs, outputs, name="kaggle_starter_unet")


def run_starter(kind: str, num_classes: int, train_set, test_set, seconds: float, seed: int,
                schedule: str = "kaggle") -> tuple[list, dict]:
    """The Kaggle starter recipe: resize to 128, /255, its U-Net, cross-entropy, resize back.

    ``schedule`` 'kaggle': its own (at most 50 epochs, early stopping with patience 5, best
    validation epoch kept), within the budget; 'budget': as many epochs as the budget allows,
    best validation epoch kept (a stronger baseline than the original).
    """
    import keras
    from scipy import ndimage as ndi
    from skimage.transform import resize

    from unet.callbacks import TimeBudget
    from unet.device import precision_policy, resolve_precision
    from unet.nuclei import relabel_instances

    size = (128, 128)
    x = np.stack([resize(np.asarray(im), size, preserve_range=True, anti_aliasing=True) for im in train_set.images])
    x = (x / 255.0).astype(np.float32)
    if kind == "dsb2018":
        y = np.stack([resize(np.asarray(m, np.float32), size, order=1) > 0.5 for m in train_set.masks])[..., None]
        y, loss = y.astype(np.float32), "binary_crossentropy"
    else:
        y = np.stack([resize(np.asarray(m), size, order=0, preserve_range=True, anti_aliasing=False)
                      for m in train_set.masks]).astype(np.int32)[..., None]
        y[y >= num_classes] = 0  # the starter knows no ignore label
        loss = "sparse_categorical_crossentropy"
    keras.utils.set_random_seed(seed)
    callbacks = [TimeBudget(seconds), keep_best_weights()]
    epochs = 10_000
    if schedule == "kaggle":
        epochs = 50
        callbacks.append(keras.callbacks.EarlyStopping(patience=5))
    with precision_policy(resolve_precision("auto")):
        model = starter_unet(x.shape[-1], 2 if kind == "dsb2018" else num_classes)
        model.compile(keras.optimizers.Adam(1e-3), loss=loss)
        start = time.perf_counter()
        history = model.fit(x, y, batch_size=16, epochs=epochs, validation_split=0.1, verbose=0, callbacks=callbacks)
        train_seconds = time.perf_counter() - start
    predictions = []
    for image in test_set.images:
        image = np.asarray(image)
        small = (resize(image, size, preserve_range=True, anti_aliasing=True) / 255.0).astype(np.float32)
        probabilities = np.asarray(model.predict_on_batch(small[None]))[0]
        probabilities = resize(probabilities, image.shape[:2], order=1)
        if kind == "dsb2018":
            predictions.append(relabel_instances(ndi.label(probabilities[..., 0] > 0.5)[0], 1))
        else:
            predictions.append(probabilities.argmax(-1).astype(np.uint8))
    return predictions, {"epochs": len(history.history["loss"]), "train_seconds": train_seconds,
                         "schedule": schedule}


def config_changes(settings: list[str]) -> dict:
    """{'key': value} from ['key=value', ...], each value parsed as the command line's --key would be."""
    from unet.config import Config

    keys, changes = Config().to_dict().keys(), {}
    for setting in settings:
        key, equals, value = setting.partition("=")
        if key not in keys or not equals:
            raise SystemExit(f"--set {setting!r}: expected KEY=VALUE with KEY one of {sorted(keys)}")
        changes[key] = Config.field_parser(key)(value)
    return changes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True)
    parser.add_argument("--test", help="a labelled test folder (default: the validation split)")
    parser.add_argument("--minutes", type=float, default=15.0, help="training budget of each recipe")
    parser.add_argument("--image-size", type=int, default=256, help="the project's crop size")
    parser.add_argument("--stray", default="ignore", choices=["ignore", "error"])
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--logs", default="logs/benchmarks")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--only", choices=["project", "starter"], help="run one recipe only")
    parser.add_argument("--evaluate", type=Path, metavar="MODEL",
                        help="no training: score this saved project model (a run's best.keras) with its config")
    parser.add_argument("--tune", action="store_true",
                        help="with --evaluate: first choose the run's thresholds on its validation images, as "
                             "training does (for a run whose tuning did not happen)")
    parser.add_argument("--refit", action="store_true",
                        help="also score the final model: the project's run trained again on its training and "
                             "validation images (unet refit); its time adds to the run's")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="change a setting of the project's config (repeatable), e.g. contact_width=2")
    parser.add_argument("--starter-schedule", default="kaggle", choices=["kaggle", "budget"],
                        help="the starter's own schedule (50 epochs, patience 5) or the whole budget")
    args = parser.parse_args()

    from unet.config import Config
    from unet.data import detect_layout, load_from_config, split_for_training
    from unet.evaluation import evaluate_classes, evaluate_nuclei
    from unet.device import environment
    from unet.run import Run

    kind = detect_layout(args.train)
    if args.evaluate:  # the saved run's settings (its seed and split included)
        saved = Run.load(args.evaluate)
        config = saved.config
        if config.kind != kind:
            raise SystemExit(f"--evaluate {args.evaluate}: a {config.kind} model, but {args.train} holds {kind} data")
        config = config.replace(data_dir=args.train, stray=args.stray)
        args.only = "project"
    else:
        config = Config(kind=kind, data_dir=args.train, stray=args.stray, seed=args.seed, image_size=args.image_size,
                        logs_dir=args.logs, run_name=f"accuracy-{kind}-{time.strftime('%Y%m%d-%H%M%S')}")
    config = config.replace(**config_changes(args.set))
    dataset = load_from_config(config, progress=False)
    train_set, val_set = split_for_training(dataset, config)
    if args.test:
        test_set = load_from_config(config, args.test, progress=False)
        fit_set = dataset  # the starter trains on everything (its own 10% validation split inside)
    else:
        test_set, fit_set = val_set, train_set
    seconds = args.minutes * 60
    print(f"{kind}: train {args.train} ({len(dataset)} images), test {args.test or 'validation split'} "
          f"({len(test_set)} images), budget {args.minutes:g} min per recipe")

    results = {"date": time.strftime("%Y-%m-%d"), "environment": environment(), "command": " ".join(sys.argv),
               "budget_minutes": args.minutes, "kind": kind, "train": args.train, "test": args.test or "validation"}
    names = [args.only] if args.only else ["project", "starter"]
    if args.refit:
        if "project" not in names:
            raise SystemExit("--refit: refits the project's run; not with --only starter")
        names.insert(names.index("project") + 1, "refit")
    for name in names:
        start = time.perf_counter()
        if name == "project" and args.evaluate:
            saved = dataclasses.replace(saved, config=config)
            if args.tune:
                from unet.training import tune_thresholds

                tune_thresholds(saved, val_set)
            predictions, info = score_saved(saved, test_set)
        elif name == "project":
            predictions, info = run_project(config, train_set, val_set, test_set, seconds)
        elif name == "refit":
            base = saved if args.evaluate else Run.load(results["project"]["run"])
            predictions, info = run_refit(base, train_set, val_set, test_set)
        else:
            predictions, info = run_starter(kind, dataset.num_classes, fit_set, test_set, seconds, args.seed,
                                            args.starter_schedule)
        if kind == "dsb2018":
            summary, _ = evaluate_nuclei(test_set.ids, test_set.instances, predictions, test_set.images)
        else:
            summary, _, _ = evaluate_classes(test_set.ids, test_set.masks, predictions, test_set.class_names)
            summary.pop("confusion")
        results[name] = {**info, "total_seconds": time.perf_counter() - start, **summary}
        print(f"{name}: {json.dumps(results[name], default=str)}", flush=True)

    if args.only:
        if args.json:
            args.json.write_text(json.dumps(results, indent=2, default=str))
        return
    keys = ("map", "ap50", "foreground_iou") if kind == "dsb2018" else ("mean_iou", "pixel_accuracy")
    print(f"\n{'metric':<16} {'project':>8} {'starter':>8} {'ratio':>7}")
    for key in keys:
        p, s = results["project"][key], results["starter"][key]
        print(f"{key:<16} {p:>8.4f} {s:>8.4f} {p / s if s else float('inf'):>6.2f}x")
    if kind != "dsb2018":
        for cls in results["project"]["iou"]:
            p, s = results["project"]["iou"][cls], results["starter"]["iou"][cls]
            print(f"iou {cls:<12} {p if p is not None else float('nan'):>8.4f} {s if s is not None else float('nan'):>8.4f}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
