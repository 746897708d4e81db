"""Keras layers of EfficientNet: normalization, squeeze-excite, drop-connect, MBConv.

The model builder (model.py) wires the sub-layers of each MBConv block straight into the
functional graph, named as Keras Applications names them (block1a_dwconv, block1a_se_reduce,
...), so `model.get_layer("block6a_expand_activation")` works for feature extraction.
`MBConvBlock` packs the very same sub-layers into one layer for users composing their own
networks; both go through `apply_block`, so there is one definition of the block.
"""
from __future__ import annotations

import math

import keras
from keras import layers, ops

from efficientnet_tf.constants import IMAGENET_MEAN, IMAGENET_STD
from efficientnet_tf.spec import BlockSpec
_PACKAGE = "efficientnet_tf"


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ConvKernelInitializer(keras.initializers.Initializer):
    """normal(0, sqrt(2 / fan_out)), fan_out = kh * kw * out_channels (TPU reference).

    For depthwise kernels [kh, kw, in, multiplier] the reference's fan_out is kh*kw*multiplier.
    `truncated=True` gives Keras Applications' truncated-normal flavour.
    """

    def __init__(self, truncated: bool = False, seed=None):
        self.truncated = truncated
        self.seed = seed

    def __call__(self, shape, dtype=None):
        kh, kw, _, out = shape
        stddev = math.sqrt(2.0 / (kh * kw * out))
        if self.truncated:
            return keras.random.truncated_normal(shape, stddev=stddev, dtype=dtype, seed=self.seed)
        return keras.random.normal(shape, stddev=stddev, dtype=dtype, seed=self.seed)

    def get_config(self):
        return {"truncated": self.truncated, "seed": self.seed}


