"""Builder: block specs + scaling -> keras.Model, and the keras.applications-style constructors."""
from __future__ import annotations

import keras
from keras import layers

from efficientnet_tf import layers as enl
from efficientnet_tf import weights as wts
from efficientnet_tf.constants import NORMALIZATIONS
from efficientnet_tf.scaling import compound_scaling, round_filters, scaled_blocks
from efficientnet_tf.spec import B0_BLOCKS, VARIANTS, BlockSpec

MIN_INPUT_SIZE = 32


def _check_input_shape(input_shape, default_size, include_top, stem_strides=2):
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


def EfficientNet(
    width_coefficient: float | None = None,
    depth_coefficient: float | None = None,
    default_size: int | None = None,
    dropout_rate: float = 0.2,
    drop_connect_rate: float = 0.2,
    *,
    phi: float | None = None,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    blocks: tuple[BlockSpec, ...] = B0_BLOCKS,
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
    activation: str = "swish",
    fixed_stem_head: bool = False,
    weights_hash: str | None = None,
) -> keras.Model:
    """Builds an EfficientNet.  Inputs are float pixels in [0, 255]; normalization is inside.

    Give width_coefficient, depth_coefficient and default_size explicitly, or `phi` (compound
    scaling with alpha, beta, gamma: depth alpha^phi, width beta^phi, resolution 224 gamma^phi).
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
    if phi is not None:
        if width_coefficient is not None or depth_coefficient is not None:
            raise ValueError("Give either phi or width_coefficient/depth_coefficient, not both.")
        cs = compound_scaling(phi, alpha, beta, gamma)
        width_coefficient, depth_coefficient = cs.width_coefficient, cs.depth_coefficient
        default_size = default_size or cs.resolution
    width_coefficient = 1.0 if width_coefficient is None else float(width_coefficient)
    depth_coefficient = 1.0 if depth_coefficient is None else float(depth_coefficient)
    default_size = int(default_size or 224)
    if width_coefficient <= 0 or depth_coefficient <= 0:
        raise ValueError("width_coefficient and depth_coefficient must be positive.")
    if pooling not in (None, "avg", "max"):
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}.")
    if stem_strides not in (1, 2):
        raise ValueError(f"stem_strides must be 1 or 2, got {stem_strides}.")
    wts.check_weights_argument(weights, include_top, classes, variant=variant)
    named = wts.get_weight_set(weights)  # its normalization and image size, or None
    if normalization == "auto":
        normalization = (named.normalization if named else
                         VARIANTS[variant].normalization if variant in VARIANTS else "imagenet")
    elif named and normalization != named.normalization:
        raise ValueError(
            f"weights={weights!r} were trained with normalization={named.normalization!r}; "
            f"normalization={normalization!r} would feed them wrongly scaled inputs. Leave "
            "normalization at its default ('auto').")
    if normalization is not None and normalization not in NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(NORMALIZATIONS)}, None or "
                         f"'auto', got {normalization!r}.")
    if named and named.image_size and input_shape is None:
        default_size = named.image_size
    input_shape = _check_input_shape(input_shape, default_size, include_top, stem_strides)
    init = enl.ConvKernelInitializer(truncated_init)

    if input_tensor is None:
        img_input = layers.Input(shape=input_shape, name="input_layer")
    elif not keras.backend.is_keras_tensor(input_tensor):
        img_input = layers.Input(tensor=input_tensor, shape=input_shape, name="input_layer")
    else:
        img_input = input_tensor

    x = img_input
    if normalization is not None:
        mean, std = NORMALIZATIONS[normalization]
        x = layers.Rescaling(1.0 / 255.0, name="rescaling")(x)
        x = enl.Normalize(mean, tuple(s * s for s in std), name="normalization")(x)
    stem = 32 if fixed_stem_head else round_filters(32, width_coefficient)
    x = layers.Conv2D(stem, 3, strides=stem_strides, padding="same",
                      use_bias=False, kernel_initializer=init, name="stem_conv")(x)
    x = enl.batch_norm("stem_bn", bn_momentum, bn_epsilon, synchronized_bn, bn_group_size)(x)
    x = layers.Activation(activation, name="stem_activation")(x)

    for prefix, spec, drop_rate in scaled_blocks(blocks, width_coefficient, depth_coefficient,
                                                 drop_connect_rate, fixed_stem_head):
        blk = enl.block_layers(spec, prefix, drop_rate, bn_momentum, bn_epsilon, truncated_init,
                               synchronized_bn, bn_group_size, activation=activation)
        x = enl.apply_block(blk, x)

    head = 1280 if fixed_stem_head else round_filters(1280, width_coefficient)
    x = layers.Conv2D(head, 1, padding="same", use_bias=False,
                      kernel_initializer=init, name="top_conv")(x)
    x = enl.batch_norm("top_bn", bn_momentum, bn_epsilon, synchronized_bn, bn_group_size)(x)
    x = layers.Activation(activation, name="top_activation")(x)
    if include_top:
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
        if dropout_rate > 0:
            x = layers.Dropout(dropout_rate, name="top_dropout")(x)
        # Logits and probabilities stay float32 under a mixed (bfloat16) policy.
        x = layers.Dense(classes, activation=classifier_activation, dtype="float32",
                         kernel_initializer=enl.dense_kernel_initializer(),
                         name="predictions")(x)
    elif pooling == "avg":
        x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    elif pooling == "max":
        x = layers.GlobalMaxPooling2D(name="max_pool")(x)

    inputs = keras.utils.get_source_inputs(input_tensor) if input_tensor is not None else img_input
    model = keras.Model(inputs, x, name=name or "efficientnet")
    if weights is not None:
        wts.load_weights(model, weights, variant=variant, include_top=include_top,
                         file_hash=weights_hash)
    return model


def _variant_constructor(key: str):
    v = VARIANTS[key]

    def constructor(include_top=True, weights=None, input_tensor=None, input_shape=None,
                    pooling=None, classes=1000, classifier_activation="softmax",
                    name=f"efficientnet{key}", **kwargs):
        return EfficientNet(v.width_coefficient, v.depth_coefficient, v.resolution,
                            kwargs.pop("dropout_rate", v.dropout_rate), blocks=v.blocks,
                            include_top=include_top, weights=weights, input_tensor=input_tensor,
                            input_shape=input_shape, pooling=pooling, classes=classes,
                            classifier_activation=classifier_activation, name=name,
                            variant=key, activation=v.activation,
                            fixed_stem_head=v.fixed_stem_head, **kwargs)

    constructor.__name__ = constructor.__qualname__ = v.constructor_name
    constructor.__doc__ = (
        f"EfficientNet-{key.upper()} (width {v.width_coefficient}, depth {v.depth_coefficient}, "
        f"{v.resolution} px, dropout {v.dropout_rate}"
        + (f", {v.activation}, no squeeze-excite, stem and head not scaled" if v.fixed_stem_head
           else "") + "); the keras.applications signature. Inputs: float pixels in [0, 255].")
    return constructor


# EfficientNetB0 ... EfficientNetB7: one constructor per registered variant.
for _key in VARIANTS:
    globals()[VARIANTS[_key].constructor_name] = _variant_constructor(_key)


def __getattr__(name):  # a variant registered after this module was imported
    for key, v in VARIANTS.items():
        if v.constructor_name == name:
            globals()[name] = _variant_constructor(key)
            return globals()[name]
    raise AttributeError(f"module 'efficientnet_tf.model' has no attribute {name!r}")


def feature_endpoints(model: keras.Model) -> dict[str, str]:
    """Layer names of the TPU reference's reduction_1..reduction_5 endpoints.

    reduction_i is the last block output at 1/2^i of the input resolution (stride-2 stem):
    the block before each stride-2 block, and the last block.
    """
    names = [layer.name for layer in model.layers]
    ends: dict[str, str] = {}
    # The output of the last block before each stride-2 block, and of the last block.
    block_outputs = []
    for i, layer_name in enumerate(names):
        if layer_name.startswith("block") and (layer_name.endswith("_project_bn")
                                                or layer_name.endswith("_add")):
            block = layer_name.split("_")[0]
            if block_outputs and block_outputs[-1][0] == block:
                block_outputs[-1] = (block, layer_name)
            else:
                block_outputs.append((block, layer_name))
    strided = {layer.name.split("_")[0] for layer in model.layers
               if layer.name.endswith("_dwconv") and layer.strides[0] == 2}
    level = 1
    for k, (block, layer_name) in enumerate(block_outputs):
        nxt = block_outputs[k + 1][0] if k + 1 < len(block_outputs) else None
        if nxt in strided or nxt is None:
            ends[f"reduction_{level}"] = layer_name
            level += 1
    return ends


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
