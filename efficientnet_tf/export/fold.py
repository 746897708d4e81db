"""Fold inference-mode BatchNormalization into the convolution before it (export-time only).

BN(conv(x)) = conv(x) * s + (beta - mean * s), s = gamma / sqrt(variance + epsilon), so a conv
whose only consumer is a BN becomes one conv with kernel * s and a bias. The folded model is a
new functional model (same layer names; BN layers replaced by FoldedBatchNorm, an identity) for inference only:
it cannot be fine-tuned like the original (BN is gone).
"""
from __future__ import annotations

import keras
import numpy as np

_CONVS = (keras.layers.Conv2D, keras.layers.DepthwiseConv2D)


@keras.saving.register_keras_serializable(package="efficientnet_tf.export")
class FoldedBatchNorm(keras.layers.Layer):
    """Identity that takes a folded BN's place (accepts the training/mask arguments BN got)."""

    def call(self, inputs, training=None, mask=None):
        return inputs

    def compute_output_shape(self, input_shape):
        return input_shape


def _producer(layer):
    nodes = layer._inbound_nodes
    if len(nodes) != 1 or len(nodes[0].input_tensors) != 1:
        return None
    return nodes[0].input_tensors[0]._keras_history.operation


def foldable_pairs(model: keras.Model) -> dict[str, str]:
    """{conv layer name: bn layer name} for every conv whose only consumer is an inference BN."""
    pairs = {}
    for bn in model.layers:
        if not isinstance(bn, keras.layers.BatchNormalization) or bn.axis not in (-1, 3):
            continue
        conv = _producer(bn)
        if (isinstance(conv, _CONVS) and len(conv._inbound_nodes) == 1
                and len(conv._outbound_nodes) == 1
                and getattr(conv.activation, "__name__", "") == "linear"
                and conv.data_format == "channels_last"):
            pairs[conv.name] = bn.name
    return pairs


def _folded_weights(conv, bn) -> list[np.ndarray]:
    gamma = bn.gamma.numpy() if bn.scale else 1.0
    beta = bn.beta.numpy() if bn.center else 0.0
    mean = bn.moving_mean.numpy()
    scale = (gamma / np.sqrt(bn.moving_variance.numpy() + bn.epsilon)).astype(np.float64)
    if isinstance(conv, keras.layers.DepthwiseConv2D):
        kernel = conv.kernel.numpy().astype(np.float64)  # [kh, kw, in, multiplier]
        kernel = kernel * scale.reshape(kernel.shape[2], kernel.shape[3])
    else:
        kernel = conv.kernel.numpy().astype(np.float64) * scale
    bias = conv.bias.numpy().astype(np.float64) if conv.use_bias else 0.0
    bias = (bias - mean) * scale + beta
    return [kernel.astype(np.float32), np.asarray(bias, np.float32)]


def fold_batch_norm(model: keras.Model) -> keras.Model:
    """A copy of a functional model with every foldable BN folded into its conv."""
    if not isinstance(model, keras.Model) or not hasattr(model, "_inbound_nodes"):
        raise TypeError("fold_batch_norm needs a functional keras.Model")
    pairs = foldable_pairs(model)
    bns = set(pairs.values())

    def clone(layer):
        config = layer.get_config()
        if layer.name in pairs:
            config["use_bias"] = True
            config["bias_initializer"] = "zeros"
        elif layer.name in bns:
            return FoldedBatchNorm(name=layer.name)
        return layer.__class__.from_config(config)

    folded = keras.models.clone_model(model, clone_function=clone)
    for layer in folded.layers:
        old = model.get_layer(layer.name)
        if layer.name in pairs:
            layer.set_weights(_folded_weights(old, model.get_layer(pairs[layer.name])))
        elif layer.name not in bns and old.weights:
            layer.set_weights(old.get_weights())
    return folded
