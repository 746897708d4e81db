"""Checkpoints in the TPU reference's names, for tests: written with tf.raw_ops.SaveV2 (random
kernels, BN statistics settled on calibration images, EMA shadows that differ from the raw
weights, RMSProp slots, global_step), and the reference's inference computation from those names
with plain tf.nn ops, independent of our model."""
import dataclasses
import os

import numpy as np
import tensorflow as tf

import efficientnet_tf as en
from efficientnet_tf.scaling import scaled_blocks

SIZE = 64
EMA = "ExponentialMovingAverage"


def reference_names(variant: str, classes: int):
    """{reference variable name: shape} for a variant, from the builder rules alone."""
    v = en.VARIANTS[variant]
    scope = f"efficientnet-{variant}"
    bn = lambda p, c: {f"{p}/{w}": (c,) for w in ("gamma", "beta", "moving_mean",  # noqa: E731
                                                  "moving_variance")}
    stem = 32 if v.fixed_stem_head else en.round_filters(32, v.width_coefficient)
    names = {f"{scope}/stem/conv2d/kernel": (3, 3, 3, stem), **bn(f"{scope}/stem/tpu_batch_normalization", stem)}
    blocks = scaled_blocks(v.blocks, v.width_coefficient, v.depth_coefficient, 0.0,
                           v.fixed_stem_head)
    for n, (_, s, _) in enumerate(blocks):
        p = f"{scope}/blocks_{n}"
        if n == 0:  # it reads the stem's output (Lite's fixed 32 may differ from filters_in)
            s = dataclasses.replace(s, filters_in=stem)
        exp = s.filters_in * s.expand_ratio
        se = max(1, int(s.filters_in * s.se_ratio))
        bns = [f"{p}/tpu_batch_normalization" + suffix for suffix in ("", "_1", "_2")]
        if s.expand_ratio != 1:
            names[f"{p}/conv2d/kernel"] = (1, 1, s.filters_in, exp)
            names.update(bn(bns.pop(0), exp))
        names[f"{p}/depthwise_conv2d/depthwise_kernel"] = (s.kernel_size, s.kernel_size, exp, 1)
        names.update(bn(bns.pop(0), exp))
        if s.se_ratio:  # Lite has none
            names.update({f"{p}/se/conv2d/kernel": (1, 1, exp, se), f"{p}/se/conv2d/bias": (se,),
                          f"{p}/se/conv2d_1/kernel": (1, 1, se, exp),
                          f"{p}/se/conv2d_1/bias": (exp,)})
        names[f"{p}/{'conv2d_1' if s.expand_ratio != 1 else 'conv2d'}/kernel"] = (
            1, 1, exp, s.filters_out)
        names.update(bn(bns.pop(0), s.filters_out))
    head = 1280 if v.fixed_stem_head else en.round_filters(1280, v.width_coefficient)
    names[f"{scope}/head/conv2d/kernel"] = (1, 1, blocks[-1][1].filters_out, head)
    names.update(bn(f"{scope}/head/tpu_batch_normalization", head))
    names.update({f"{scope}/head/dense/kernel": (head, classes), f"{scope}/head/dense/bias": (classes,)})
    return names, blocks


def write_checkpoint(directory, variant, classes=10, seed=0, step=1234):
    """A reference-layout checkpoint; returns (prefix, {name: raw}, {name: ema}).

    Kernels are random; BN statistics are then settled on calibration images (each BN's moving
    mean/variance = its inputs' moments), so activations keep their scale through every block and
    the logits depend on the input (with random statistics they would be nearly constant)."""
    rng = np.random.default_rng(seed)
    shapes, _ = reference_names(variant, classes)
    raw, ema = {}, {}
    for name, shape in shapes.items():
        w = name.rsplit("/", 1)[1]
        if w in ("moving_variance", "gamma"):
            value = rng.uniform(0.8, 1.2, shape)
        elif w in ("moving_mean", "beta", "bias"):
            value = rng.normal(0, 0.1, shape)
        else:  # kernels: fan-out scaled
            fan_out = np.prod(shape[:2]) * (shape[-1] if w != "depthwise_kernel" else 1)
            value = rng.normal(0, np.sqrt(1.0 / fan_out), shape)
        raw[name] = value.astype(np.float32)
        ema[name] = (value * rng.uniform(0.9, 1.1, shape)).astype(np.float32)  # differs
    calib = rng.uniform(0, 255, (8, SIZE, SIZE, 3)).astype(np.float32)
    for values in (raw, ema):
        reference_logits(values, variant, calib, settle=True)
    tensors = {}
    for name, shape in shapes.items():
        tensors[name], tensors[f"{name}/{EMA}"] = raw[name], ema[name]
        if name.rsplit("/", 1)[1] not in ("moving_mean", "moving_variance"):  # trainables' slots
            tensors[f"{name}/RMSProp"] = np.ones(shape, np.float32)
            tensors[f"{name}/RMSProp_1"] = np.zeros(shape, np.float32)
    tensors["global_step"] = np.asarray(step, np.int64)
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(str(directory), f"model.ckpt-{step}")
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    with open(os.path.join(str(directory), "checkpoint"), "w") as f:
        f.write(f'model_checkpoint_path: "model.ckpt-{step}"\n')
    return prefix, raw, ema


