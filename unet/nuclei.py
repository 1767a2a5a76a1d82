"""Nuclei as instances: the training targets (3 classes: background, interior, boundary; 4
with each nucleus's centre), the watershed from probabilities to nuclei, and the per-nucleus
measurements."""

from __future__ import annotations

import numpy as np

# background, interior (nucleus for a binary head), boundary, centre
NUCLEI_PALETTE = np.array([[0, 0, 0], [255, 220, 0], [255, 0, 200], [0, 200, 255]], np.uint8)
CENTRE_FRACTION = 0.5  # a centre pixel is deeper inside its nucleus than this fraction of the nucleus's deepest pixel
TABLE_COLUMNS = ["image", "label", "area", "centroid_y", "centroid_x", "equivalent_diameter", "eccentricity",
                 "mean_intensity"]


def nuclei_classes(head: str) -> list[str]:
    if head == "binary":
        return ["background", "nucleus"]
    return ["background", "interior", "boundary"] + (["centre"] if head == "centre" else [])


def boundary_target(instances: np.ndarray, contact_width: int = 0) -> np.ndarray:
    """3-class target from an instance map: 0 background, 1 interior, 2 boundary.

    The boundary is each nucleus's own outermost pixel ring (inner boundary), so touching
    nuclei are separated by two boundary pixels. With ``contact_width`` w > 0, a nucleus's
    pixels within w pixels (chessboard distance) of another nucleus are boundary too, which
    widens the gap between the interiors of touching nuclei (the seeds that split them).
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    instances = np.asarray(instances)
    inside = instances > 0
    target = inside.astype(np.uint8)
    boundary = find_boundaries(instances, mode="inner") & inside
    if contact_width > 0 and inside.any():
        window = 2 * contact_width + 1
        labels = instances.astype(np.int64)
        highest = ndi.maximum_filter(labels, size=window, mode="nearest")
        lowest = ndi.minimum_filter(np.where(inside, labels, labels.max() + 1), size=window, mode="nearest")
        boundary |= inside & ((highest != labels) | (lowest != labels))
    target[boundary] = 2
    return target


def centre_target(instances: np.ndarray, contact_width: int = 0) -> np.ndarray:
    """4-class target: :func:`boundary_target` with each nucleus's centre as class 3.

    The centre is the part of a nucleus deeper than ``CENTRE_FRACTION`` of its deepest pixel
    (depth: pixel steps to the nucleus's edge, its outer ring at depth 1), so it never holds
    the ring and the centres of touching nuclei never touch, however wide the contact. The
    centres are the watershed's seeds (as in contour-aware and distance-map nuclei models);
    a nucleus only one ring thick has none.
    """
    from scipy import ndimage as ndi
    from skimage.segmentation import find_boundaries

    instances = np.asarray(instances)
    target = boundary_target(instances, contact_width)
    inside = instances > 0
    if not inside.any():
        return target
    ring = find_boundaries(instances, mode="inner") & inside
    depth = ndi.distance_transform_edt(inside & ~ring) + inside
    labels = instances.astype(np.int64)
    deepest = np.zeros(labels.max() + 1)
    present = np.unique(labels[inside])
    deepest[present] = ndi.maximum(depth, labels, index=present)
    target[inside & (depth > np.maximum(CENTRE_FRACTION * deepest[labels], 1))] = 3  # never the ring
    return target


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
    ``foreground_threshold``); foreground without a seed becomes its own nucleus. 4 channels
    (and centre): the centres above ``seed_threshold`` are the seeds, grown down the expected
    depth (interior 1, centre 2). 1 channel (foreground): distance-transform watershed.
    Objects smaller than ``min_area`` pixels are removed. A run's tuned values are in its
    ``thresholds.json`` (see ``tuning``).
    """
    from scipy import ndimage as ndi
    from skimage.feature import peak_local_max

    probabilities = np.asarray(probabilities, np.float32)
    if probabilities.shape[-1] == 3:
        interior, boundary = probabilities[..., 1], probabilities[..., 2]
        foreground = interior + boundary > foreground_threshold
        return grow_seeds(ndi.label((interior > seed_threshold) & foreground)[0], -interior, foreground, min_area)
    if probabilities.shape[-1] == 4:
        interior, centre = probabilities[..., 1], probabilities[..., 3]
        foreground = 1.0 - probabilities[..., 0] > foreground_threshold
        return grow_seeds(ndi.label((centre > seed_threshold) & foreground)[0], -(interior + 2 * centre), foreground,
                          min_area)
    if probabilities.shape[-1] == 1:
        foreground = probabilities[..., 0] > foreground_threshold
        distance = ndi.distance_transform_edt(foreground)
        components = ndi.label(foreground)[0]
        peaks = peak_local_max(ndi.gaussian_filter(distance, 1.0), min_distance=4, labels=components,
                               exclude_border=False)
        markers = np.zeros(foreground.shape, np.int32)
        markers[tuple(peaks.T)] = np.arange(1, len(peaks) + 1)
        return grow_seeds(markers, -distance, foreground, min_area)
    raise ValueError(f"nuclei need 1, 3 or 4 output channels, not {probabilities.shape[-1]}")


def grow_seeds(seeds: np.ndarray, elevation: np.ndarray, foreground: np.ndarray, min_area: int) -> np.ndarray:
    """uint16 nuclei: labelled ``seeds`` grown by watershed over ``elevation`` within ``foreground``;
    foreground no seed reached becomes nuclei of its own; objects under ``min_area`` pixels removed."""
    from scipy import ndimage as ndi
    from skimage.segmentation import watershed

    labels = watershed(elevation, markers=seeds, mask=foreground)
    orphans = ndi.label(foreground & (labels == 0))[0]  # foreground no seed reached: nuclei of their own
    labels = np.where(orphans > 0, orphans + labels.max(), labels)
    return relabel_instances(labels.astype(np.int32), min_area)


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
