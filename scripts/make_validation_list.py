"""The fixed validation list of DSB2018 stage1_train ids that decides the project's defaults.

    .venv/bin/python scripts/make_validation_list.py ../shared/data/dsb2018/stage1_train \
        > benchmarks/dsb2018_validation.txt

A fifth of each modality (gray fluorescence, gray brightfield, colour), drawn at random with a
fixed seed, so that every candidate recipe is judged on the same images and on all three kinds;
stage1_test is only ever used to report. Use it with ``--val-list benchmarks/dsb2018_validation.txt``.
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
    parser.add_argument("--fraction", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=2018)
    args = parser.parse_args()
    groups: dict[str, list[str]] = {}
    for sample in sorted(p for p in args.train.iterdir() if p.is_dir()):
        with Image.open(sample / "images" / f"{sample.name}.png") as image:
            groups.setdefault(modality(np.asarray(image.convert("RGB"))), []).append(sample.name)
    rng = np.random.default_rng(args.seed)
    print(f"# validation ids: {args.fraction:.0%} of each modality of {args.train.name} "
          f"(scripts/make_validation_list.py, seed {args.seed})")
    for group, ids in sorted(groups.items()):
        chosen = sorted(rng.choice(ids, max(1, round(args.fraction * len(ids))), replace=False))
        print(f"# {group}: {len(chosen)} of {len(ids)}")
        print("\n".join(chosen))


if __name__ == "__main__":
    main()