def reference_logits(values, variant, images, normalization="imagenet", settle=False):
    """The reference's inference computation, from the checkpoint's names, with tf.nn ops.
    normalization: "imagenet" (its model function's mean/std), "advprop" (eval_ckpt_main's
    x * 2 / 255 - 1) or None (images are used as they are). settle=True first sets each BN's
    moving statistics in `values` to the moments of its inputs on `images`."""
    scope = f"efficientnet-{variant}"
    get = lambda n: tf.constant(values[f"{scope}/{n}"])  # noqa: E731

    def bn(x, p):
        if settle:
            mean, var = tf.nn.moments(x, axes=[0, 1, 2])
            values[f"{scope}/{p}/moving_mean"] = mean.numpy()
            values[f"{scope}/{p}/moving_variance"] = var.numpy()
        return ((x - get(f"{p}/moving_mean")) / tf.sqrt(get(f"{p}/moving_variance") + 1e-3)
                * get(f"{p}/gamma") + get(f"{p}/beta"))

    def conv(x, n, stride=1):
        return tf.nn.conv2d(x, get(n), stride, "SAME")

    x = tf.constant(images)
    if normalization == "imagenet":
        x = (x - tf.constant([0.485, 0.456, 0.406]) * 255.0) / (
            tf.constant([0.229, 0.224, 0.225]) * 255.0)
    elif normalization == "advprop":
        x = x * 2.0 / 255.0 - 1.0
    elif normalization == "lite":  # the lite builder's MEAN_RGB 127, STDDEV_RGB 128
        x = (x - 127.0) / 128.0
    act = tf.nn.relu6 if en.VARIANTS[variant].activation == "relu6" else tf.nn.swish
    x = act(bn(conv(x, "stem/conv2d/kernel", 2), "stem/tpu_batch_normalization"))
    _, blocks = reference_names(variant, 1)
    for n, (_, s, _) in enumerate(blocks):
        p = f"blocks_{n}"
        bns = [f"{p}/tpu_batch_normalization" + suffix for suffix in ("", "_1", "_2")]
        h = x
        if s.expand_ratio != 1:
            h = act(bn(conv(h, f"{p}/conv2d/kernel"), bns.pop(0)))
        h = tf.nn.depthwise_conv2d(h, get(f"{p}/depthwise_conv2d/depthwise_kernel"),
                                   [1, s.strides, s.strides, 1], "SAME")
        h = act(bn(h, bns.pop(0)))
        if s.se_ratio:  # squeeze-excite's inner activation is swish in every variant
            se = tf.reduce_mean(h, [1, 2], keepdims=True)
            se = tf.nn.swish(conv(se, f"{p}/se/conv2d/kernel") + get(f"{p}/se/conv2d/bias"))
            se = conv(se, f"{p}/se/conv2d_1/kernel") + get(f"{p}/se/conv2d_1/bias")
            h = tf.sigmoid(se) * h
        h = bn(conv(h, f"{p}/{'conv2d_1' if s.expand_ratio != 1 else 'conv2d'}/kernel"), bns.pop(0))
        x = h + x if s.strides == 1 and s.filters_in == s.filters_out else h
    x = act(bn(conv(x, "head/conv2d/kernel"), "head/tpu_batch_normalization"))
    x = tf.reduce_mean(x, [1, 2])
    return (tf.matmul(x, get("head/dense/kernel")) + get("head/dense/bias")).numpy()
