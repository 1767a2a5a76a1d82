"""A learning-curve point: a stage1_train folder of symbolic links holding every validation id and
a share of each modality of the other images, drawn at random with a fixed seed.

    .venv/bin/python scripts/make_training_subset.py ../shared/data/dsb2018/stage1_train \\
        benchmarks/dsb2018_validation.txt 0.75 /tmp/subset/stage1_train

Train on it with the same validation list and the full set's steps per epoch
(``accuracy.py --train /tmp/subset/stage1_train --set val_list=... --set steps_per_epoch=140``):
the validation score then says what a quarter fewer training images costs, with the same
validation images and the same number of training steps.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unet.dataset import modality  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("train", type=Path, help="a stage1_train folder")
    parser.add_argument("val_list", type=Path, help="the validation ids, all kept")
    parser.add_argument("share", type=float, help="the share of each modality's other images kept")
    parser.add_argument("out", type=Path, help="the new stage1_train folder (must not exist)")
    parser.add_argument("--seed", type=int, default=7)
    args = parser.parse_args()
    val = {line.split("#", 1)[0].strip() for line in args.val_list.read_text().splitlines()} - {""}
    groups: dict[str, list[str]] = {}
    for sample in sorted(p for p in args.train.iterdir() if p.is_dir() and p.name not in val):
        with Image.open(sample / "images" / f"{sample.name}.png") as image:
            groups.setdefault(modality(np.asarray(image.convert("RGB"))), []).append(sample.name)
    rng, kept = np.random.default_rng(args.seed), set(val)
    for group, ids in sorted(groups.items()):
        chosen = rng.choice(ids, round(args.share * len(ids)), replace=False)
        print(f"{group}: {len(chosen)} of {len(ids)}")
        kept |= set(chosen)
    args.out.mkdir(parents=True)
    for name in sorted(kept):
        (args.out / name).symlink_to((args.train / name).resolve())
    print(f"{args.out}: {len(kept)} images ({len(val)} validation)")


if __name__ == "__main__":
    main()
