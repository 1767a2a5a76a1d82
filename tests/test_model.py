import keras
import numpy as np
import pytest
from keras import layers

from unet.losses import ConfusionMetric, SegmentationLoss, SMOOTH
from unet.model import FusedBatchNormalization, SqrtStretch, build_unet, conv_block, decoder_block, encoder_block, forward_flops
from unet.nuclei import boundary_target, centre_target


def test_conv_block_is_conv_bn_relu_twice():
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, conv_block(inputs, 5))
    kinds = [type(layer).__name__ for layer in model.layers[1:]]
    assert kinds == ["Conv2D", "FusedBatchNormalization", "Activation"] * 2
    assert all(isinstance(layer, layers.BatchNormalization) for layer in model.layers[2::3])
    convs = [layer for layer in model.layers if isinstance(layer, layers.Conv2D)]
    assert all(c.kernel_size == (3, 3) and c.padding == "same" and c.filters == 5 for c in convs)


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_fused_batch_norm_matches_keras(precision):
    """Same outputs, gradients and moving statistics as Keras's layer, in training and inference."""
    import tensorflow as tf

    from unet.device import precision_policy

    x = np.random.default_rng(0).normal(3.0, 2.0, (4, 6, 5, 3)).astype(np.float32)
    with precision_policy(precision):
        fused, plain = FusedBatchNormalization(momentum=0.5), layers.BatchNormalization(momentum=0.5)
        for layer in (fused, plain):
            layer.build(x.shape)
            layer.gamma.assign([0.5, 1.0, 2.0])
            layer.beta.assign([0.1, -0.2, 0.3])
        results = []
        for layer in (fused, plain):
            with tf.GradientTape() as tape:
                tape.watch(layer.gamma.value)
                inputs = tf.constant(x)
                tape.watch(inputs)
                out = layer(inputs, training=True)
                loss = tf.reduce_sum(tf.cast(out, tf.float32) * np.linspace(-1, 1, out.shape[-1]))
            grads = tape.gradient(loss, [inputs, layer.gamma.value])
            results.append([np.asarray(tf.cast(t, tf.float32)) for t in [out, *grads]]
                           + [layer.moving_mean.numpy(), layer.moving_variance.numpy(),
                              np.asarray(tf.cast(layer(inputs, training=False), tf.float32))])
    tolerance = 1e-4 if precision == "float32" else 3e-2
    for got, want in zip(*results):
        np.testing.assert_allclose(got, want, rtol=tolerance, atol=tolerance)
    assert fused(x, training=True).dtype.name == keras.mixed_precision.Policy(precision).compute_dtype


def test_encoder_block_pools_drops_and_keeps_the_skip():
    inputs = keras.Input((8, 8, 3))
    skip, pooled = encoder_block(inputs, 4)
    assert tuple(skip.shape) == (None, 8, 8, 4) and tuple(pooled.shape) == (None, 4, 4, 4)
    model = keras.Model(inputs, [skip, pooled])
    dropout = [layer for layer in model.layers if isinstance(layer, layers.Dropout)]
    assert len(dropout) == 1 and dropout[0].rate == 0.2
    assert any(isinstance(layer, layers.MaxPooling2D) and layer.pool_size == (2, 2) for layer in model.layers)


def test_decoder_block_upsamples_and_concatenates():
    low, skip = keras.Input((4, 4, 8)), keras.Input((8, 8, 4))
    out = decoder_block(low, skip, 4)
    model = keras.Model([low, skip], out)
    assert tuple(out.shape) == (None, 8, 8, 4)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds.index("Conv2DTranspose") < kinds.index("Concatenate") < kinds.index("FastDropout")


def _conv_block_params(cin, f):
    return 9 * cin * f + 4 * f + 9 * f * f + 4 * f  # bias-free convolutions, BN has 4 per channel


