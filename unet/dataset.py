"""The in-memory dataset: images with their class maps (and nucleus instances), in id order; and the
groups (modality, size) an image is reported by."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .io import DataError

COLOUR_SPREAD = 1.0  # an image whose channels differ by more than this on average (0-255 scale) is colour

DEFAULT_COLORS = np.array(
    [[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], np.uint8)


@dataclass
class Dataset:
    """Images with their class maps (and instance maps for nuclei), in a fixed id order."""

    kind: str
    ids: list[str]
    images: list[np.ndarray]
    masks: list[np.ndarray] | None
    instances: list[np.ndarray] | None = None
    class_names: list[str] = field(default_factory=lambda: ["background", "nucleus"])
    palette: np.ndarray = field(default_factory=lambda: DEFAULT_COLORS[:2].copy())
    source: str = ""
    report: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices) -> "Dataset":
        pick = lambda items: None if items is None else [items[i] for i in indices]  # noqa: E731
        return Dataset(self.kind, pick(self.ids), pick(self.images), pick(self.masks),
                       pick(self.instances), self.class_names, self.palette, self.source, self.report)

    def joined(self, other: "Dataset") -> "Dataset":
        """These images followed by ``other``'s (the same task and classes)."""
        both = lambda mine, theirs: None if mine is None or theirs is None else [*mine, *theirs]  # noqa: E731
        return Dataset(self.kind, self.ids + other.ids, self.images + other.images, both(self.masks, other.masks),
                       both(self.instances, other.instances), self.class_names, self.palette, self.source,
                       self.report)

    def split(self, val_fraction: float = 0.2, seed: int = 42) -> tuple["Dataset", "Dataset"]:
        """Deterministic train/validation split: a seeded permutation of the sorted ids."""
        order = np.random.default_rng(seed).permutation(len(self))
        ranked = sorted(range(len(self)), key=lambda i: self.ids[i])
        order = [ranked[i] for i in order]
        n_val = int(round(len(self) * val_fraction))
        n_val = min(max(n_val, 1 if len(self) > 1 else 0), len(self) - 1)
        return self.subset(sorted(order[n_val:])), self.subset(sorted(order[:n_val]))

    def split_by_ids(self, val_ids) -> tuple["Dataset", "Dataset"]:
        """(the other images, the images named in ``val_ids``); every listed id must exist."""
        wanted = set(val_ids)
        missing = sorted(wanted - set(self.ids))
        if missing:
            raise DataError(f"{self.source}: {len(missing)} validation id(s) not in the dataset, e.g. {missing[0]}")
        val = [i for i, name in enumerate(self.ids) if name in wanted]
        return self.subset([i for i in range(len(self)) if i not in set(val)]), self.subset(val)

    def class_shares(self) -> dict[str, float]:
        """Fraction of labelled pixels in each class (ignored pixels excluded)."""
        counts = np.zeros(256, np.int64)
        for mask in self.masks or []:
            counts += np.bincount(np.asarray(mask).ravel(), minlength=256)
        total = counts[: self.num_classes].sum()
        return {name: float(counts[i] / total) if total else 0.0 for i, name in enumerate(self.class_names)}

    def summary(self) -> str:
        shapes = [im.shape[:2] for im in self.images]
        sizes: dict[str, int] = {}
        for h, w in shapes:
            sizes[f"{h}x{w}"] = sizes.get(f"{h}x{w}", 0) + 1
        lines = [f"{self.kind} dataset: {len(self)} images from {self.source}",
                 "  sizes: " + ", ".join(f"{k} x{v}" for k, v in sorted(sizes.items(), key=lambda kv: -kv[1]))]
        if self.instances is not None:
            counts = [int(inst.max()) for inst in self.instances]
            lines.append(f"  nuclei: {sum(counts)} in all, {np.mean(counts):.1f} per image "
                         f"(min {min(counts)}, max {max(counts)})")
        if self.masks is not None:
            shares = self.class_shares()
            lines.append("  classes: " + ", ".join(f"{n} {100 * s:.1f}%" for n, s in shares.items()))
        lines += [f"  {line}" for line in self.report]
        return "\n".join(lines)


def is_colour(image) -> bool:
    """Whether the image is a colour (stained) image, not gray stored in RGB: its channels differ."""
    rgb = np.asarray(image, np.float32)
    return bool(rgb.ndim == 3 and rgb.shape[2] >= 3 and np.abs(np.diff(rgb[..., :3], axis=2)).mean() > COLOUR_SPREAD)


def modality(image) -> str:
    """'colour' (H&E, colour brightfield), 'brightfield' (gray, bright background) or
    'fluorescence' (gray, dark background): the groups DSB2018 results are reported by."""
    if is_colour(image):
        return "colour"
    return "brightfield" if np.median(np.asarray(image)) > 127 else "fluorescence"


def size_group(image) -> str:
    """The image's size class by its longer side: DSB2018 has 256-360, 512-696 and 1000-1388 px."""
    side = max(np.asarray(image).shape[:2])
    return "small (<500 px)" if side < 500 else "medium (500-999 px)" if side < 1000 else "large (>=1000 px)"
