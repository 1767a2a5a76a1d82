r"""Does predicting at another resolution help a trained nuclei model?

For each scale s the image is resized by s (smoothed when shrunk), its probabilities are
predicted (the run's tiling and TTA) and resized back (``inference.probabilities_at_scale``);
the thresholds are tuned again on the run's validation images at that scale (as training does
at scale 1), and those validation images decide. The test folder is scored with each scale's
thresholds, to report only. The scales are of the image as it is, also for a run trained with
``nucleus_diameter``; for such a run the script first reports how close the scale its prediction
estimates per image (``inference.nucleus_scale``) comes to the one its true nuclei give, on the
validation images, and their mAP at either scale (``--scales ''`` reports only that).

    python benchmarks/inference_scale.py --model logs/<run> --train ../shared/data/dsb2018/stage1_train \
        --test ../shared/data/dsb2018/stage1_test --scales 1,0.75,1.5,2 --json scale.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unet.data import load_from_config, split_for_training  # noqa: E402
from unet.evaluation import evaluate_nuclei  # noqa: E402
from unet.inference import nucleus_scale, probabilities_at_scale  # noqa: E402
from unet.io import write_text_atomic  # noqa: E402
from unet.nuclei import nuclei_from_probabilities  # noqa: E402
from unet.run import Run  # noqa: E402
from unet.scale import median_diameter, scale_factor  # noqa: E402
from unet.tuning import tune_nuclei_thresholds  # noqa: E402

THRESHOLDS = ("seed_threshold", "foreground_threshold", "min_nucleus_area")


def score(dataset, probabilities, thresholds: dict) -> dict:
    labels = [nuclei_from_probabilities(p, thresholds["min_nucleus_area"], thresholds["seed_threshold"],
                                        thresholds["foreground_threshold"]) for p in probabilities]
    summary, _ = evaluate_nuclei(dataset.ids, dataset.instances, labels, dataset.images)
    return {"map": summary["map"], "by_group": summary["map_by_group"], "by_size": summary["map_by_size"]}


def estimated_scales(model, config, dataset) -> dict:
    """How far the scale estimated per image is from the one its true nuclei give (log2 ratios),
    and the mAP of ``dataset`` predicted at either, with the thresholds tuned again for each."""
    truths = [np.asarray(truth) for truth in dataset.instances]
    estimated = [nucleus_scale(model, config, np.asarray(image)) for image in dataset.images]
    true = [scale_factor(median_diameter(truth), config.nucleus_diameter) for truth in truths]
    errors = np.log2(np.array(estimated) / np.array(true))
    report = {"images": len(errors), "median_abs_log2_error": round(float(np.median(np.abs(errors))), 4),
              "within_10_percent": round(float(np.mean(np.abs(errors) <= np.log2(1.1))), 4),
              "within_25_percent": round(float(np.mean(np.abs(errors) <= np.log2(1.25))), 4),
              "too_small": int(np.sum(errors < -np.log2(1.25))), "too_large": int(np.sum(errors > np.log2(1.25)))}
    for name, factors in (("estimated", estimated), ("true", true)):
        probabilities = [probabilities_at_scale(model, config, np.asarray(image), factor)
                         for image, factor in zip(dataset.images, factors)]
        report[f"map_at_{name}_scales"] = round(tune_nuclei_thresholds(probabilities, truths, config)["validation_map"], 4)
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, type=Path, help="a run folder or its best.keras")
    parser.add_argument("--train", required=True, help="the training folder the run's validation ids come from")
    parser.add_argument("--test", required=True, help="a labelled test folder (reported, never chosen on)")
    parser.add_argument("--scales", default="1,0.75,1.5")
    parser.add_argument("--npy-dir", default="npy")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()

    run = Run.load(args.model)
    config = run.config.replace(data_dir=args.train, npy_dir=args.npy_dir)
    if config.kind != "dsb2018":
        parser.error(f"{args.model}: a nuclei (dsb2018) run is needed, not {config.kind!r}")
    _, validation = split_for_training(load_from_config(config, progress=False), config)
    test = load_from_config(config, args.test, progress=False)
    results, estimates = {}, None
    if config.nucleus_diameter:
        estimates = estimated_scales(run.model, config, validation)
        print(f"scale per image estimated for nuclei {config.nucleus_diameter:g} px across, against the true "
              f"nuclei's, on {estimates['images']} validation images: {estimates}", flush=True)
    for scale in (float(s) for s in args.scales.split(",") if s):
        start = time.perf_counter()
        val_probabilities = [probabilities_at_scale(run.model, config, im, scale) for im in validation.images]
        tuned = tune_nuclei_thresholds(val_probabilities, [np.asarray(x) for x in validation.instances], config)
        thresholds = {key: tuned[key] for key in THRESHOLDS}
        test_probabilities = [probabilities_at_scale(run.model, config, im, scale) for im in test.images]
        results[str(scale)] = {"thresholds": thresholds, "validation": score(validation, val_probabilities, thresholds),
                               "test": score(test, test_probabilities, thresholds),
                               "seconds": round(time.perf_counter() - start, 1)}
        row = results[str(scale)]
        print(f"scale {scale:g}: validation mAP {row['validation']['map']:.4f}  test mAP {row['test']['map']:.4f}  "
              f"thresholds {thresholds}  ({row['seconds']} s)", flush=True)
    best = max(results, key=lambda s: results[s]["validation"]["map"]) if results else None
    if best is not None:
        print(f"chosen on validation: scale {best}")
    if args.json:
        write_text_atomic(args.json, json.dumps({"chosen": best, "scales": results, "estimated_scales": estimates},
                                                indent=1) + "\n")


if __name__ == "__main__":
    main()
