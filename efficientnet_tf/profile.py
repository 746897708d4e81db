"""Parameter and multiply-add counts (the paper's "FLOPs" are multiply-adds)."""
from __future__ import annotations

import math

import keras


def _count(weights) -> int:
    return int(sum(math.prod(w.shape) for w in weights))


def _layer_macs(layer) -> int:
    """Multiply-adds of one call of a conv or dense layer, from its static shapes."""
    if not isinstance(layer, (keras.layers.Conv2D, keras.layers.DepthwiseConv2D, keras.layers.Dense)):
        return 0
    out_shape = layer.output.shape
    if any(d is None for d in out_shape[1:]):
        raise ValueError(
            f"model_profile needs static spatial sizes; layer {layer.name!r} has output shape "
            f"{tuple(out_shape)}. Build the model with a fixed input_shape.")
    kernel = layer.kernel.shape
    if isinstance(layer, keras.layers.Dense):
        return math.prod(out_shape[1:]) * int(kernel[0])
    # conv: [kh, kw, in, out]; depthwise: [kh, kw, in, multiplier]; the same product for both.
    kh, kw, cin, cout = kernel
    return math.prod(out_shape[1:-1]) * kh * kw * cin * cout


def model_profile(model: keras.Model) -> dict:
    """Returns params, trainable_params, non_trainable_params, macs, flops (= 2 * macs), input size.

    `macs` counts multiply-adds of convolutions and dense layers per image: the number the
    paper calls FLOPs (0.39B for B0 at 224 px).  `flops` is 2 * macs for those who count both.
    """
    macs = 0
    stack = list(model.layers)
    while stack:
        layer = stack.pop()
        if isinstance(layer, keras.Model):
            stack.extend(layer.layers)
            continue
        macs += _layer_macs(layer)
    return {
        "params": _count(model.weights),
        "trainable_params": _count(model.trainable_weights),
        "non_trainable_params": _count(model.non_trainable_weights),
        "macs": int(macs),
        "flops": int(2 * macs),
        "input_shape": tuple(model.inputs[0].shape[1:]),
    }
