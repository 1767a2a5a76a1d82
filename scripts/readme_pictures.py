"""README's pictures from a ``make demo`` run (nuclei on the embedded real sample, tissue synthetic).

    .venv/bin/python scripts/readme_pictures.py            # after make demo
    .venv/bin/python scripts/readme_pictures.py --output output --images images

The nuclei overlay shows two test images, a gray fluorescence one and a colour one, each as a
crop around its densest nuclei enlarged 2x (so that one-pixel contours stay visible at README
width): input | prediction | ground truth. The GIFs, curves and tissue pictures are copied
from the run and prediction folders the demo wrote.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageSequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from unet.config import Config  # noqa: E402
from unet.data import load_folder  # noqa: E402
from unet.dataset import modality  # noqa: E402
from unet.io import open_image, save_png  # noqa: E402
from unet.visuals import overlay_panel, write_gif  # noqa: E402


def densest_window(labels: np.ndarray, size: int) -> tuple[int, int]:
    """Top-left corner of the ``size`` x ``size`` window holding the most nucleus centres."""
    from scipy import ndimage as ndi

    ids = np.unique(labels)[1:]
    centres = np.array(ndi.center_of_mass(labels > 0, labels, ids)).reshape(-1, 2)
    height, width = labels.shape
    best, corner = -1, (0, 0)
    for y in range(0, max(1, height - size + 1), 16):
        for x in range(0, max(1, width - size + 1), 16):
            inside = ((centres[:, 0] >= y) & (centres[:, 0] < y + size) & (centres[:, 1] >= x)
                      & (centres[:, 1] < x + size)).sum()
            if inside > best:
                best, corner = inside, (y, x)
    return corner


def zoomed_panel(image, prediction, truth, size: int = 160, zoom: int = 2) -> np.ndarray:
    """The overlay panel of the densest ``size`` crop, enlarged ``zoom`` times (nearest neighbour)."""
    y, x = densest_window(truth, size)
    crop = (slice(y, y + size), slice(x, x + size))
    panel = overlay_panel(image[crop], prediction[crop], truth[crop], instances=True)
    return np.repeat(np.repeat(panel, zoom, axis=0), zoom, axis=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", type=Path, default=Path("output"), help="make demo's output folder")
    parser.add_argument("--images", type=Path, default=Path("images"))
    args = parser.parse_args()
    nuclei = json.loads((args.output / "nuclei-summary.json").read_text())
    predictions = Path(nuclei["pictures"]).parent
    test = load_folder(Path(__file__).resolve().parents[1] / "sample" / "dsb2018", Config(), require_labels=True)
    rows = []
    for wanted in (False, True):  # a gray fluorescence image, then a colour one: the most nuclei of each
        picks = [i for i, image in enumerate(test.images) if (modality(image) == "colour") == wanted]
        index = max(picks, key=lambda i: int(np.asarray(test.instances[i]).max()))
        prediction = np.asarray(open_image(predictions / "masks" / f"{test.ids[index]}.png")).astype(np.int64)
        rows.append(zoomed_panel(np.asarray(test.images[index]), prediction, np.asarray(test.instances[index])))
    gap = np.full((8, rows[0].shape[1], 3), 255, np.uint8)
    save_png(args.images / "nuclei_overlay.png", np.concatenate([rows[0], gap, rows[1]], axis=0))
    run = Path(nuclei.get("run") or Path("logs") / predictions.parent.name)
    for name in ("input.gif", "output.gif"):  # README copies at 320 px, a third of the bytes
        with Image.open(predictions / name) as gif:
            frames = [np.asarray(frame.convert("RGB")) for frame in ImageSequence.Iterator(gif)]
        write_gif(args.images / f"nuclei_{name}", frames, size=(320, 320))
    copies = {run / "training.gif": "nuclei_training.gif", run / "curves.png": "nuclei_curves.png"}
    tissue = json.loads((args.output / "tissue-summary.json").read_text())
    tissue_predictions = Path(tissue["pictures"]).parent
    copies[tissue_predictions.parent / "confusion.png"] = "tissue_confusion.png"
    for source, name in copies.items():
        shutil.copyfile(source, args.images / name)
    overlay = open_image(sorted((tissue_predictions / "overlays").glob("*.png"))[0]).convert("RGB")
    half = overlay.resize((overlay.width // 2, overlay.height // 2), Image.Resampling.LANCZOS)
    save_png(args.images / "tissue_overlay.png", np.asarray(half))
    print(f"written to {args.images}: nuclei_overlay.png (from {predictions}), GIFs, curves, tissue pictures")


if __name__ == "__main__":
    main()