def dense_kernel_initializer(seed=None):
    # uniform(+-1/sqrt(classes)) as in the reference: VarianceScaling(1/3, fan_out, uniform).
    return keras.initializers.VarianceScaling(1.0 / 3.0, "fan_out", "uniform", seed=seed)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class Normalize(layers.Layer):
    """(x - mean) / sqrt(variance) per channel; x already scaled to [0, 1].

    Holds mean, variance and count as non-trainable weights in the layout of
    keras.layers.Normalization, so Keras Applications weight files load into it.
    """

    def __init__(self, mean=IMAGENET_MEAN, variance=None, **kwargs):
        super().__init__(**kwargs)
        self.init_mean = tuple(float(m) for m in mean)
        if variance is None:
            variance = tuple(s * s for s in IMAGENET_STD)
        self.init_variance = tuple(float(v) for v in variance)

    def build(self, input_shape):
        channels = int(input_shape[-1])
        if channels != len(self.init_mean):
            raise ValueError(f"Normalize got {channels} channels but {len(self.init_mean)} means.")
        self.mean = self.add_weight(
            name="mean", shape=(channels,), trainable=False,
            initializer=keras.initializers.Constant(self.init_mean))
        self.variance = self.add_weight(
            name="variance", shape=(channels,), trainable=False,
            initializer=keras.initializers.Constant(self.init_variance))
        self.count = self.add_weight(name="count", shape=(), dtype="int64", trainable=False,
                                     initializer="zeros")

    def call(self, inputs):
        mean = ops.cast(self.mean, inputs.dtype)
        std = ops.cast(ops.sqrt(self.variance), inputs.dtype)
        return (inputs - mean) / ops.maximum(std, 1e-7)

    def get_config(self):
        return {**super().get_config(), "mean": list(self.init_mean), "variance": list(self.init_variance)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class StochasticDepth(layers.Layer):
    """Drop-connect as in the paper's code: drops the whole residual branch per sample.

    Training: each sample's branch is kept with probability 1 - rate and kept samples are
    divided by (1 - rate). Inference: identity.
    """

    def __init__(self, rate: float, seed=None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"drop-connect rate must be in [0, 1), got {rate}.")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or self.rate == 0.0:
            return inputs
        keep = 1.0 - self.rate
        shape = (ops.shape(inputs)[0],) + (1,) * (len(inputs.shape) - 1)
        noise = keras.random.uniform(shape, dtype="float32", seed=self.seed_generator)
        mask = ops.cast(ops.floor(keep + noise), inputs.dtype)
        return inputs / ops.cast(keep, inputs.dtype) * mask

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def _se_layers(filters: int, reduced: int, prefix: str, kernel_init) -> dict:
    return {
        "squeeze": layers.GlobalAveragePooling2D(keepdims=True, name=prefix + "se_squeeze"),
        "reduce": layers.Conv2D(reduced, 1, padding="same", activation="swish",
                                kernel_initializer=kernel_init, name=prefix + "se_reduce"),
        "expand": layers.Conv2D(filters, 1, padding="same", activation="sigmoid",
                                kernel_initializer=kernel_init, name=prefix + "se_expand"),
        "excite": layers.Multiply(name=prefix + "se_excite"),
    }


def _apply_se(se: dict, x):
    s = se["squeeze"](x)
    s = se["reduce"](s)
    s = se["expand"](s)
    return se["excite"]([x, s])


@keras.saving.register_keras_serializable(package=_PACKAGE)
class SqueezeExcite(layers.Layer):
    """Squeeze-and-excitation: x * sigmoid(W2 swish(W1 avgpool(x)))."""

    def __init__(self, filters: int, reduced_filters: int, truncated_init: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.filters = int(filters)
        self.reduced_filters = int(reduced_filters)
        self.truncated_init = truncated_init
        self.se = _se_layers(self.filters, self.reduced_filters, "",
                             ConvKernelInitializer(truncated_init))

    def call(self, inputs):
        return _apply_se(self.se, inputs)

    def get_config(self):
        return {**super().get_config(), "filters": self.filters,
                "reduced_filters": self.reduced_filters, "truncated_init": self.truncated_init}


def batch_norm(name: str, momentum: float = 0.99, epsilon: float = 1e-3,
               synchronized: bool = False, group_size: int | None = None):
    """BN as the reference (momentum 0.99, epsilon 1e-3). Training-time batch statistics are
    per replica by default; synchronized=True pools them over all replicas, group_size=k over
    groups of k consecutive replicas (the reference's cross-replica BN on large TPU slices)."""
    if group_size is not None and group_size != 1:
        if synchronized:
            raise ValueError("Give synchronized=True (all replicas) or group_size, not both.")
        return GroupBatchNormalization(group_size, momentum=momentum, epsilon=epsilon, name=name)
    return layers.BatchNormalization(momentum=momentum, epsilon=epsilon, synchronized=synchronized,
                                     name=name)


def group_moments(x, axes, group_size: int, replica_ctx):
    """Mean and variance of x over `axes` and over the replicas of this replica's group.

    Groups are consecutive replica ids [0, k), [k, 2k), ... Each replica writes its sums into its
    group's row of a [groups, 2C+1] zero matrix and one all-reduce adds the rows, so the
    communication is `groups` times that of all-replica synchronized BN; all_reduce also carries
    the gradient back to every replica of the group.
    """
    import tensorflow as tf

    n = replica_ctx.num_replicas_in_sync
    if group_size < 1 or n % group_size:
        raise ValueError(f"BN group_size {group_size} must divide the {n} replicas in sync; "
                         f"choose a divisor of {n} (1 = per replica, {n} = all replicas).")
    dtype = x.dtype
    x = tf.cast(x, tf.float32)
    count = tf.cast(tf.reduce_prod(tf.gather(tf.shape(x), axes)), tf.float32)
    local = tf.concat([tf.reduce_sum(x, axes), tf.reduce_sum(tf.square(x), axes),
                       tf.reshape(count, [1])], axis=0)
    onehot = tf.one_hot(replica_ctx.replica_id_in_sync_group // group_size, n // group_size)
    rows = replica_ctx.all_reduce(tf.distribute.ReduceOp.SUM, onehot[:, None] * local[None])
    total = tf.reduce_sum(onehot[:, None] * rows, axis=0)
    channels = (total.shape[0] - 1) // 2
    total_count = total[-1]
    mean = tf.math.divide_no_nan(total[:channels], total_count)
    variance = tf.maximum(
        tf.math.divide_no_nan(total[channels:2 * channels], total_count) - tf.square(mean), 0.0)
    return tf.cast(mean, dtype), tf.cast(variance, dtype)


@keras.saving.register_keras_serializable(package=_PACKAGE)
class GroupBatchNormalization(layers.BatchNormalization):
    """BatchNormalization whose training statistics are pooled over groups of `group_size`
    consecutive replicas (see group_moments). Outside a multi-replica strategy, at inference,
    and with a mask, it is plain per-replica BatchNormalization. TensorFlow backend only.
    Keras' .keras / .weights.h5 files key layers by class, so save weights for plain-BN models
    from a model built without groups (the export path does that)."""

    def __init__(self, group_size: int = 1, **kwargs):
        if kwargs.get("synchronized"):
            raise ValueError("GroupBatchNormalization takes group_size, not synchronized=True.")
        super().__init__(**kwargs)
        if int(group_size) < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}.")
        if int(group_size) > 1 and keras.backend.backend() != "tensorflow":
            raise ValueError(
                f"GroupBatchNormalization(group_size={group_size}) pools statistics through "
                f"tf.distribute, which the {keras.backend.backend()!r} Keras backend does not "
                "use: build the model with group_size 1 (bn_group_size=None), or train with "
                "KERAS_BACKEND=tensorflow through the TensorFlow training job "
                "(python -m efficientnet_tf.train).")
        self.group_size = int(group_size)

    def _moments(self, inputs, mask):
        import tensorflow as tf

        ctx = tf.distribute.get_replica_context()
        if (mask is not None or self.group_size == 1 or ctx is None
                or ctx.num_replicas_in_sync == 1):
            return super()._moments(inputs, mask)
        return group_moments(inputs, self._reduction_axes, self.group_size, ctx)

    def get_config(self):
        return {**super().get_config(), "group_size": self.group_size}


def block_layers(spec: BlockSpec, prefix: str, drop_rate: float, bn_momentum: float = 0.99,
                 bn_epsilon: float = 1e-3, truncated_init: bool = False,
                 synchronized_bn: bool = False, bn_group_size: int | None = None,
                 activation: str = "swish") -> dict:
    """The sub-layers of one MBConv block (spec already width-scaled), Keras-Applications names.
    activation: after the expansion and the depthwise conv ("relu6" for EfficientNet-Lite)."""
    init = ConvKernelInitializer(truncated_init)
    filters = spec.filters_in * spec.expand_ratio

    def bn(name):
        return batch_norm(prefix + name, bn_momentum, bn_epsilon, synchronized_bn, bn_group_size)

    out: dict = {}
    if spec.expands:
        out["expand_conv"] = layers.Conv2D(filters, 1, padding="same", use_bias=False,
                                           kernel_initializer=init, name=prefix + "expand_conv")
        out["expand_bn"] = bn("expand_bn")
        out["expand_activation"] = layers.Activation(activation, name=prefix + "expand_activation")
    # padding="same" is TensorFlow's 'SAME' (asymmetric on stride 2, exact for any input size).
    out["dwconv"] = layers.DepthwiseConv2D(spec.kernel_size, spec.strides, padding="same",
                                           use_bias=False, depthwise_initializer=init,
                                           name=prefix + "dwconv")
    out["bn"] = bn("bn")
    out["activation"] = layers.Activation(activation, name=prefix + "activation")
    if spec.has_se:
        out["se"] = _se_layers(filters, spec.se_filters, prefix, init)
    out["project_conv"] = layers.Conv2D(spec.filters_out, 1, padding="same", use_bias=False,
                                        kernel_initializer=init, name=prefix + "project_conv")
    out["project_bn"] = bn("project_bn")
    if spec.has_skip:
        if drop_rate > 0:
            out["drop"] = StochasticDepth(drop_rate, name=prefix + "drop")
        out["add"] = layers.Add(name=prefix + "add")
    return out


_BLOCK_KEYS = ("expand_conv", "expand_bn", "expand_activation", "dwconv", "bn", "activation",
               "project_conv", "project_bn", "drop", "add")
_SE_KEYS = ("squeeze", "reduce", "expand", "excite")


def block_layers_of(layers_by_name: dict, prefix: str) -> dict:
    """The block_layers dict of a built model's block `prefix` (layers_by_name: name -> layer)."""
    blk = {k: layers_by_name[prefix + k] for k in _BLOCK_KEYS if prefix + k in layers_by_name}
    if prefix + "se_squeeze" in layers_by_name:
        blk["se"] = {k: layers_by_name[prefix + "se_" + k] for k in _SE_KEYS}
    return blk


def apply_block(blk: dict, inputs, training=None):
    """Runs the layers made by block_layers on inputs (KerasTensor or tensor)."""
    x = inputs
    if "expand_conv" in blk:
        x = blk["expand_activation"](blk["expand_bn"](blk["expand_conv"](x), training=training))
    x = blk["activation"](blk["bn"](blk["dwconv"](x), training=training))
    if "se" in blk:
        x = _apply_se(blk["se"], x)
    x = blk["project_bn"](blk["project_conv"](x), training=training)
    if "add" in blk:
        if "drop" in blk:
            x = blk["drop"](x, training=training)
        x = blk["add"]([x, inputs])
    return x


@keras.saving.register_keras_serializable(package=_PACKAGE)
class MBConvBlock(layers.Layer):
    """Mobile inverted bottleneck: expand 1x1 -> depthwise kxk -> SE -> project 1x1 (+ skip).

    Identity skip (with drop-connect) only when stride 1 and filters_in == filters_out.
    """

    def __init__(self, filters_in: int, filters_out: int, kernel_size: int = 3, strides: int = 1,
                 expand_ratio: int = 6, se_ratio: float = 0.25, drop_rate: float = 0.0,
                 bn_momentum: float = 0.99, bn_epsilon: float = 1e-3, **kwargs):
        super().__init__(**kwargs)
        self.spec = BlockSpec(1, kernel_size, strides, expand_ratio, filters_in, filters_out, se_ratio)
        self.drop_rate = float(drop_rate)
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon
        self.blk = block_layers(self.spec, "", self.drop_rate, bn_momentum, bn_epsilon)

    def call(self, inputs, training=None):
        return apply_block(self.blk, inputs, training=training)

    def compute_output_shape(self, input_shape):
        b, h, w, _ = input_shape
        s = self.spec.strides
        ceil = lambda d: None if d is None else -(-d // s)  # noqa: E731  TF 'SAME': ceil(d / s)
        return (b, ceil(h), ceil(w), self.spec.filters_out)

    def get_config(self):
        s = self.spec
        return {**super().get_config(), "filters_in": s.filters_in, "filters_out": s.filters_out,
                "kernel_size": s.kernel_size, "strides": s.strides, "expand_ratio": s.expand_ratio,
                "se_ratio": s.se_ratio, "drop_rate": self.drop_rate,
                "bn_momentum": self.bn_momentum, "bn_epsilon": self.bn_epsilon}