def test_parameter_count_of_a_known_config():
    model = build_unet(3, 1, base_filters=4, depth=2)
    expected = (_conv_block_params(3, 4) + _conv_block_params(4, 8) + _conv_block_params(8, 16)
                + (4 * 16 * 8 + 8) + _conv_block_params(16, 8)
                + (4 * 8 * 4 + 4) + _conv_block_params(8, 4)
                + (4 * 1 + 1))
    assert model.count_params() == expected == 7709
    assert model.output.dtype == "float32"


@pytest.mark.parametrize("shape", [(16, 16), (32, 48), (8, 72)])
def test_any_size_divisible_by_two_to_the_depth(shape):
    model = build_unet(3, 4, base_filters=2, depth=3)
    out = model(np.zeros((1, *shape, 3), np.float32))
    assert out.shape == (1, *shape, 4)
    assert np.allclose(np.asarray(out).sum(-1), 1, atol=1e-5)  # softmax head


def test_other_sizes_are_rejected_clearly():
    model = build_unet(3, 1, base_filters=2, depth=3)
    with pytest.raises(ValueError, match="30x32 is not divisible by 8"):
        model(np.zeros((1, 30, 32, 3), np.float32))


def test_saved_model_loads_in_safe_mode(tmp_path):
    model = build_unet(3, 3, base_filters=2, depth=2)
    model.compile(loss=SegmentationLoss(3), metrics=[ConfusionMetric(3, "iou", name="mean_iou")])
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    x = np.random.default_rng(0).random((1, 8, 8, 3)).astype(np.float32)
    assert np.allclose(model.predict(x, verbose=0), loaded.predict(x, verbose=0), atol=1e-6)


def test_sqrt_channels_feed_each_channel_and_its_square_root(tmp_path):
    x = np.array([-0.5, 0.0, 0.04, 0.25, 1.0, 2.25], np.float32).reshape(1, 1, 3, 2)
    stretched = np.asarray(SqrtStretch()(x))
    assert stretched.shape == (1, 1, 3, 4)
    assert np.array_equal(stretched[..., :2], x)  # the channels themselves, then their square roots
    assert np.allclose(stretched[..., 2:], [[[[0.0, 0.0], [0.2, 0.5], [1.0, 1.5]]]])  # negative -> 0
    model = build_unet(3, 1, base_filters=2, depth=2, sqrt_channels=True)
    first_conv = next(layer for layer in model.layers if isinstance(layer, layers.Conv2D))
    assert first_conv.kernel.shape == (3, 3, 6, 2) and model.input_shape[-1] == 3
    assert forward_flops(model, 8, 8) > forward_flops(build_unet(3, 1, base_filters=2, depth=2), 8, 8)
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", safe_mode=True)
    image = np.random.default_rng(0).random((1, 8, 8, 3)).astype(np.float32)
    assert np.allclose(model.predict(image, verbose=0), loaded.predict(image, verbose=0), atol=1e-6)


def test_forward_flops_of_one_convolution():
    inputs = keras.Input((None, None, 3))
    model = keras.Model(inputs, layers.Conv2D(8, 3, padding="same")(inputs))
    assert forward_flops(model, 10, 20) == 2 * 3 * 8 * 9 * 200


# ----------------------------------------------------------------------------- losses and metrics

def test_binary_loss_by_hand():
    y = np.array([1.0, 0.0, 1.0, 0.0], np.float32).reshape(1, 2, 2, 1)
    p = np.array([0.8, 0.4, 0.6, 0.1], np.float32).reshape(1, 2, 2, 1)
    bce = -(np.log(0.8) + np.log(0.6) + np.log(0.6) + np.log(0.9)) / 4
    dice = (2 * (0.8 + 0.6) + SMOOTH) / (2 + 1.9 + SMOOTH)
    got = float(SegmentationLoss(1, dice_weight=0.5)(y, p))
    assert got == pytest.approx(bce + 0.5 * (1 - dice), rel=1e-5)


