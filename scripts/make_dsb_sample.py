"""Draw the embedded real nuclei sample (``sample/dsb2018``) from a full DSB2018 copy.

    .venv/bin/python scripts/make_dsb_sample.py ../shared/data/dsb2018 sample/dsb2018

Training images come from ``stage1_train`` (image and instance masks) and test images from
``stage1_test`` (image only, as Kaggle ships it) with their ``stage1_solution.csv`` rows, drawn at random (fixed seed) within strata of modality and image
size so that the sample covers gray fluorescence, gray brightfield and colour (H&E, brightfield)
images of every size the source holds. Files are copied byte for byte; the script is kept so
that the draw can be repeated and checked.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unet.dataset import modality  # noqa: E402

TRAIN_QUOTA = {"fluorescence": 32, "brightfield": 2, "colour": 14}  # 48 training images
TEST_QUOTA = {"fluorescence": 9, "colour": 3}  # 12 test images


def draw(folder: Path, quota: dict[str, int], rng: np.random.Generator) -> list[str]:
    """Ids drawn per modality: one from every image size, the rest in proportion to how often
    each size occurs (largest remainders), each at random within its size."""
    strata: dict[str, dict[tuple, list[str]]] = defaultdict(lambda: defaultdict(list))
    for sample in sorted(p for p in folder.iterdir() if p.is_dir()):
        image = sample / "images" / f"{sample.name}.png"
        with Image.open(image) as opened:
            size = opened.size
            group = modality(np.asarray(opened.convert("RGB")))
        strata[group][size].append(sample.name)
    chosen = []
    for group, count in quota.items():
        sizes = sorted(strata[group].items())
        if count < len(sizes) or count > sum(len(ids) for _, ids in sizes):
            sys.exit(f"{folder}: {count} {group} images cannot cover its {len(sizes)} sizes")
        counts = np.array([len(ids) for _, ids in sizes], np.float64)
        share = (count - len(sizes)) * counts / counts.sum()
        take = 1 + np.floor(share).astype(int)
        for i in np.argsort(-(share - np.floor(share)))[: count - take.sum()]:
            take[i] += 1
        for (_, ids), k in zip(sizes, np.minimum(take, counts.astype(int))):
            chosen += [str(i) for i in rng.choice(ids, int(k), replace=False)]
    return sorted(chosen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path, help="a DSB2018 root with stage1_train, stage1_test, stage1_solution.csv")
    parser.add_argument("out", type=Path)
    parser.add_argument("--seed", type=int, default=2018)
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    if args.out.exists():
        shutil.rmtree(args.out)
    for split, quota in (("stage1_train", TRAIN_QUOTA), ("stage1_test", TEST_QUOTA)):
        for sample_id in draw(args.source / split, quota, rng):
            source, target = args.source / split / sample_id, args.out / split / sample_id
            # Kaggle's stage1_test holds images only: its labels are the solution rows
            for part in ("images", "masks") if split == "stage1_train" else ("images",):
                shutil.copytree(source / part, target / part)
    test_ids = {p.name for p in (args.out / "stage1_test").iterdir()}
    with open(args.source / "stage1_solution.csv", newline="") as handle:
        header, *lines = handle.readlines()
    rows = [line for line in lines if line.split(",", 1)[0] in test_ids]  # verbatim
    with open(args.out / "stage1_solution.csv", "w", newline="") as handle:
        handle.writelines([header, *rows])
    print(f"{args.out}: {len(list((args.out / 'stage1_train').iterdir()))} training and {len(test_ids)} test images, "
          f"{len(rows)} solution rows")


if __name__ == "__main__":
    main()
