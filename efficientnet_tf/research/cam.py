"""Class activation maps (Zhou et al. 2016, used in the EfficientNet paper's Fig. 7) and
Grad-CAM (Selvaraju et al. 2017) for our models.

CAM for class c: ReLU(sum_k w_kc A_k), A_k the last feature maps (top_activation) and w_kc the
classifier kernel (predictions), for a head that is global average pooling, optional dropout and
one dense layer. Grad-CAM weighs A_k by the spatial mean of d logit_c / d A_k instead, so it
needs no particular head; for the plain head that gradient is w_kc / (H * W), so both give the
same map once normalized.
"""
from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

FEATURES = "top_activation"
CLASSIFIER = "predictions"


def _plain_head(model, feature_layer: str, classifier_layer: str) -> bool:
    """True when the feature layer feeds the dense classifier through one global average
    pooling (and dropout) only."""
    try:
        features, dense = model.get_layer(feature_layer), model.get_layer(classifier_layer)
    except ValueError:
        return False
    if not isinstance(dense, keras.layers.Dense) or dense.activation not in (
            keras.activations.linear, keras.activations.softmax):
        return False
    layer, pools = dense, 0
    while True:
        nodes = layer._inbound_nodes
        if len(nodes) != 1 or len(nodes[0].parent_nodes) != 1:
            return False
        layer = nodes[0].parent_nodes[0].operation
        if layer is features:
            return pools == 1
        if isinstance(layer, keras.layers.GlobalAveragePooling2D):
            pools += 1
        elif not isinstance(layer, keras.layers.Dropout):
            return False


def _classes(logits, class_index, n: int):
    if class_index is None:
        return tf.argmax(logits, axis=-1, output_type=tf.int32)
    cls = np.broadcast_to(np.asarray(class_index, np.int32), (n,))
    return tf.constant(cls)


def _finish(maps, size) -> np.ndarray:
    """ReLU, resize to the input resolution (bilinear), divide each map by its maximum."""
    maps = tf.nn.relu(tf.cast(maps, tf.float32))[..., None]
    maps = tf.nn.relu(tf.image.resize(maps, size, method="bilinear"))[..., 0]
    top = tf.reduce_max(maps, axis=[1, 2], keepdims=True)
    return tf.math.divide_no_nan(maps, top).numpy().astype(np.float32)


def _feature_model(model, feature_layer):
    return keras.Model(model.inputs, [model.get_layer(feature_layer).output, model.outputs[0]])


def class_activation_map(model, images, class_index=None, feature_layer: str = FEATURES,
                         classifier_layer: str = CLASSIFIER) -> np.ndarray:
    """CAM of images [n, H, W, 3] (pixels as the model takes them) as float32 [n, H, W] in
    [0, 1] (each map divided by its maximum; all zeros where nothing is positive).
    class_index: an int or one per image; None: each image's top-1 class."""
    if not _plain_head(model, feature_layer, classifier_layer):
        raise ValueError(
            f"class_activation_map needs {feature_layer!r} -> global average pooling (-> "
            f"dropout) -> dense {classifier_layer!r}; this model's head is different. Use "
            "grad_cam(model, images), which needs no particular head.")
    images = tf.convert_to_tensor(images, tf.float32)
    feats, logits = _feature_model(model, feature_layer)(images, training=False)
    cls = _classes(logits, class_index, images.shape[0])
    kernel = tf.cast(model.get_layer(classifier_layer).kernel, tf.float32)  # [K, classes]
    weights = tf.transpose(tf.gather(kernel, cls, axis=1))  # [n, K]
    maps = tf.einsum("nhwk,nk->nhw", tf.cast(feats, tf.float32), weights)
    return _finish(maps, images.shape[1:3])


def grad_cam(model, images, class_index=None, feature_layer: str = FEATURES) -> np.ndarray:
    """Grad-CAM of images [n, H, W, 3] as float32 [n, H, W] in [0, 1]; class_index as for
    class_activation_map. model's first output must be the class scores (logits)."""
    images = tf.convert_to_tensor(images, tf.float32)
    feature_model = _feature_model(model, feature_layer)
    with tf.GradientTape() as tape:
        feats, logits = feature_model(images, training=False)
        tape.watch(feats)
        cls = _classes(logits, class_index, images.shape[0])
        score = tf.reduce_sum(tf.gather(tf.cast(logits, tf.float32), cls, axis=1, batch_dims=1))
    grads = tf.cast(tape.gradient(score, feats), tf.float32)
    weights = tf.reduce_mean(grads, axis=[1, 2])  # [n, K]
    maps = tf.einsum("nhwk,nk->nhw", tf.cast(feats, tf.float32), weights)
    return _finish(maps, images.shape[1:3])


def activation_map(model, images, class_index=None, method: str = "auto") -> np.ndarray:
    """method cam | grad_cam | auto (CAM for the plain pooled dense head, else Grad-CAM)."""
    if method not in ("auto", "cam", "grad_cam"):
        raise ValueError(f"method must be auto, cam or grad_cam, got {method!r}.")
    if method == "cam" or (method == "auto" and _plain_head(model, FEATURES, CLASSIFIER)):
        return class_activation_map(model, images, class_index)
    return grad_cam(model, images, class_index)
