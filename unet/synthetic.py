"""The embedded default data: a synthetic dataset in each on-disk layout, deterministic from a seed.

* ``dsb2018/``: nuclei in the Kaggle layout. Fluorescence (gray, saved RGBA or 'L') and
  stained brightfield (RGB) styles, several sizes (non-square too), touching and overlapping
  nuclei, out-of-focus debris that is not a nucleus, one 'L' mask per nucleus in
  ``stage1_train``; ``stage1_test`` is labelled only by ``stage1_solution.csv`` (run-length
  rows), as on Kaggle.
* ``tissue/``: 512x512 RGBA images of four textured classes with 'P' masks and ``classes.csv``.

It is a stand-in so that everything runs offline; it is not a substitute for real data.
"""

from __future__ import annotations

import csv
import hashlib
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.draw import ellipse

from .io import save_png
from .rle import rle_encode

NUCLEI_SIZES = [(128, 128), (160, 224), (192, 192), (256, 256), (256, 320)]
TISSUE_CLASSES = [("background", "#000000"), ("stroma", "#e6194b"), ("epithelium", "#3cb44b"),
                  ("necrosis", "#ffe119")]


def _sample_id(seed: int, split: str, index: int) -> str:
    return hashlib.sha256(f"{seed}/{split}/{index}".encode()).hexdigest()


def nuclei_scene(rng: np.random.Generator, shape: tuple[int, int], style: str):
    """(RGB uint8 image, list of boolean instance masks) of one synthetic nuclei image."""
    h, w = shape
    count = min(60, int(rng.uniform(8, 14) * h * w / 128**2))
    centres, radii, masks = [], [], []
    for _ in range(count * 3):
        if len(masks) >= count:
            break
        a, b = rng.uniform(4, 11), rng.uniform(4, 11)
        if centres and rng.random() < 0.35:  # touching (or overlapping) a neighbour
            k = int(rng.integers(len(centres)))
            angle = rng.uniform(0, 2 * np.pi)
            distance = (radii[k] + max(a, b)) * rng.uniform(0.8, 1.05)
            cy, cx = centres[k][0] + distance * np.sin(angle), centres[k][1] + distance * np.cos(angle)
        else:
            cy, cx = rng.uniform(0, h), rng.uniform(0, w)
        if not (4 < cy < h - 4 and 4 < cx < w - 4):
            continue
        if any(np.hypot(cy - y, cx - x) < 0.75 * (r + max(a, b)) for (y, x), r in zip(centres, radii)):
            continue
        mask = np.zeros(shape, bool)
        mask[ellipse(cy, cx, a, b, shape=shape, rotation=rng.uniform(0, np.pi))] = True
        if mask.sum() < 20:
            continue
        centres.append((cy, cx))
        radii.append(max(a, b))
        masks.append(mask)

    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    texture = ndi.gaussian_filter(rng.normal(0, 1, shape), 1.5)
    signal = np.zeros(shape)
    for mask in masks:
        signal = np.maximum(signal, mask * rng.uniform(0.35, 1.0) * (1 + 0.25 * texture))
    debris = np.zeros(shape)
    for _ in range(int(rng.integers(1, 4))):
        y, x = rng.uniform(0, h), rng.uniform(0, w)
        debris += 0.25 * np.exp(-((yy * max(h, w) - y) ** 2 + (xx * max(h, w) - x) ** 2) / (2 * 14.0**2))
    signal = ndi.gaussian_filter(signal, 1.0) + debris
    gradient = 0.08 * (yy * rng.uniform(-1, 1) + xx * rng.uniform(-1, 1))
    if style == "fluorescence":
        gray = 0.06 + gradient + signal * rng.uniform(0.6, 1.0) + rng.normal(0, 0.035, shape)
        rgb = np.repeat(gray[..., None], 3, axis=2)
    else:
        stain = np.array([0.45, 0.25, 0.55]) * rng.uniform(0.8, 1.2, 3)
        background = np.array([0.93, 0.82, 0.88]) + 0.04 * ndi.gaussian_filter(rng.normal(0, 1, shape), 4)[..., None]
        rgb = background * (1 - signal[..., None] * (1 - stain)) + gradient[..., None] + rng.normal(0, 0.03, (*shape, 3))
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8), masks


