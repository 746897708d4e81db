"""The keras.applications surface: EfficientNet(...), EfficientNetB0 ... L2, Lite0 ... Lite4.

Each one resolves a ModelSpec (modelspec.resolve: the only home of the scaling, stem/head and
normalization rules), builds it (builder.build) and loads `weights`:

    model = EfficientNetB0(weights="imagenet")          # as keras.applications.EfficientNetB0
    model = EfficientNet(phi=-1, classes=10)            # any compound coefficient
"""
from __future__ import annotations

import keras

from efficientnet_tf import weights as wts
from efficientnet_tf.builder import build
from efficientnet_tf import modelspec
from efficientnet_tf.modelspec import resolve
from efficientnet_tf.spec import VARIANTS, BlockSpec, get_variant, variant_key


def EfficientNet(
    width_coefficient: float | None = None,
    depth_coefficient: float | None = None,
    default_size: int | None = None,
    dropout_rate: float | None = None,
    drop_connect_rate: float = 0.2,
    *,
    phi: float | None = None,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    blocks: tuple[BlockSpec, ...] | None = None,
    stem_strides: int = 2,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    truncated_init: bool = False,
    synchronized_bn: bool = False,
    bn_group_size: int | None = None,
    include_top: bool = True,
    weights=None,
    input_tensor=None,
    input_shape=None,
    pooling=None,
    classes: int = 1000,
    classifier_activation="softmax",
    name: str | None = None,
    variant: str | None = None,
    normalization: str | None = "auto",
    activation: str | None = None,
    fixed_stem_head: bool | None = None,
    weights_hash: str | None = None,
) -> keras.Model:
    """Builds an EfficientNet.  Inputs are float pixels in [0, 255]; normalization is inside.

    Give width_coefficient, depth_coefficient and default_size explicitly, or `phi` (compound
    scaling with alpha, beta, gamma: depth alpha^phi, width beta^phi, resolution 224 gamma^phi),
    or `variant` (a registered one, e.g. "b3": what EfficientNetB3 passes).
    dropout_rate None: the variant's, else 0.2. blocks/activation/fixed_stem_head None: the
    variant's (B0's table, swish, scaled stem/head without one).
    stem_strides=1 keeps full resolution in the stem (useful for 32 px inputs).
    synchronized_bn=True computes BN batch statistics across all replicas (Keras' synchronized
    BatchNormalization); bn_group_size=k pools them over groups of k consecutive replicas, as
    the TPU reference does on slices of more than 8 cores (groups of max(8, n // 8)); the default
    keeps them per replica, as the reference on <= 8 cores.
    normalization: "imagenet" (mean/std of ImageNet), "advprop" (x / 127.5 - 1), "lite"
    ((x - 127) / 128) or None (inputs come normalized: no rescaling either). "auto" (default):
    what named weights were trained with (weights="advprop" -> "advprop"), else the variant's
    ("lite" for EfficientNet-Lite), else "imagenet".
    activation: "swish" (EfficientNet) or e.g. "relu6" (Lite). fixed_stem_head: stem and head
    filters and the first and last stages' repeats are not scaled (Lite).
    A weights file that stores its normalization (keras.applications' files, ours) brings it
    along, as in Keras; a TF1 checkpoint stores none, so this option is what applies.
    weights_hash: md5 or sha256 hex the downloaded file (or checkpoint archive) must have.
    """
    key = None
    if variant is not None:
        key = variant_key(variant)
        v = get_variant(key)
        if phi is not None or (width_coefficient, depth_coefficient) not in (
                (None, None), (v.width_coefficient, v.depth_coefficient)):
            raise ValueError(f"variant={variant!r} has width {v.width_coefficient} and depth "
                             f"{v.depth_coefficient}; give no width, depth or phi with it.")
        if (blocks, activation, fixed_stem_head) != (None, None, None):
            raise ValueError(f"{v.constructor_name} is the registered network; for other blocks, "
                             "activation or stem/head rule use EfficientNet(width_coefficient, "
                             "depth_coefficient, blocks=..., activation=..., fixed_stem_head=...).")
        width_coefficient = depth_coefficient = None
    wts.check_weights_argument(weights, include_top, classes, variant=key)
    spec = resolve(key, width_coefficient=width_coefficient, depth_coefficient=depth_coefficient,
                   phi=phi, alpha=alpha, beta=beta, gamma=gamma, resolution=default_size,
                   dropout_rate=dropout_rate, drop_connect_rate=drop_connect_rate,
                   stem_strides=stem_strides, normalization=normalization,
                   weight_set=wts.get_weight_set(weights), blocks=blocks, activation=activation,
                   fixed_stem_head=fixed_stem_head, bn_momentum=bn_momentum,
                   bn_epsilon=bn_epsilon, name=name)
    model = build(spec, include_top=include_top, input_tensor=input_tensor,
                  input_shape=input_shape, pooling=pooling, classes=classes,
                  classifier_activation=classifier_activation, truncated_init=truncated_init,
                  synchronized_bn=synchronized_bn, bn_group_size=bn_group_size)
    if weights is not None:
        wts.load_weights(model, weights, variant=spec.variant, include_top=include_top,
                         file_hash=weights_hash)
    return model


