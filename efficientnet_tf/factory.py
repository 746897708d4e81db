"""Config -> keras.Model: the one builder behind the training job, export, the demo and tools.

    from efficientnet_tf.factory import build_model
    model = build_model(config.model, image_size=224, num_classes=1000)   # logits

A model built under a mixed-precision policy keeps it in its layers; the global Keras policy
is set only while the model is built and restored afterwards (dtype_policy_scope).
"""
from __future__ import annotations

import keras

from efficientnet_tf import weights as wts
from efficientnet_tf.builder import build, dtype_policy_scope
from efficientnet_tf.config import ModelConfig, TrainConfig


def build_model(model_config: ModelConfig, image_size: int, num_classes: int, *,
                num_replicas: int = 1, dtype_policy: str | None = None,
                classifier_activation=None, weights=None) -> keras.Model:
    """The model model_config describes, at image_size x image_size, with num_classes outputs
    (logits by default). num_replicas sizes the cross-replica BN groups (training only;
    inference does not depend on them). dtype_policy: e.g. "mixed_bfloat16" (float32 logits)."""
    m = model_config
    spec = m.to_spec(image_size, weight_set=wts.get_weight_set(weights))
    if weights is not None:
        wts.check_weights_argument(weights, True, num_classes, variant=spec.variant)
    with dtype_policy_scope(dtype_policy):
        model = build(spec, input_shape=(image_size, image_size, 3), classes=num_classes,
                      classifier_activation=classifier_activation,
                      synchronized_bn=m.synchronized_bn, bn_group_size=_group(m, num_replicas))
    if weights is not None:
        wts.load_weights(model, weights, variant=spec.variant, include_top=True)
    return model


def _group(m: ModelConfig, num_replicas: int) -> int | None:
    return None if m.synchronized_bn else m.resolved_bn_group_size(num_replicas)


def build_model_from_config(config: TrainConfig, num_replicas: int = 1,
                            dtype_policy: str | None = None) -> keras.Model:
    """build_model for a whole TrainConfig (its data.image_size and data.num_classes)."""
    return build_model(config.model, config.data.image_size, config.data.num_classes,
                       num_replicas=num_replicas, dtype_policy=dtype_policy)
