"""The training input pipeline: crops aligned with their targets, zoom, determinism."""

import numpy as np

from unet.config import Config
from unet.pipeline import CropSampler, augment_batch, degrade_augment, DEGRADATIONS, make_train_dataset, photometric_augment
from unet.preprocess import Preprocessor


def test_crops_keep_image_and_target_aligned():
    rng = np.random.default_rng(0)
    targets = [rng.integers(0, 3, (40, 52), dtype=np.uint8), rng.integers(0, 3, (20, 30), dtype=np.uint8)]
    images = [np.repeat((t * 100)[..., None], 3, axis=2).astype(np.uint8) for t in targets]
    sampler = CropSampler(images, targets, [(0.0, 200.0)] * 2, size=32, seed=1)
    for _ in range(20):
        for index in (0, 1):  # the second image is smaller than a crop: mirror-padded
            x, y = sampler.crop(index)
            assert x.shape == (32, 32, 3) and y.shape == (32, 32, 1)
            assert np.allclose(x[..., 0] * 2, y[..., 0])


def test_zoomed_crops_rescale_objects_and_stay_aligned():
    target = np.kron(np.arange(48).reshape(6, 8) % 3, np.ones((10, 10), np.uint8)).astype(np.uint8)  # 10 px blocks
    image = np.repeat((target * 100)[..., None], 3, axis=2).astype(np.uint8)
    sampler = CropSampler([image], [target], [(0.0, 200.0)], size=32, seed=2, zoom=0.5)
    block_sizes = set()
    for _ in range(30):
        x, y = sampler.crop(0)
        assert x.shape == (32, 32, 3) and y.shape == (32, 32, 1) and y.dtype == np.uint8
        assert np.mean(np.abs(x[..., 0] * 2 - y[..., 0]) < 0.5) > 0.8  # interpolated edges aside, aligned
        runs = np.flatnonzero(np.diff(y[:, :, 0], axis=1).any(axis=0))
        block_sizes.update(np.diff(runs).tolist())
    assert min(block_sizes) < 9 and max(block_sizes) > 11  # objects shrunk and grown


def test_crop_sampling_weighs_images_by_area_or_equally():
    images = [np.zeros((64, 64, 1), np.uint8), np.zeros((16, 16, 1), np.uint8)]  # areas 16:1
    targets = [np.zeros(image.shape[:2], np.uint8) for image in images]
    expected = {"area": 16 / 17, "sqrt_area": 4 / 5, "image": 1 / 2}
    for sampling, share in expected.items():
        sampler = CropSampler(images, targets, [(0.0, 1.0)] * 2, size=16, seed=0, sampling=sampling)
        assert np.isclose(sampler.weights[0], share)
        drawn = [int(sampler.rng.choice(2, p=sampler.weights)) for _ in range(2000)]
        assert abs(drawn.count(0) / 2000 - share) < 0.04
    config = Config(crop_sampling="image")
    assert Config.from_dict(config.to_dict()).crop_sampling == "image"


def test_train_dataset_is_deterministic_and_not_autotuned():
    # Autotuning is off: its optimisation thread made each fit() wait up to a minute at its end.
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 255, (40, 48, 3), dtype=np.uint8) for _ in range(3)]
    targets = [rng.integers(0, 3, (40, 48), dtype=np.uint8) for _ in range(3)]
    config = Config(image_size=32, batch_size=2)
    first, second = (make_train_dataset(images, targets, [(0.0, 255.0)] * 3, config, 2) for _ in range(2))
    assert first.options().autotune.enabled is False
    for (x1, y1), (x2, y2) in zip(first.take(3), second.take(3)):
        assert x1.shape == (2, 32, 32, 3) and y1.shape == (2, 32, 32, 1)
        assert np.array_equal(x1.numpy(), x2.numpy()) and np.array_equal(y1.numpy(), y2.numpy())


def test_a_training_crop_is_the_prediction_input_cut_out():
    """One Preprocessor: a crop (no augmentation) equals the same window of the normalised whole
    image that prediction feeds the tiler, in gray (inverted brightfield) and RGB."""
    rng = np.random.default_rng(4)
    image = rng.integers(150, 255, (70, 90, 3), dtype=np.uint8)  # bright background: inverted in gray
    image[20:40, 30:50] = rng.integers(0, 60, (20, 20, 3), dtype=np.uint8)
    for mode in ("gray", "rgb"):
        preprocessor = Preprocessor(mode)
        channels, value_range = preprocessor.prepare(image)
        sampler = CropSampler([channels], [np.zeros(image.shape[:2], np.uint8)], [value_range], size=32, seed=0,
                              augment=False)
        whole = preprocessor(image)
        crop, _ = sampler.crop(0)
        matches = [(y, x) for y in range(70 - 31) for x in range(90 - 31)
                   if np.allclose(whole[y:y + 32, x:x + 32], crop, atol=1e-6)]
        assert matches and crop.shape[-1] == preprocessor.channels


def _stained_image(rng, shape=(48, 56)):
    """An H&E-like uint8 RGB image: pink background, purple blobs (nuclei)."""
    image = np.empty(shape + (3,), np.uint8)
    image[:] = (235, 170, 210)
    image[8:24, 10:30] = (110, 60, 160)
    image[30:44, 30:50] = (140, 90, 180)
    return np.clip(image.astype(int) + rng.integers(-12, 13, image.shape), 1, 255).astype(np.uint8)