def variant_model(key, include_top=True, weights=None, input_tensor=None, input_shape=None,
                  pooling=None, classes=1000, classifier_activation="softmax", name=None,
                  **kwargs) -> keras.Model:
    """The registered variant `key` with the keras.applications arguments; kwargs: the other
    options of EfficientNet (dropout_rate, normalization, stem_strides, ...)."""
    return EfficientNet(include_top=include_top, weights=weights, input_tensor=input_tensor,
                        input_shape=input_shape, pooling=pooling, classes=classes,
                        classifier_activation=classifier_activation,
                        name=name or f"efficientnet{key}", variant=key, **kwargs)


def EfficientNetB0(include_top=True, weights=None, input_tensor=None, input_shape=None,
                   pooling=None, classes=1000, classifier_activation="softmax",
                   name="efficientnetb0", **kwargs) -> keras.Model:
    """EfficientNet-B0: width 1.0, depth 1.0, 224 px, dropout 0.2."""
    return variant_model("b0", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetB1(include_top=True, weights=None, input_tensor=None, input_shape=None,
                   pooling=None, classes=1000, classifier_activation="softmax",
                   name="efficientnetb1", **kwargs) -> keras.Model:
    """EfficientNet-B1: width 1.0, depth 1.1, 240 px, dropout 0.2."""
    return variant_model("b1", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetB2(include_top=True, weights=None, input_tensor=None, input_shape=None,
                   pooling=None, classes=1000, classifier_activation="softmax",
                   name="efficientnetb2", **kwargs) -> keras.Model:
    """EfficientNet-B2: width 1.1, depth 1.2, 260 px, dropout 0.3."""
    return variant_model("b2", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetB3(include_top=True, weights=None, input_tensor=None, input_shape=None,
                   pooling=None, classes=1000, classifier_activation="softmax",
                   name="efficientnetb3", **kwargs) -> keras.Model:
    """EfficientNet-B3: width 1.2, depth 1.4, 300 px, dropout 0.3."""
    return variant_model("b3", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetB4(include_top=True, weights=None, input_tensor=None, input_shape=None,
                   pooling=None, classes=1000, classifier_activation="softmax",
                   name="efficientnetb4", **kwargs) -> keras.Model:
    """EfficientNet-B4: width 1.4, depth 1.8, 380 px, dropout 0.4."""
    return variant_model("b4", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetB5(include_top=True, weights=None, input_tensor=None, input_shape=None,
                   pooling=None, classes=1000, classifier_activation="softmax",
                   name="efficientnetb5", **kwargs) -> keras.Model:
    """EfficientNet-B5: width 1.6, depth 2.2, 456 px, dropout 0.4."""
    return variant_model("b5", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetB6(include_top=True, weights=None, input_tensor=None, input_shape=None,
                   pooling=None, classes=1000, classifier_activation="softmax",
                   name="efficientnetb6", **kwargs) -> keras.Model:
    """EfficientNet-B6: width 1.8, depth 2.6, 528 px, dropout 0.5."""
    return variant_model("b6", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetB7(include_top=True, weights=None, input_tensor=None, input_shape=None,
                   pooling=None, classes=1000, classifier_activation="softmax",
                   name="efficientnetb7", **kwargs) -> keras.Model:
    """EfficientNet-B7: width 2.0, depth 3.1, 600 px, dropout 0.5."""
    return variant_model("b7", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetB8(include_top=True, weights=None, input_tensor=None, input_shape=None,
                   pooling=None, classes=1000, classifier_activation="softmax",
                   name="efficientnetb8", **kwargs) -> keras.Model:
    """EfficientNet-B8: width 2.2, depth 3.6, 672 px, dropout 0.5."""
    return variant_model("b8", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetL2(include_top=True, weights=None, input_tensor=None, input_shape=None,
                   pooling=None, classes=1000, classifier_activation="softmax",
                   name="efficientnetl2", **kwargs) -> keras.Model:
    """EfficientNet-L2: width 4.3, depth 5.3, 800 px, dropout 0.5."""
    return variant_model("l2", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetLite0(include_top=True, weights=None, input_tensor=None, input_shape=None,
                      pooling=None, classes=1000, classifier_activation="softmax",
                      name="efficientnetlite0", **kwargs) -> keras.Model:
    """EfficientNet-Lite0: width 1.0, depth 1.0, 224 px, dropout 0.2.

    relu6, no squeeze-excite; the stem/head filters and the first/last stages' repeats are
    not scaled.
    """
    return variant_model("lite0", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetLite1(include_top=True, weights=None, input_tensor=None, input_shape=None,
                      pooling=None, classes=1000, classifier_activation="softmax",
                      name="efficientnetlite1", **kwargs) -> keras.Model:
    """EfficientNet-Lite1: width 1.0, depth 1.1, 240 px, dropout 0.2.

    relu6, no squeeze-excite; the stem/head filters and the first/last stages' repeats are
    not scaled.
    """
    return variant_model("lite1", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetLite2(include_top=True, weights=None, input_tensor=None, input_shape=None,
                      pooling=None, classes=1000, classifier_activation="softmax",
                      name="efficientnetlite2", **kwargs) -> keras.Model:
    """EfficientNet-Lite2: width 1.1, depth 1.2, 260 px, dropout 0.3.

    relu6, no squeeze-excite; the stem/head filters and the first/last stages' repeats are
    not scaled.
    """
    return variant_model("lite2", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetLite3(include_top=True, weights=None, input_tensor=None, input_shape=None,
                      pooling=None, classes=1000, classifier_activation="softmax",
                      name="efficientnetlite3", **kwargs) -> keras.Model:
    """EfficientNet-Lite3: width 1.2, depth 1.4, 280 px, dropout 0.3.

    relu6, no squeeze-excite; the stem/head filters and the first/last stages' repeats are
    not scaled.
    """
    return variant_model("lite3", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def EfficientNetLite4(include_top=True, weights=None, input_tensor=None, input_shape=None,
                      pooling=None, classes=1000, classifier_activation="softmax",
                      name="efficientnetlite4", **kwargs) -> keras.Model:
    """EfficientNet-Lite4: width 1.4, depth 1.8, 300 px, dropout 0.3.

    relu6, no squeeze-excite; the stem/head filters and the first/last stages' repeats are
    not scaled.
    """
    return variant_model("lite4", include_top, weights, input_tensor, input_shape, pooling,
                         classes, classifier_activation, name, **kwargs)

def __getattr__(name):
    """EfficientNet<NAME> of a variant registered after import (spec.register_variant)."""
    for key, v in VARIANTS.items():
        if v.constructor_name == name:
            def constructor(*args, **kwargs):
                return variant_model(key, *args, **kwargs)

            constructor.__name__ = constructor.__qualname__ = name
            constructor.__doc__ = (f"EfficientNet-{key} (registered at run time): width "
                                   f"{v.width_coefficient}, depth {v.depth_coefficient}, "
                                   f"{v.resolution} px, dropout {v.dropout_rate}.")
            globals()[name] = constructor
            return constructor
    raise AttributeError(f"module 'efficientnet_tf.model' has no attribute {name!r}")


def feature_endpoints(model: keras.Model) -> dict[str, str]:
    """Layer names of the TPU reference's reduction_1..reduction_5 endpoints.

    reduction_i is the last block output at 1/2^i of the input resolution (stride-2 stem):
    the block before each stride-2 block, and the last block.
    """
    return modelspec.endpoints(modelspec.block_plan(model))


def EfficientNetFeatures(model: keras.Model, endpoints=None) -> keras.Model:
    """A model with the multi-scale features {reduction_1..reduction_5: tensor} of `model`.

    For detection / segmentation heads (FPN, BiFPN, U-Net decoders).
    """
    ends = feature_endpoints(model)
    endpoints = endpoints or list(ends)
    unknown = [e for e in endpoints if e not in ends]
    if unknown:
        raise ValueError(f"Unknown endpoints {unknown}; available: {list(ends)}.")
    outputs = {e: model.get_layer(ends[e]).output for e in endpoints}
    return keras.Model(model.input, outputs, name=f"{model.name}_features")
