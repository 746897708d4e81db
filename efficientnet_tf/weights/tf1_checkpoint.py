"""The TPU reference's TF1 checkpoints (`model.ckpt-N`), read with tf.train.load_checkpoint.

A path is a checkpoint prefix (`.../model.ckpt`, `.../model.ckpt-218000`) or a directory with
a `checkpoint` file. Variable names (docs/reference.md "Published checkpoints"):

    <scope>/stem/conv2d/kernel               <scope>/stem/tpu_batch_normalization/gamma ...
    <scope>/blocks_N/conv2d/kernel           expansion (the projection in blocks without one)
    <scope>/blocks_N/depthwise_conv2d/depthwise_kernel
    <scope>/blocks_N/se/conv2d{,_1}/{kernel,bias}        squeeze / excite
    <scope>/blocks_N/conv2d_1/kernel         projection (blocks with an expansion)
    <scope>/blocks_N/tpu_batch_normalization{,_1,_2}/... after each conv, in call order
    <scope>/head/conv2d/kernel  <scope>/head/tpu_batch_normalization/...  <scope>/head/dense/...

Block N is the N-th MBConv block in build order: the mapping is derived from the model, not a
table. Each variable may have a `/ExponentialMovingAverage` shadow (BN statistics too); the
shadows are read by default, as the reference's evaluation restores them. Optimizer slots
(`/RMSProp`, `/RMSProp_1`), `global_step` and anything else are ignored. The checkpoints hold
no input normalization (the reference normalizes outside its network: ImageNet mean/std, or
x / 127.5 - 1 for AdvProp), so the model's own `normalization` option applies.
"""
from __future__ import annotations

import re

import numpy as np

from efficientnet_tf.modelspec import block_plan
from efficientnet_tf.weights.formats import FileLayer, WeightFormat, register_format

EMA = "ExponentialMovingAverage"
_WEIGHTS = ("kernel", "depthwise_kernel", "bias", "gamma", "beta", "moving_mean",
            "moving_variance")
_KERAS_WEIGHT = {"depthwise_kernel": "kernel"}  # Keras 3 names a depthwise kernel "kernel"
_NAME = re.compile(r"^(?P<layer>.+/(?:stem|head|blocks_\d+)(?:/se)?/[a-z_0-9]+)/"
                   r"(?P<weight>[a-z_]+)(?P<ema>/" + EMA + r")?$")

# Our suffix (keras.applications' names) for each reference layer of a block.
_WITH_EXPANSION = {
    "conv2d": "expand_conv", "tpu_batch_normalization": "expand_bn",
    "depthwise_conv2d": "dwconv", "tpu_batch_normalization_1": "bn",
    "se/conv2d": "se_reduce", "se/conv2d_1": "se_expand",
    "conv2d_1": "project_conv", "tpu_batch_normalization_2": "project_bn",
}
_WITHOUT_EXPANSION = {
    "depthwise_conv2d": "dwconv", "tpu_batch_normalization": "bn",
    "se/conv2d": "se_reduce", "se/conv2d_1": "se_expand",
    "conv2d": "project_conv", "tpu_batch_normalization_1": "project_bn",
}
_STEM_HEAD = {
    "stem/conv2d": "stem_conv", "stem/tpu_batch_normalization": "stem_bn",
    "head/conv2d": "top_conv", "head/tpu_batch_normalization": "top_bn",
    "head/dense": "predictions",
}


def checkpoint_prefix(path: str) -> str | None:
    """The checkpoint prefix `path` names (a prefix, or a directory's latest), or None."""
    import tensorflow as tf

    if tf.io.gfile.isdir(path):
        return tf.train.latest_checkpoint(path)
    if tf.io.gfile.exists(path + ".index"):
        return path
    return None


def _names(prefix: str) -> dict:
    import tensorflow as tf

    return dict(tf.train.list_variables(prefix))


def sniff(path: str) -> bool:
    prefix = checkpoint_prefix(path)
    return bool(prefix) and any(n.endswith("/stem/conv2d/kernel") for n in _names(prefix))


def read(path: str, use_ema: bool = True) -> list:
    """FileLayers under the reference's layer names (EMA shadows when use_ema and present)."""
    import tensorflow as tf

    prefix = checkpoint_prefix(path)
    if prefix is None:
        raise ValueError(f"{path} is not a TF1 checkpoint (no {path}.index, no 'checkpoint' "
                         "file in the directory).")
    try:
        reader = tf.train.load_checkpoint(prefix)
    except tf.errors.OpError as e:
        raise ValueError(f"{prefix}: cannot open the checkpoint ({e.__class__.__name__}); it is "
                         "truncated or corrupt.") from None
    layers: dict[str, dict] = {}
    shadows: set = set()
    for name in sorted(_names(prefix)):
        m = _NAME.match(name)
        if not m or m["weight"] not in _WEIGHTS:
            continue  # optimizer slots, global_step, ...
        if m["ema"]:
            shadows.add((m["layer"], m["weight"]))
        else:
            layers.setdefault(m["layer"], {})[m["weight"]] = name
    out = []
    for layer, weights in layers.items():
        values, ema = [], []
        for weight, name in weights.items():
            shadow = use_ema and (layer, weight) in shadows
            try:
                value = reader.get_tensor(f"{name}/{EMA}" if shadow else name)
            except (tf.errors.OpError, IndexError) as e:  # IndexError: a short .data file
                raise ValueError(f"{prefix}: cannot read {name} ({e.__class__.__name__}); "
                                 "the checkpoint is truncated or corrupt.") from None
            values.append((_KERAS_WEIGHT.get(weight, weight), np.asarray(value)))
            ema.append(shadow)
        out.append(FileLayer(layer, values, ema=all(ema) if use_ema else False))
    if not out:
        raise ValueError(f"{prefix} holds no EfficientNet variables (expected names such as "
                         "efficientnet-b0/stem/conv2d/kernel).")
    return out


def map_names(file_layers, model) -> list:
    """The reference's layer names -> ours; names without a counterpart stay as they are (the
    matcher then names them as layers this model lacks)."""
    blocks = block_plan(model)  # the reference numbers blocks_0, blocks_1, ... in build order
    out = []
    for fl in file_layers:
        if fl.is_normalization:
            out.append(fl.name)
            continue
        scope, _, rest = fl.name.partition("/")
        if rest in _STEM_HEAD:
            out.append(_STEM_HEAD[rest])
            continue
        m = re.fullmatch(r"blocks_(\d+)/(.+)", rest)
        if m and int(m[1]) < len(blocks):
            block = blocks[int(m[1])]
            table = _WITH_EXPANSION if block.expands else _WITHOUT_EXPANSION
            if m[2] in table:
                out.append(block.prefix + table[m[2]])
                continue
        out.append(fl.name)
    return out


register_format(WeightFormat(
    "tf1_checkpoint", sniff, read, map_names,
    "a TPU-reference TF1 checkpoint: a model.ckpt[-N] prefix or a directory with a "
    "'checkpoint' file", ema_aware=True, stores_normalization=False))