def test_stain_jitter_scales_each_stain_by_its_own_factor():
    from skimage.color import hed_from_rgb

    from unet.pipeline import stain_jitter

    rng = np.random.default_rng(0)
    image = _stained_image(rng)
    assert np.array_equal(stain_jitter(image, 0.0, rng), image)  # no jitter: the same pixels, same dtype
    rgba = np.concatenate([image, np.full(image.shape[:2] + (1,), 7, np.uint8)], axis=-1)
    jittered = stain_jitter(rgba, 0.3, np.random.default_rng(3))  # factors 0.75, 0.84, 1.18
    assert jittered.dtype == np.uint8 and jittered.shape == rgba.shape and (jittered[..., 3] == 7).all()
    factors = np.random.default_rng(3).uniform(0.7, 1.3, 3)
    stains = [-np.log(np.maximum(a[..., :3] / 255.0, 1 / 255)) @ hed_from_rgb for a in (image, jittered)]
    for channel in range(2):  # hematoxylin and eosin, where the image holds them
        present = np.abs(stains[0][..., channel]) > 0.15
        ratio = np.median(stains[1][..., channel][present] / stains[0][..., channel][present])
        assert abs(ratio - factors[channel]) < 0.03


def test_stain_augmentation_changes_colour_crops_only_and_keeps_their_windows():
    rng = np.random.default_rng(3)
    colour, gray = _stained_image(rng), np.repeat(rng.integers(0, 255, (48, 56, 1), dtype=np.uint8), 3, axis=2)
    originals = [colour, gray]
    preprocessor = Preprocessor("gray")
    prepared = [preprocessor.prepare(image) for image in originals]
    targets = [np.zeros(image.shape[:2], np.uint8) for image in originals]

    def crops(stain):
        sampler = CropSampler([p[0] for p in prepared], targets, [p[1] for p in prepared], size=32, seed=5, zoom=0.25,
                              stain=stain, originals=originals, preprocessor=preprocessor)
        assert set(sampler.stain_sources) == ({0} if stain else set())  # the colour image only
        return [sampler.crop(index)[0] for index in (0, 1, 0, 1)]

    plain, faint, strong = crops(0.0), crops(1e-6), crops(0.5)
    for a, b, c, index in zip(plain, faint, strong, (0, 1, 0, 1)):
        assert np.allclose(a, b, atol=1e-5)  # factors ~1: the plain crop, same window, same normalisation
        assert np.array_equal(a, c) == (index == 1)  # gray images never jittered
    config = Config(stain_augment=0.3)
    assert Config.from_dict(config.to_dict()).stain_augment == 0.3
    for bad in ({"stain_augment": 1.0}, {"stain_augment": 0.2, "input_mode": "resize"}):
        try:
            Config(**bad)
        except ValueError as error:
            assert "stain_augment" in str(error)
        else:
            raise AssertionError(f"{bad} accepted")


def test_degradations_hit_about_their_odds_and_only_noise_leaves_a_samples_range():
    import tensorflow as tf

    images = tf.random.stateless_uniform([400, 16, 16, 1], [1, 2], 0.2, 0.9)
    seed = tf.constant([3, 4], tf.int64)
    degraded = degrade_augment(images, seed).numpy()
    changed = np.abs(degraded - images.numpy()).max(axis=(1, 2, 3)) > 1e-6
    untouched = np.prod([1 - p for p in DEGRADATIONS.values()])  # 0.425
    assert abs((1 - changed.mean()) - untouched) < 0.08
    assert np.array_equal(degraded, degrade_augment(images, seed).numpy())  # seeded

    without_noise = degrade_augment(images, seed, {**DEGRADATIONS, "noise": 0.0}).numpy()
    low, high = images.numpy().min(axis=(1, 2, 3)), images.numpy().max(axis=(1, 2, 3))
    assert np.all(without_noise.min(axis=(1, 2, 3)) >= low - 1e-5)
    assert np.all(without_noise.max(axis=(1, 2, 3)) <= high + 1e-5)
    gamma_only = {name: float(name == "gamma") for name in DEGRADATIONS}
    brighter_or_darker = degrade_augment(images, seed, gamma_only).numpy()
    ranks = images.numpy().reshape(400, -1).argsort(axis=1)  # a monotone map of each sample
    assert np.all(np.diff(np.take_along_axis(brighter_or_darker.reshape(400, -1), ranks, 1), axis=1) >= -1e-6)
    assert not np.allclose(brighter_or_darker, images.numpy(), atol=1e-3)
    noise_only = {name: float(name == "noise") for name in DEGRADATIONS}
    residual = degrade_augment(images, seed, noise_only).numpy() - images.numpy()
    assert abs(residual.mean()) < 0.005 and 0.02 < residual.std() < 0.1


def test_degradations_are_an_option_on_top_of_the_photometric_augmentation():
    import tensorflow as tf

    images, seed = tf.random.stateless_uniform([8, 16, 16, 3], [5, 6]), tf.constant([7, 8], tf.int64)
    plain = photometric_augment(images, seed).numpy()
    assert np.array_equal(augment_batch(images, seed, False).numpy(), plain)  # off: runs as before the option
    assert not np.array_equal(augment_batch(images, seed, True).numpy(), plain)
    assert Config.from_dict(Config(degrade_augment=True).to_dict()).degrade_augment is True
