"""Pictures: class colours, overlays (input | prediction | truth), GIFs and training curves."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .io import atomic_path


def to_display(image: np.ndarray) -> np.ndarray:
    """uint8 RGB for display: uint8 as it is, floats (normalized 0..1) clipped and scaled."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).round().astype(np.uint8)
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2)
    return image[..., :3]


def colorize(class_map: np.ndarray, palette: np.ndarray, ignore_color=(128, 128, 128)) -> np.ndarray:
    """RGB picture of a class map; labels beyond the palette (the ignore label) in gray."""
    table = np.tile(np.array(ignore_color, np.uint8), (256, 1))
    table[: len(palette)] = np.asarray(palette, np.uint8)[:256]
    return table[np.asarray(class_map, np.uint8)]


def instance_colors(count: int, seed: int = 0) -> np.ndarray:
    """Distinct, bright colours for ``count`` instances (golden-ratio hues)."""
    import colorsys

    hues = (np.arange(count) * 0.618033988749895 + 0.1 * seed) % 1.0
    return np.array([[round(255 * c) for c in colorsys.hsv_to_rgb(h, 0.85, 1.0)] for h in hues], np.uint8).reshape(-1, 3)


def contour_width(shape) -> int:
    """Contour lines that stay visible when a picture is shown scaled down: 1 px up to 600 px
    a side, one more per 600 px."""
    return 1 + max(shape[:2]) // 600


def draw_instances(image: np.ndarray, labels: np.ndarray, fill_alpha: float = 0.25,
                   line_width: int | None = None) -> np.ndarray:
    """Instance contours (``line_width`` px inside each nucleus; default by image size) in
    distinct colours over the image, with a faint fill."""
    from scipy import ndimage as ndi

    out = to_display(image).astype(np.float32)
    labels = np.asarray(labels).astype(np.int64)
    colors = np.vstack([[0, 0, 0], instance_colors(int(labels.max()))]).astype(np.float32)
    inside = labels > 0
    out[inside] = (1 - fill_alpha) * out[inside] + fill_alpha * colors[labels[inside]]
    window = 2 * (line_width or contour_width(labels.shape)) + 1
    edges = inside & ((ndi.maximum_filter(labels, size=window, mode="nearest") != labels)
                      | (ndi.minimum_filter(labels, size=window, mode="nearest") != labels))
    out[edges] = colors[labels[edges]]
    return out.round().astype(np.uint8)


def draw_classes(image: np.ndarray, class_map: np.ndarray, palette: np.ndarray, alpha: float = 0.45) -> np.ndarray:
    """Class colours blended over the image; class 0 (background) left clear."""
    out = to_display(image).astype(np.float32)
    colors = colorize(class_map, palette).astype(np.float32)
    blend = np.asarray(class_map) > 0
    out[blend] = (1 - alpha) * out[blend] + alpha * colors[blend]
    return out.round().astype(np.uint8)


def _label_strip(width: int, text: str) -> np.ndarray:
    """A white strip with a caption, drawn with PIL's built-in font."""
    from PIL import Image, ImageDraw

    strip = Image.new("RGB", (width, 16), (255, 255, 255))
    ImageDraw.Draw(strip).text((4, 2), text, fill=(0, 0, 0))
    return np.asarray(strip)


def overlay_panel(image: np.ndarray, prediction: np.ndarray, truth: np.ndarray | None = None, *,
                  instances: bool, palette: np.ndarray | None = None) -> np.ndarray:
    """input | prediction over the input | ground truth (when known), captioned, full resolution."""
    draw = (lambda labels: draw_instances(image, labels)) if instances else (
        lambda labels: draw_classes(image, labels, palette))
    panels = [(to_display(image), "input"), (draw(prediction), "prediction")]
    if truth is not None:
        panels.append((draw(truth), "ground truth"))
    gap = np.full((panels[0][0].shape[0] + 16, 4, 3), 255, np.uint8)
    columns = []
    for picture, caption in panels:
        columns += [np.concatenate([_label_strip(picture.shape[1], caption), picture], axis=0), gap]
    return np.concatenate(columns[:-1], axis=1)


