"""Prediction at native resolution: tiled sliding window with smooth blending, test-time
augmentation, and the step from probabilities to nuclei (instances) or tissue classes."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from .progress import bars_shown
from .training import model_input, normalize, resolve_color_mode


def model_stride(model) -> int:
    """The size multiple a model needs (2**depth for the U-Net, 1 for anything without a SizeCheck)."""
    for layer in getattr(model, "layers", []):
        if hasattr(layer, "multiple"):
            return int(layer.multiple)
    return 1


def _tile_starts(length: int, tile: int, step: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    return starts + [length - tile]


def _axis_weights(tile: int, start: int, length: int, margin: int, ramp: int) -> np.ndarray:
    """1-D blending weights of one tile: zero within ``margin`` of an edge that lies inside the
    image, then a raised-cosine ramp of ``ramp`` pixels up to 1; image edges get full weight."""
    weights = np.ones(tile, np.float64)
    ramp_up = np.sin(np.linspace(0, np.pi / 2, ramp + 2)[1:-1]) ** 2 if ramp else np.zeros(0)
    if start > 0:
        weights[:margin] = 0
        weights[margin:margin + ramp] = ramp_up
    if start + tile < length:
        weights[tile - margin:] = 0
        weights[tile - margin - ramp:tile - margin] = np.minimum(weights[tile - margin - ramp:tile - margin],
                                                                 ramp_up[::-1])
    return weights


DIHEDRAL = [(k, flip) for flip in (False, True) for k in range(4)]


def _transform(batch: np.ndarray, k: int, flip: bool) -> np.ndarray:
    batch = np.flip(batch, axis=2) if flip else batch
    return np.rot90(batch, k, axes=(1, 2))


def _untransform(batch: np.ndarray, k: int, flip: bool) -> np.ndarray:
    batch = np.rot90(batch, -k, axes=(1, 2))
    return np.flip(batch, axis=2) if flip else batch


def predict_batch(model, batch: np.ndarray, tta: bool = False) -> np.ndarray:
    """Model probabilities for a batch; with ``tta`` the mean over the 8 flips and rotations."""
    transforms = DIHEDRAL if tta else DIHEDRAL[:1]
    total = None
    for k, flip in transforms:
        out = np.asarray(model.predict_on_batch(np.ascontiguousarray(_transform(batch, k, flip))), np.float32)
        out = _untransform(out, k, flip)
        total = out if total is None else total + out
    return total / len(transforms)


def tile_layout(height: int, width: int, tile_size: int, overlap: float, stride: int = 1) -> dict:
    """Where ``predict_tiled`` cuts an image: the padded size, the tile size, the tiles' top-left
    corners and the blending margin and ramp (pixels)."""
    if tile_size % stride:
        raise ValueError(f"tile_size {tile_size} is not a multiple of the model stride {stride}")
    padded_h, padded_w = (math.ceil(s / stride) * stride for s in (height, width))
    tile_h, tile_w = min(tile_size, padded_h), min(tile_size, padded_w)
    overlap_px = int(round(overlap * tile_size))
    step = max(stride, (tile_size - overlap_px) // stride * stride)
    starts = [(y, x) for y in _tile_starts(padded_h, tile_h, step) for x in _tile_starts(padded_w, tile_w, step)]
    return {"padded": (padded_h, padded_w), "tile": (tile_h, tile_w), "starts": starts,
            "margin": overlap_px // 4, "ramp": overlap_px // 2}


def predict_tiled(model, image: np.ndarray, tile_size: int = 256, overlap: float = 0.25, batch_size: int = 4,
                  tta: bool = False, normalize_input: bool = True, progress: bool = False) -> np.ndarray:
    """Probabilities (H, W, C) for an image of any size.

    The image is normalized as in training, mirror-padded to the model's stride and cut into
    overlapping tiles (a single pass when it fits in one tile). Each tile's weight is zero
    within overlap/4 of an inner edge and ramps smoothly to 1, so seams are blended and, when
    overlap/4 covers the model's receptive field, the result equals the untiled prediction.
    """
    x = normalize(image) if normalize_input else np.asarray(image, np.float32)
    if x.ndim == 2:
        x = x[..., None]
    height, width = x.shape[:2]
    layout = tile_layout(height, width, tile_size, overlap, model_stride(model))
    (padded_h, padded_w), (tile_h, tile_w), starts = layout["padded"], layout["tile"], layout["starts"]
    margin, ramp = layout["margin"], layout["ramp"]
    x = np.pad(x, ((0, padded_h - height), (0, padded_w - width), (0, 0)), mode="reflect" if min(height, width) > 1
               else "edge")

    total = weight_sum = None
    bar = tqdm(total=len(starts), desc="tiles", disable=not progress or not bars_shown(), leave=False)
    for first in range(0, len(starts), batch_size):
        chunk = starts[first:first + batch_size]
        batch = np.stack([x[y:y + tile_h, x0:x0 + tile_w] for y, x0 in chunk])
        out = predict_batch(model, batch, tta)
        if total is None:
            total = np.zeros((padded_h, padded_w, out.shape[-1]), np.float64)
            weight_sum = np.zeros((padded_h, padded_w, 1), np.float64)
        for (y, x0), tile in zip(chunk, out):
            w = np.outer(_axis_weights(tile_h, y, padded_h, margin, ramp),
                         _axis_weights(tile_w, x0, padded_w, margin, ramp))[..., None]
            total[y:y + tile_h, x0:x0 + tile_w] += w * tile
            weight_sum[y:y + tile_h, x0:x0 + tile_w] += w
        bar.update(len(chunk))
    bar.close()
    return (total / weight_sum)[:height, :width].astype(np.float32)


# ----------------------------------------------------------------------------- post-processing


def hard_prediction(probabilities: np.ndarray) -> np.ndarray:
    """Class map from model output: threshold 0.5 for one channel, argmax otherwise."""
    if probabilities.shape[-1] == 1:
        return (probabilities[..., 0] > 0.5).astype(np.uint8)
    return probabilities.argmax(axis=-1).astype(np.uint8)


def relabel_instances(labels: np.ndarray, min_area: int) -> np.ndarray:
    """Labels 1..n (uint16) after removing objects smaller than ``min_area`` pixels."""
    from skimage.segmentation import relabel_sequential

    if min_area > 1 and labels.max():
        too_small = np.bincount(labels.ravel()) < min_area
        too_small[0] = False
        labels = np.where(too_small[labels], 0, labels)
    return relabel_sequential(labels)[0].astype(np.uint16)


def nuclei_from_probabilities(probabilities: np.ndarray, min_area: int = 12, seed_threshold: float = 0.5,
                              foreground_threshold: float = 0.5) -> np.ndarray:
    """uint16 instance labels from nuclei probabilities.

    3 channels (background, interior, boundary): interiors above ``seed_threshold`` are the
    seeds, grown by watershed over the foreground (interior + boundary above
    ``foreground_threshold``); foreground without a seed becomes its own nucleus. 1 channel
    (foreground): distance-transform watershed. Objects smaller than ``min_area`` pixels are
    removed. A run's tuned values are in its ``thresholds.json`` (see ``tuning``).
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max
    from skimage.segmentation import watershed

    probabilities = np.asarray(probabilities, np.float32)
    if probabilities.shape[-1] == 3:
        interior, boundary = probabilities[..., 1], probabilities[..., 2]
        foreground = interior + boundary > foreground_threshold
        seeds = ndi.label((interior > seed_threshold) & foreground)[0]
        labels = watershed(-interior, markers=seeds, mask=foreground)
        orphans = ndi.label(foreground & (labels == 0))[0]
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    elif probabilities.shape[-1] == 1:
        foreground = probabilities[..., 0] > foreground_threshold
        distance = ndi.distance_transform_edt(foreground)
        components = ndi.label(foreground)[0]
        peaks = peak_local_max(ndi.gaussian_filter(distance, 1.0), min_distance=4, labels=components,
                               exclude_border=False)
        markers = np.zeros(foreground.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        labels = watershed(-distance, markers=markers, mask=foreground)
        orphans = ndi.label(foreground & (labels == 0))[0]
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    else:
        raise ValueError(f"nuclei need 1 or 3 output channels, not {probabilities.shape[-1]}")
    return relabel_instances(labels.astype(np.int32), min_area)


# ----------------------------------------------------------------------------- whole folders


def load_run_model(path: str | Path):
    """(model, config) of a run: its folder (``best.keras`` in it) or a ``.keras`` file, with
    the ``config.json`` beside it."""
    import keras

    from . import losses, model as _model  # noqa: F401  (registers the custom objects)
    from .config import Config
    from .io import DataError

    path = Path(path)
    if path.is_dir():
        path = path / "best.keras"
    if not path.is_file():
        raise DataError(f"{path}: no such model file (give a run folder or its best.keras / last.keras)")
    config_path = path.parent / "config.json"
    if not config_path.is_file():
        raise DataError(f"{config_path}: missing; the run's config.json is needed beside the model")
    config = Config.load(config_path)
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as error:  # Keras raises ValueError, OSError, zipfile errors, ... for foreign files
        raise DataError(f"{path}: not a Keras model saved by this project ({type(error).__name__}: "
                        f"{str(error).splitlines()[0] if str(error) else 'unreadable'})") from None
    if model.input_shape[-1] != (1 if resolve_color_mode(config) == "gray" else 3):  # runs from before color_mode
        config = config.replace(color_mode="gray" if model.input_shape[-1] == 1 else "rgb")
    from .tuning import apply_thresholds

    return model, apply_thresholds(config, path.parent)


def predict_image(model, config, image: np.ndarray, progress: bool = False):
    """(probabilities, labels): nuclei instance map (uint16) or tissue class map (uint8)."""
    probabilities = predict_probabilities(model, config, image, progress)
    return probabilities, labels_from_probabilities(probabilities, config)


def labels_from_probabilities(probabilities: np.ndarray, config) -> np.ndarray:
    """Nuclei instances with the config's thresholds, or the tissue class map."""
    if config.kind == "dsb2018":
        return nuclei_from_probabilities(probabilities, config.min_nucleus_area, config.seed_threshold,
                                         config.foreground_threshold)
    return hard_prediction(probabilities)


def predict_probabilities(model, config, image: np.ndarray, progress: bool = False) -> np.ndarray:
    """Class probabilities (H, W, C) of an image at native resolution, through the tiler; a model
    trained in 'resize' mode sees the image resized to its training size, and its probabilities
    are resized back."""
    image = model_input(image, resolve_color_mode(config))
    if config.input_mode == "resize":  # trained on images resized to image_size: predict at that size
        from skimage.transform import resize

        small = resize(np.asarray(image), (config.image_size, config.image_size), preserve_range=True,
                       anti_aliasing=True)
        probabilities = predict_tiled(model, small, config.image_size, 0.0, 1, config.tta)
        probabilities = resize(probabilities, image.shape[:2], order=1).astype(np.float32)
    else:
        probabilities = predict_tiled(model, image, config.tile_size, config.tile_overlap, config.batch_size,
                                      config.tta, progress=progress)
    return probabilities


def _thumbnail(frame: np.ndarray, side: int = 512) -> np.ndarray:
    from PIL import Image

    scale = side / max(frame.shape[:2])
    if scale >= 1:
        return frame
    size = (max(1, round(frame.shape[1] * scale)), max(1, round(frame.shape[0] * scale)))
    return np.asarray(Image.fromarray(frame).resize(size, Image.Resampling.LANCZOS))


def nucleus_table(image_id: str, image: np.ndarray, labels: np.ndarray) -> list[dict]:
    """One row per nucleus: label, area, centroid, equivalent diameter, eccentricity, mean intensity."""
    from skimage.measure import regionprops_table

    if not labels.max():
        return []
    gray = np.asarray(image, np.float32).mean(axis=-1)
    table = regionprops_table(labels, intensity_image=gray, properties=(
        "label", "area", "centroid", "equivalent_diameter_area", "eccentricity", "intensity_mean"))
    return [{"image": image_id, "label": int(table["label"][i]), "area": int(table["area"][i]),
             "centroid_y": round(float(table["centroid-0"][i]), 2), "centroid_x": round(float(table["centroid-1"][i]), 2),
             "equivalent_diameter": round(float(table["equivalent_diameter_area"][i]), 3),
             "eccentricity": round(float(table["eccentricity"][i]), 4),
             "mean_intensity": round(float(table["intensity_mean"][i]), 3)} for i in range(len(table["label"]))]


def predict_folder(model, config, dataset, out: str | Path, progress: bool = True, inputs=()) -> dict:
    """Predict every image of ``dataset`` and write everything to ``out``, which must lie
    outside the dataset's folder and ``inputs`` (see ``io.claim_output_folder``).

    ``masks/<id>.png`` (16-bit instance labels for nuclei, 'P' class PNGs for tissue),
    ``overlays/<id>.png``, ``input.gif``, ``output.gif`` and, for nuclei, ``nuclei.csv`` and
    Kaggle's ``submission.csv``. Returns the predicted label maps by id.
    """
    from .io import claim_output_folder, save_png, write_csv
    from .progress import progress as show_progress
    from .rle import rle_encode_labels
    from .visuals import draw_classes, draw_instances, overlay_panel, write_gif

    out = claim_output_folder(out, [dataset.source, *inputs] if dataset.source else inputs,
                              {"run": config.run_name, "images": dataset.source, "count": len(dataset)})
    nuclei = config.kind == "dsb2018"
    palette = np.array(config.extra.get("palette") or [[0, 0, 0]], np.uint8)
    truths = dataset.instances if nuclei else dataset.masks
    predictions, table, submission, inputs, outputs = {}, [], [], [], []
    for index in show_progress(range(len(dataset)), "predicting", enabled=progress):
        image_id, image = dataset.ids[index], np.asarray(dataset.images[index])
        _, labels = predict_image(model, config, image)
        predictions[image_id] = labels
        truth = None if truths is None else np.asarray(truths[index])
        if nuclei:
            save_png(out / "masks" / f"{image_id}.png", labels)
            table += nucleus_table(image_id, image, labels)
            encoded = rle_encode_labels(labels)
            submission += [{"ImageId": image_id, "EncodedPixels": e} for e in encoded.values()] or [
                {"ImageId": image_id, "EncodedPixels": ""}]
            drawn = draw_instances(image, labels)
        else:
            save_png(out / "masks" / f"{image_id}.png", labels, palette=palette)
            drawn = draw_classes(image, labels, palette)
        save_png(out / "overlays" / f"{image_id}.png",
                 overlay_panel(image, labels, truth, instances=nuclei, palette=palette))
        inputs.append(_thumbnail(image))
        outputs.append(_thumbnail(drawn))
    write_gif(out / "input.gif", inputs)
    write_gif(out / "output.gif", outputs)
    if nuclei:
        write_csv(out / "nuclei.csv", table, ["image", "label", "area", "centroid_y", "centroid_x",
                                                "equivalent_diameter", "eccentricity", "mean_intensity"])
        write_csv(out / "submission.csv", submission, ["ImageId", "EncodedPixels"])
    return predictions