def test_multiclass_loss_by_hand_with_ignore_and_weights():
    y = np.array([0, 1, 255], np.int32).reshape(1, 1, 3, 1)
    p = np.array([[0.7, 0.3], [0.2, 0.8], [0.5, 0.5]], np.float32).reshape(1, 1, 3, 2)
    ce = -(1.0 * np.log(0.7) + 3.0 * np.log(0.8)) / 2  # the ignored pixel counts nowhere
    dice0 = (2 * 0.7 + SMOOTH) / (1 + 0.9 + SMOOTH)
    dice1 = (2 * 0.8 + SMOOTH) / (1 + 1.1 + SMOOTH)
    loss = SegmentationLoss(2, dice_weight=1.0, class_weights=[1.0, 3.0], ignore_label=255)
    assert float(loss(y, p)) == pytest.approx(ce + 1 - (dice0 + dice1) / 2, rel=1e-5)


def test_confusion_metrics_on_a_known_case():
    truth = np.array([0, 0, 1, 1, 2, 255]).reshape(1, 1, 6, 1)
    predicted = np.array([0, 1, 1, 1, 0, 2])
    probabilities = np.eye(3, dtype=np.float32)[predicted].reshape(1, 1, 6, 3)
    values = {}
    for statistic, class_id in (("accuracy", None), ("iou", None), ("iou", 1), ("dice", 0)):
        metric = ConfusionMetric(3, statistic, class_id)
        metric.update_state(truth, probabilities)
        values[(statistic, class_id)] = float(metric.result())
    assert values[("accuracy", None)] == pytest.approx(3 / 5)
    # IoU: class 0: 1/(1+1+1)=1/3, class 1: 2/3, class 2: 0/1 = 0
    assert values[("iou", None)] == pytest.approx((1 / 3 + 2 / 3 + 0) / 3)
    assert values[("iou", 1)] == pytest.approx(2 / 3)
    assert values[("dice", 0)] == pytest.approx(2 / 4)


def test_hard_labels_are_argmax_with_the_first_class_on_ties():
    from unet.losses import hard_labels

    probabilities = np.random.default_rng(0).random((2, 9, 7, 4)).astype(np.float32)
    probabilities[0, 0, 0] = [0.3, 0.3, 0.3, 0.1]
    probabilities[0, 0, 1] = [0.1, 0.4, 0.1, 0.4]
    labels = np.asarray(hard_labels(probabilities, 4))
    assert labels.dtype == np.int32 and np.array_equal(labels, probabilities.argmax(axis=-1))
    assert labels[0, 0, 0] == 0 and labels[0, 0, 1] == 1


def test_binary_metric_thresholds_at_one_half():
    metric = ConfusionMetric(1, "iou", class_id=1)
    metric.update_state(np.array([1, 1, 0, 0]).reshape(1, 2, 2, 1),
                        np.array([0.9, 0.4, 0.6, 0.1], np.float32).reshape(1, 2, 2, 1))
    assert float(metric.result()) == pytest.approx(1 / 3)


def test_boundary_target_of_known_instances():
    instances = np.zeros((7, 9), np.uint16)
    instances[1:6, 1:4] = 1  # 5x3 block
    instances[1:6, 4:8] = 2  # touching 5x4 block
    target = boundary_target(instances)
    assert target[0].max() == 0 and target[:, 0].max() == 0
    assert np.array_equal(target[3, 1:8], [2, 1, 2, 2, 1, 1, 2])  # a ring around each nucleus
    assert target[1, 2] == 2 and target[2, 2] == 1 and target[2, 5] == 1
    assert (target == 1).sum() == 3 * 1 + 3 * 2


