"""ModelSpec -> keras.Model. Weights are not this module's business (model.py loads them).

    from efficientnet_tf.builder import build
    from efficientnet_tf.modelspec import resolve
    model = build(resolve("b0"), classes=10, classifier_activation=None)

The model carries its spec (modelspec.spec_of(model)), so the weight converters, fine-tuning's
stages and the feature endpoints read the structure instead of parsing layer names.
"""
from __future__ import annotations

import contextlib

import keras
from keras import layers

from efficientnet_tf import layers as enl
from efficientnet_tf.constants import NORMALIZATIONS
from efficientnet_tf.modelspec import SPEC_ATTRIBUTE, ModelSpec

MIN_INPUT_SIZE = 32


@contextlib.contextmanager
def dtype_policy_scope(policy: str | None):
    """Sets Keras' global dtype policy (e.g. "mixed_bfloat16") inside the block only."""
    if policy is None:
        yield
        return
    previous = keras.config.dtype_policy()
    keras.config.set_dtype_policy(policy)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(previous)


def check_input_shape(input_shape, default_size, include_top, stem_strides=2):
    """The (height, width, 3) the model is built for; ValueError naming what is wrong."""
    if input_shape is None:
        # As keras.applications: a fixed size with the classifier, any size without it.
        return (default_size, default_size, 3) if include_top else (None, None, 3)
    input_shape = tuple(input_shape)
    if len(input_shape) != 3 or input_shape[-1] != 3:
        raise ValueError(
            f"input_shape must be (height, width, 3) with 3 RGB channels, got {input_shape}. "
            "Grayscale images: repeat the channel to 3 (tf.image.grayscale_to_rgb).")
    # As keras.applications: 32 px at least; a stride-1 stem halves that (same feature maps).
    min_size = MIN_INPUT_SIZE * stem_strides // 2
    for d in input_shape[:2]:
        if d is not None and d < min_size:
            raise ValueError(f"input_shape {input_shape}: height and width must be at least "
                             f"{min_size} px (or None) with stem_strides={stem_strides}.")
    return input_shape


def build(spec: ModelSpec, *, include_top: bool = True, input_tensor=None, input_shape=None,
          pooling=None, classes: int = 1000, classifier_activation="softmax",
          truncated_init: bool = False, synchronized_bn: bool = False,
          bn_group_size: int | None = None) -> keras.Model:
    """Builds the network `spec` describes. Inputs are float pixels in [0, 255] (the spec's
    normalization is inside). include_top/input_tensor/input_shape/pooling/classes/
    classifier_activation: as keras.applications. truncated_init: Keras Applications'
    truncated-normal conv init instead of the reference's normal. synchronized_bn: BN batch
    statistics over all replicas; bn_group_size=k over groups of k consecutive replicas."""
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}.")
    input_shape = check_input_shape(input_shape, spec.resolution, include_top, spec.stem_strides)
    init = enl.ConvKernelInitializer(truncated_init)

    def bn(name):
        return enl.batch_norm(name, spec.bn_momentum, spec.bn_epsilon, synchronized_bn,
                              bn_group_size)

    if input_tensor is None:
        img_input = layers.Input(shape=input_shape, name="input_layer")
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = layers.Input(tensor=input_tensor, shape=input_shape, name="input_layer")
    else:
        img_input = input_tensor

    # Each part is made just before it is wired: the layers draw their initial values and RNG
    # seeds in this order (a seeded build gives the same weights as ever).
    x = _run(_stem_layers(spec, init, bn), img_input)
    for b in spec.blocks:
        blk = enl.block_layers(b.block, b.prefix, b.drop_rate, spec.bn_momentum, spec.bn_epsilon,
                               truncated_init, synchronized_bn, bn_group_size,
                               activation=spec.activation)
        x = enl.apply_block(blk, x)
    x = _run(_head_layers(spec, include_top, pooling, classes, classifier_activation, init, bn), x)

    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
    model = keras.Model(inputs, x, name=spec.name)
    setattr(model, SPEC_ATTRIBUTE, spec)
    return model


def _stem_layers(spec, init, bn) -> list:
    stem = []
    if spec.normalization is not None:
        mean, std = NORMALIZATIONS[spec.normalization]
        stem += [layers.Rescaling(1.0 / 255.0, name="rescaling"),
                 enl.Normalize(mean, tuple(s * s for s in std), name="normalization")]
    return stem + [layers.Conv2D(spec.stem_filters, 3, strides=spec.stem_strides, padding="same",
                                 use_bias=False, kernel_initializer=init, name="stem_conv"),
                   bn("stem_bn"), layers.Activation(spec.activation, name="stem_activation")]


def _head_layers(spec, include_top, pooling, classes, classifier_activation, init, bn) -> list:
    head = [layers.Conv2D(spec.head_filters, 1, padding="same", use_bias=False,
                          kernel_initializer=init, name="top_conv"),
            bn("top_bn"), layers.Activation(spec.activation, name="top_activation")]
    if include_top:
        head.append(layers.GlobalAveragePooling2D(name="avg_pool"))
        if spec.dropout_rate > 0:
            head.append(layers.Dropout(spec.dropout_rate, name="top_dropout"))
        # Logits and probabilities stay float32 under a mixed precision policy.
        head.append(layers.Dense(classes, activation=classifier_activation, dtype="float32",
                                 kernel_initializer=enl.dense_kernel_initializer(),
                                 name="predictions"))
    elif pooling == "avg":
        head.append(layers.GlobalAveragePooling2D(name="avg_pool"))
    elif pooling == "max":
        head.append(layers.GlobalMaxPooling2D(name="max_pool"))
    return head


def _run(part: list, x, training=None):
    for layer in part:
        if training is not None and isinstance(layer, (layers.BatchNormalization, layers.Dropout)):
            x = layer(x, training=training)
        else:
            x = layer(x)
    return x


def forward(parts: dict, x, training=None, apply_block=enl.apply_block):
    """Runs a built model's layers (parts_of) on x as build() wired them; another apply_block
    changes how each block runs (gradient checkpointing: recompute.py)."""
    x = _run(parts["stem"], x, training)
    for blk in parts["blocks"]:
        x = apply_block(blk, x, training=training)
    return _run(parts["head"], x, training)


_STEM = ("rescaling", "normalization", "stem_conv", "stem_bn", "stem_activation")
_HEAD = ("top_conv", "top_bn", "top_activation", "avg_pool", "max_pool", "top_dropout",
         "predictions")


def parts_of(model: keras.Model, spec: ModelSpec) -> dict:
    """A built model's layers by part, {"stem", "blocks" (block_layers dicts), "head"} (spec:
    the model's, modelspec.spec_of)."""
    by_name = {layer.name: layer for layer in model.layers}
    return {"stem": [by_name[n] for n in _STEM if n in by_name],
            "blocks": [enl.block_layers_of(by_name, b.prefix) for b in spec.blocks],
            "head": [by_name[n] for n in _HEAD if n in by_name]}
