"""Nuclei post-processing: the watershed from probabilities to instances, and small objects."""

import warnings

import numpy as np

from conftest import disk
from unet.evaluation import nuclei_scores
from unet.nuclei import boundary_target, centre_target, nuclei_from_probabilities, relabel_instances
from unet.rle import rle_decode, rle_encode_labels


def _two_touching_disks():
    shape = (40, 60)
    instances = np.zeros(shape, np.uint16)
    instances[disk(shape, (20, 19), 10)] = 1
    instances[disk(shape, (20, 39), 10) & (instances == 0)] = 2
    return instances


def test_two_touching_disks_from_three_class_output():
    instances = _two_touching_disks()
    probabilities = np.eye(3, dtype=np.float32)[boundary_target(instances)]
    labels = nuclei_from_probabilities(probabilities, min_area=5)
    assert labels.max() == 2 and labels.dtype == np.uint16
    assert nuclei_scores(instances, labels)["ap50"] == 1.0


def test_touching_disks_from_four_class_output_even_when_the_boundary_is_missed():
    instances = _two_touching_disks()
    target = centre_target(instances, contact_width=3)
    labels = nuclei_from_probabilities(np.eye(4, dtype=np.float32)[target], min_area=5)
    assert labels.max() == 2 and nuclei_scores(instances, labels)["map"] > 0.9
    blurred = np.eye(4, dtype=np.float32)[np.where(target == 2, 1, target)]  # no boundary predicted at all:
    labels = nuclei_from_probabilities(blurred, min_area=5)  # the centres still split the pair
    assert labels.max() == 2 and nuclei_scores(instances, labels)["ap50"] == 1.0


def test_two_touching_disks_from_binary_output():
    instances = _two_touching_disks()
    probabilities = (instances > 0).astype(np.float32)[..., None]
    labels = nuclei_from_probabilities(probabilities, min_area=5)
    assert labels.max() == 2
    assert nuclei_scores(instances, labels)["ap50"] == 1.0


def test_tiny_objects_are_removed():
    probabilities = np.zeros((20, 20, 1), np.float32)
    probabilities[2:4, 2:4] = 1  # 4 px
    probabilities[10:16, 10:16] = 1  # 36 px
    labels = nuclei_from_probabilities(probabilities, min_area=12)
    assert labels.max() == 1 and (labels == 1).sum() == 36


def test_relabel_instances_keeps_objects_of_the_minimum_area_quietly():
    labels = np.zeros((10, 10), np.int32)
    labels[0:3, 0:4] = 7  # 12 px: kept
    labels[5:7, 5:7] = 3  # 4 px: removed
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # one object left must not warn (skimage's remove_small_objects does)
        out = relabel_instances(labels, min_area=12)
        single = relabel_instances(np.where(labels == 7, 1, 0), min_area=12)
    assert out.dtype == np.uint16 and set(np.unique(out)) == {0, 1} and (out == 1).sum() == 12
    np.testing.assert_array_equal(single, out)


def test_rle_encode_labels_round_trip():
    instances = _two_touching_disks()
    encoded = rle_encode_labels(instances)
    assert sorted(encoded) == [1, 2]
    for label, text in encoded.items():
        assert np.array_equal(rle_decode(text, instances.shape), instances == label)