def tissue_scene(rng: np.random.Generator, size: int = 512):
    """(RGB uint8 image, uint8 class map) with four textured classes."""
    fields = np.stack([ndi.gaussian_filter(rng.normal(0, 1, (size, size)), 28) for _ in TISSUE_CLASSES])
    fields /= fields.std(axis=(1, 2), keepdims=True)
    fields[0] += 0.3  # a little more background
    labels = fields.argmax(axis=0).astype(np.uint8)
    noise = lambda sigma: ndi.gaussian_filter(rng.normal(0, 1, (size, size)), sigma)  # noqa: E731
    fibres = ndi.gaussian_filter(rng.normal(0, 1, (size, size)), (0.8, 6))
    fibres = fibres / fibres.std()
    dots = (ndi.gaussian_filter(rng.random((size, size)) < 0.012, 1.6) > 0.04).astype(float)
    speckle = (rng.random((size, size)) < 0.004).astype(float)
    base = np.array([[0.95, 0.93, 0.95], [0.88, 0.55, 0.70], [0.78, 0.58, 0.78], [0.88, 0.72, 0.80]])
    base = base * rng.uniform(0.92, 1.05, (1, 3))  # stain variation per image
    rgb = base[labels]
    shade = np.select([labels == 1, labels == 2, labels == 3],
                      [0.10 * fibres, -0.35 * dots + 0.04 * noise(2), -0.3 * ndi.gaussian_filter(speckle, 1) * 8],
                      0.01 * noise(1))
    rgb = rgb + shade[..., None] + rng.normal(0, 0.025, rgb.shape)
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8), labels


def write_sample(out: str | Path, seed: int = 0, n_train: int = 32, n_test: int = 12, n_tissue: int = 16) -> Path:
    """Write ``out/dsb2018`` and ``out/tissue``; return ``out``. Same seed, same bytes."""
    out = Path(out)
    rng = np.random.default_rng(seed)
    dsb = out / "dsb2018"
    solution = []
    for split, count in (("stage1_train", n_train), ("stage1_test", n_test)):
        for i in range(count):
            sample = _sample_id(seed, split, i)
            shape = NUCLEI_SIZES[i % len(NUCLEI_SIZES)]
            style = "brightfield" if i % 3 == 2 else "fluorescence"
            image, masks = nuclei_scene(rng, shape, style)
            folder = dsb / split / sample
            if style == "fluorescence":  # Kaggle's fluorescence images are RGBA; some here are plain gray
                alpha = np.full((*shape, 1), 255, np.uint8)
                pixels = image[..., 0] if i % 4 == 3 else np.concatenate([image, alpha], axis=2)
            else:
                pixels = image
            save_png(folder / "images" / f"{sample}.png", pixels)
            for k, mask in enumerate(masks):
                if split == "stage1_train":
                    save_png(folder / "masks" / f"{_sample_id(seed, sample, k)[:16]}.png", mask.astype(np.uint8) * 255)
                else:
                    solution.append([sample, rle_encode(mask), shape[0], shape[1], "Public"])
    with open(dsb / "stage1_solution.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["ImageId", "EncodedPixels", "Height", "Width", "Usage"])
        writer.writerows(solution)

    tissue = out / "tissue"
    palette = np.array([[int(c[i:i + 2], 16) for i in (1, 3, 5)] for _, c in TISSUE_CLASSES], np.uint8)
    for i in range(n_tissue):
        image, labels = tissue_scene(rng)
        rgba = np.concatenate([image, np.full((*labels.shape, 1), 255, np.uint8)], axis=2)
        save_png(tissue / "images" / f"tissue_{i:03d}.png", rgba)
        save_png(tissue / "masks" / f"tissue_{i:03d}.png", labels, palette=palette)
    with open(tissue / "classes.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["index", "name", "color"])
        writer.writerows([i, name, color] for i, (name, color) in enumerate(TISSUE_CLASSES))
    return out