def test_contact_width_widens_the_boundary_only_between_touching_nuclei():
    instances = np.zeros((9, 16), np.uint16)
    instances[1:6, 1:4] = 1  # 5x3 block
    instances[1:6, 4:8] = 2  # touching 5x4 block
    instances[2:8, 10:15] = 3  # an isolated 6x5 block
    ring = boundary_target(instances)
    wide = boundary_target(instances, contact_width=2)
    assert np.array_equal(wide[3, 1:8], [2, 2, 2, 2, 2, 1, 2])  # two pixels on each side of the contact
    assert np.array_equal(wide[:, 9:], ring[:, 9:])  # the isolated nucleus keeps its one-pixel ring
    assert np.array_equal(wide > 0, instances > 0)  # the foreground is unchanged
    assert np.array_equal(boundary_target(instances, contact_width=0), ring)


def test_centre_target_marks_each_nucleus_centre_apart_from_its_neighbours():
    instances = np.zeros((12, 20), np.uint16)
    instances[1:10, 1:8] = 1  # 9x7 block: depths 1 2 3 4 3 2 1 across its middle row
    instances[1:10, 8:15] = 2  # a touching 9x7 block
    instances[2:4, 17:19] = 3  # 2x2: all ring, no centre
    assert np.array_equal(centre_target(instances)[5, 1:15], [2, 1, 3, 3, 3, 1, 2] * 2)  # deeper than 4/2
    for width in (0, 3):
        target, boundary = centre_target(instances, width), boundary_target(instances, width)
        assert np.array_equal(target > 0, instances > 0)  # the foreground is unchanged
        assert np.array_equal(target[target != 3], boundary[target != 3])  # centres are the only change
        assert (target[instances == 3] != 3).all()
        for label in (1, 2):  # a centre in each nucleus's middle, off its ring
            rows, cols = np.nonzero((target == 3) & (instances == label))
            assert len(rows) and rows.min() > 1 and rows.max() < 9
        centres = target == 3  # the two centres are at least two pixels apart
        assert not (centres[:, :-2] & centres[:, 2:] & (instances[:, :-2] != instances[:, 2:])).any()


@pytest.mark.parametrize("precision", ["float32", "mixed_bfloat16"])
def test_fast_dropout_drops_at_the_rate_and_scales_the_rest(precision):
    """Keras's Dropout maths: each value dropped with probability `rate`, the rest scaled by
    1 / (1 - rate); a new mask per call, the same for the same seed; the gradient flows through
    the kept values only; identity at inference."""
    import tensorflow as tf

    from unet.device import precision_policy
    from unet.model import FastDropout

    x = np.random.default_rng(0).uniform(1.0, 2.0, (3, 37, 41, 5)).astype(np.float32)  # an odd number of values
    with precision_policy(precision):
        layer, twin = FastDropout(0.2, seed=7), FastDropout(0.2, seed=7)
        inputs = tf.cast(tf.constant(x), layer.compute_dtype)
        with tf.GradientTape() as tape:
            tape.watch(inputs)
            out = layer(inputs, training=True)
            loss = tf.reduce_sum(tf.cast(out, tf.float32))
        gradient = np.asarray(tf.cast(tape.gradient(loss, inputs), tf.float32))
        out, again, same_seed = (np.asarray(tf.cast(t, tf.float32)) for t in
                                 (out, layer(inputs, training=True), twin(inputs, training=True)))
        inference = np.asarray(tf.cast(layer(inputs, training=False), tf.float32))
    kept = out != 0
    assert abs(1 - kept.mean() - 0.2) < 0.01
    scale = 65536 / (65536 - 13107)  # the rate as a multiple of 1/65536: 13107 / 65536 = 0.19999695
    expected = np.asarray(tf.cast(inputs, tf.float32)) * scale
    tolerance = 1e-6 if precision == "float32" else 1e-2
    np.testing.assert_allclose(out[kept], expected[kept], rtol=tolerance)
    np.testing.assert_allclose(gradient, np.where(kept, scale, 0.0), rtol=tolerance)
    assert np.array_equal(out, same_seed) and not np.array_equal(out != 0, again != 0)
    np.testing.assert_array_equal(inference, np.asarray(tf.cast(inputs, tf.float32)))
    assert out.dtype == np.float32 and layer(inputs, training=True).dtype.name == layer.compute_dtype