def write_gif(path: str | Path, frames: list[np.ndarray], seconds_per_frame: float = 0.8,
              size: tuple[int, int] | None = None) -> Path:
    """An endlessly looping GIF; frames are padded (white) to a common size or resized to ``size``."""
    from PIL import Image

    if not frames:
        raise ValueError("a GIF needs at least one frame")
    if size is None:
        size = (max(f.shape[0] for f in frames), max(f.shape[1] for f in frames))
    images = []
    for frame in frames:
        frame = to_display(frame)
        picture = Image.fromarray(frame)
        scale = min(size[0] / frame.shape[0], size[1] / frame.shape[1], 1.0)
        if scale < 1.0:
            picture = picture.resize((max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale))),
                                     Image.Resampling.LANCZOS)
        canvas = Image.new("RGB", (size[1], size[0]), (255, 255, 255))
        canvas.paste(picture, ((size[1] - picture.width) // 2, (size[0] - picture.height) // 2))
        images.append(canvas)
    path = Path(path)
    with atomic_path(path) as tmp:
        images[0].save(tmp, format="GIF", save_all=True, append_images=images[1:],
                       duration=int(seconds_per_frame * 1000), loop=0)
    return path


def plot_curves(history: dict[str, list[float]], path: str | Path) -> Path:
    """``curves.png``: loss and mean IoU per epoch, training and validation."""
    from matplotlib.figure import Figure

    epochs = np.arange(1, len(history.get("loss", [])) + 1)
    figure = Figure(figsize=(10, 3.6))
    axes = figure.subplots(1, 2)
    for axis, key, title in ((axes[0], "loss", "loss"), (axes[1], "mean_iou", "mean IoU")):
        for prefix, style in (("", "-"), ("val_", "--")):
            if history.get(prefix + key):
                axis.plot(epochs, history[prefix + key], style, label=("validation" if prefix else "training"))
        axis.set_title(title)
        axis.set_xlabel("epoch")
        axis.xaxis.get_major_locator().set_params(integer=True)
        axis.grid(alpha=0.3)
        axis.legend()
    return _save_figure(figure, path)


def _save_figure(figure, path: str | Path) -> Path:
    figure.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=110, format="png")
    return path


def plot_confusion(confusion: np.ndarray, class_names: list[str], path: str | Path) -> Path:
    """Row-normalized confusion matrix (truth rows, prediction columns) with the counts."""
    from matplotlib.figure import Figure

    confusion = np.asarray(confusion, np.float64)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    size = 1.2 + 0.9 * len(class_names)
    figure = Figure(figsize=(size + 1, size))
    axis = figure.subplots()
    shown = axis.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    axis.set_xticks(range(len(class_names)), class_names, rotation=45, ha="right")
    axis.set_yticks(range(len(class_names)), class_names)
    axis.set_xlabel("prediction")
    axis.set_ylabel("truth")
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            axis.text(j, i, f"{rates[i, j]:.2f}\n{int(confusion[i, j])}", ha="center", va="center", fontsize=7,
                      color="white" if rates[i, j] > 0.5 else "black")
    figure.colorbar(shown, ax=axis, fraction=0.046)
    return _save_figure(figure, path)


def plot_samples(dataset, count: int = 4, seed: int = 0):
    """A figure: ``count`` images (top row) and their masks (bottom row; nuclei as instances)."""
    import matplotlib.pyplot as plt

    rng = np.random.default_rng(seed)
    picks = sorted(rng.choice(len(dataset), size=min(count, len(dataset)), replace=False))
    figure, axes = plt.subplots(2, len(picks), figsize=(3.2 * len(picks), 6.4), squeeze=False)
    for column, index in enumerate(picks):
        image = np.asarray(dataset.images[index])
        axes[0, column].imshow(image)
        axes[0, column].set_title(f"{dataset.ids[index][:12]}  {image.shape[0]}x{image.shape[1]}", fontsize=8)
        if dataset.instances is not None:
            labels = np.asarray(dataset.instances[index])
            shown = np.vstack([[0, 0, 0], instance_colors(int(labels.max()))])[labels]
            caption = f"{int(labels.max())} nuclei"
        elif dataset.masks is not None:
            shown, caption = colorize(dataset.masks[index], dataset.palette), "classes"
        else:
            shown, caption = np.zeros_like(image), "no mask"
        axes[1, column].imshow(shown, interpolation="nearest")
        axes[1, column].set_title(caption, fontsize=8)
    for axis in axes.ravel():
        axis.axis("off")
    figure.tight_layout()
    return figure
