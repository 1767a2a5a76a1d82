"""The U-Net (Ronneberger et al., 2015) as a Keras functional model built from three blocks."""

from __future__ import annotations

import keras
from keras import layers, ops


@keras.saving.register_keras_serializable(package="unet")
class SizeCheck(layers.Layer):
    """Passes its input through; rejects a height or width not divisible by ``multiple``."""

    def __init__(self, multiple: int, **kwargs):
        super().__init__(**kwargs)
        self.multiple = multiple

    def _check(self, shape):
        height, width = shape[1], shape[2]
        bad = [s for s in (height, width) if s is not None and s % self.multiple]
        if bad:
            raise ValueError(f"input size {height}x{width} is not divisible by {self.multiple} (2**depth): "
                             "pad the image or predict with unet.tiling.predict_tiled")

    def build(self, input_shape):
        self._check(input_shape)

    def call(self, inputs):
        self._check(inputs.shape)
        return inputs

    def compute_output_shape(self, input_shape):
        self._check(input_shape)
        return input_shape

    def get_config(self):
        return {**super().get_config(), "multiple": self.multiple}


@keras.saving.register_keras_serializable(package="unet")
class FusedBatchNormalization(layers.BatchNormalization):
    """Keras's BatchNormalization computed by TensorFlow's fused kernel where it can be.

    Keras 3 normalizes with separate ops (cast to float32, moments, normalize, cast back), each
    a pass over the activations; on the TensorFlow backend this layer runs one
    ``FusedBatchNormV3`` kernel that reads bfloat16/float16 activations directly (on 2 CPU
    cores, base 16, batch 8 at 256x256: 1.5x the training speed of the Keras layer in
    mixed_bfloat16). Same variables, same moving-average update, same results within float
    rounding; other backends, masks and non-default options use the Keras code path.
    """

    def _can_fuse(self, inputs, mask) -> bool:
        return (keras.backend.backend() == "tensorflow" and mask is None and not self.renorm
                and self.center and self.scale and len(inputs.shape) == 4 and self.axis in (-1, 3))

    def call(self, inputs, training=None, mask=None):
        if not self._can_fuse(inputs, mask):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf

        dtype = inputs.dtype if inputs.dtype in (tf.float16, tf.bfloat16) else tf.float32
        inputs = tf.cast(inputs, dtype)
        if training and self.trainable:
            outputs, mean, variance = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=self.gamma, offset=self.beta, mean=tf.zeros_like(self.moving_mean),
                variance=tf.ones_like(self.moving_variance), epsilon=self.epsilon, is_training=True)[:3]
            count = tf.cast(tf.size(inputs) // tf.shape(inputs)[-1], tf.float32)
            variance = variance * (count - 1.0) / count  # the kernel reports the unbiased variance; Keras keeps the biased one
            self.moving_mean.assign(self.moving_mean * self.momentum + mean * (1.0 - self.momentum))
            self.moving_variance.assign(self.moving_variance * self.momentum + variance * (1.0 - self.momentum))
        else:
            outputs = tf.raw_ops.FusedBatchNormV3(
                x=inputs, scale=self.gamma, offset=self.beta, mean=self.moving_mean,
                variance=self.moving_variance, epsilon=self.epsilon, is_training=False)[0]
        return tf.cast(outputs, self.compute_dtype)


@keras.saving.register_keras_serializable(package="unet")
class FastDropout(layers.Dropout):
    """Keras's Dropout, whose mask TensorFlow draws from 16 random bits per value.

    Keras draws a float32 uniform per value (a whole Philox draw, then a conversion); this
    layer draws half as many 32-bit words and splits each into two 16-bit integers, compared
    with ``rate`` x 65536. On 2 CPU cores the mask of an 8x256x256x32 bfloat16 tensor (the
    decoder's full-resolution dropout) takes 28 ms against 66 ms, and dropout was about a
    fifth of a base-16 training step. Same maths: values dropped with probability ``rate``
    (rounded to a multiple of 1/65536), the others scaled by 1 / (1 - that probability); other
    backends and ``noise_shape`` use the Keras code path.
    """

    def call(self, inputs, training=False):
        if not (training and 0 < self.rate < 1 and self.noise_shape is None
                and keras.backend.backend() == "tensorflow"):
            return super().call(inputs, training=training)
        import tensorflow as tf

        threshold = min(round(self.rate * 65536), 65535)  # a rate within 2**-17 of 1 drops all but 1/65536
        seed = tf.cast(tf.math.floormod(self.seed_generator.next(), 2**31 - 1), tf.int32)
        size = tf.size(inputs)
        words = tf.random.stateless_uniform([(size + 1) // 2], seed, minval=None, maxval=None, dtype=tf.uint32)
        bits = tf.reshape(tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:size], tf.shape(inputs))
        scale = tf.constant(65536 / (65536 - threshold), inputs.dtype)
        return tf.where(bits >= threshold, inputs * scale, tf.zeros_like(inputs))


@keras.saving.register_keras_serializable(package="unet")
class SqrtStretch(layers.Layer):
    """Appends the square root of each input channel (clipped at 0) to the channels.

    The normalised input maps a faint nucleus to a few hundredths where the image's bright ones
    reach 1; its square root lifts 0.04 to 0.2 and leaves 1 at 1, so a faint nucleus is no longer
    a small signal next to the bright ones after the first batch normalisation. A per-pixel
    function, so tiles and blocks see exactly what the whole image gives."""

    def call(self, inputs):
        return ops.concatenate([inputs, ops.sqrt(ops.relu(inputs))], axis=-1)

    def compute_output_shape(self, input_shape):
        channels = input_shape[-1]
        return (*input_shape[:-1], None if channels is None else 2 * channels)


def conv_block(input_tensor, num_filters: int, fast_layers: bool = True):
    """(3x3 convolution, batch normalization, ReLU) twice. ``fast_layers=False`` builds with
    Keras's own BatchNormalization (and Dropout, in the encoder and decoder blocks): the same
    maths, slower on TensorFlow."""
    norm = FusedBatchNormalization if fast_layers else layers.BatchNormalization
    x = input_tensor
    for _ in range(2):
        x = layers.Conv2D(num_filters, 3, padding="same", use_bias=False, kernel_initializer="he_normal")(x)
        x = norm()(x)
        x = layers.Activation("relu")(x)
    return x


def encoder_block(input_tensor, num_filters: int, dropout: float = 0.2, fast_layers: bool = True):
    """conv_block, 2x2 max pooling, dropout. Returns (skip, pooled)."""
    skip = conv_block(input_tensor, num_filters, fast_layers)
    pooled = layers.MaxPooling2D(2)(skip)
    pooled = (FastDropout if fast_layers else layers.Dropout)(dropout)(pooled)
    return skip, pooled


def decoder_block(input_tensor, skip, num_filters: int, dropout: float = 0.2, fast_layers: bool = True):
    """2x2 transposed convolution (stride 2), concatenation with the skip, dropout, conv_block."""
    x = layers.Conv2DTranspose(num_filters, 2, strides=2, padding="same")(input_tensor)
    x = layers.Concatenate()([x, skip])
    x = (FastDropout if fast_layers else layers.Dropout)(dropout)(x)
    return conv_block(x, num_filters, fast_layers)


def build_unet(input_channels: int = 3, num_classes: int = 1, base_filters: int = 16, depth: int = 4,
               dropout: float = 0.2, name: str = "unet", fast_layers: bool = True,
               sqrt_channels: bool = False) -> keras.Model:
    """A U-Net for images of any size divisible by ``2**depth``.

    ``num_classes=1`` gives a sigmoid head (binary foreground probability); more classes a
    softmax head. The head computes in float32 under mixed precision. ``sqrt_channels`` feeds
    the first convolution each input channel and its square root (:class:`SqrtStretch`).
    """
    if num_classes < 1 or depth < 1 or base_filters < 1:
        raise ValueError("num_classes, depth and base_filters must be positive")
    inputs = keras.Input((None, None, input_channels), name="image")
    x = SizeCheck(2**depth, name="size_check")(inputs)
    if sqrt_channels:
        x = SqrtStretch(name="sqrt_stretch")(x)
    skips = []
    for level in range(depth):
        skip, x = encoder_block(x, base_filters * 2**level, dropout, fast_layers)
        skips.append(skip)
    x = conv_block(x, base_filters * 2**depth, fast_layers)  # the bottleneck
    for level in reversed(range(depth)):
        x = decoder_block(x, skips[level], base_filters * 2**level, dropout, fast_layers)
    activation = "sigmoid" if num_classes == 1 else "softmax"
    outputs = layers.Conv2D(num_classes, 1, activation=activation, dtype="float32", name="probabilities")(x)
    return keras.Model(inputs, outputs, name=name)


def forward_flops(model: keras.Model, height: int, width: int) -> float:
    """Multiply-adds x 2 of the convolutions for one image (the dominant cost; BN/ReLU ignored)."""
    flops = 0.0
    scale = 1.0  # area of a layer's output relative to the input
    for layer in model.layers:
        if isinstance(layer, layers.MaxPooling2D):
            scale /= 4
        elif isinstance(layer, layers.Conv2DTranspose):
            scale *= 4
            cin = layer.input.shape[-1]
            flops += 2 * cin * layer.filters * layer.kernel_size[0] * layer.kernel_size[1] * height * width * scale / 4
        elif isinstance(layer, layers.Conv2D):
            cin = layer.input.shape[-1]
            flops += 2 * cin * layer.filters * layer.kernel_size[0] * layer.kernel_size[1] * height * width * scale
    return flops
