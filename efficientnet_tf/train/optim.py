"""The recipe's training pieces: TF1-semantics RMSProp, the LR schedule, L2 and the loss.

    schedule = learning_rate_schedule(0.016, 4096, steps_per_epoch=1281167 / 4096)
    optimizer = RMSpropTF1(schedule, rho=0.9, momentum=0.9, epsilon=1e-3)
    loss = mean(classification_loss(labels, logits, 1000, 0.1)) + l2_regularization_loss(model, 1e-5)
    optimizer.apply_gradients(...); ema.update(optimizer.iterations)   # efficientnet_tf.ema

All numbers follow the TPU reference (tensorflow/tpu models/official/efficientnet); see
docs/reference.md "Training recipe".
"""
from __future__ import annotations

import keras
import tensorflow as tf

from efficientnet_tf.ema import ExponentialMovingAverage, averaged_variables  # noqa: F401  (moved)
# The backend-neutral pieces live in recipe.py (model.fit on any backend); re-exported here.
from efficientnet_tf.recipe import RMSpropTF1, WarmupDecaySchedule, learning_rate_schedule  # noqa: F401
from efficientnet_tf.recipe import ScaledAfter, bn_layers, l2_variables  # noqa: F401


def make_optimizer(config, learning_rate) -> keras.optimizers.Optimizer:
    """The optimizer named by an OptimizerConfig (efficientnet_tf.config), with learning_rate (a float
    or a schedule). L2 is not folded in here: add l2_regularization_loss() to the loss."""
    name = config.name
    if name == "rmsprop_tf1":
        return RMSpropTF1(learning_rate, rho=config.rho, momentum=config.momentum,
                          epsilon=config.epsilon)
    if name == "rmsprop":
        return keras.optimizers.RMSprop(learning_rate, rho=config.rho, momentum=config.momentum,
                                        epsilon=config.epsilon)
    if name == "sgd":
        return keras.optimizers.SGD(learning_rate, momentum=config.momentum,
                                    nesterov=config.nesterov)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate, epsilon=config.epsilon)
    raise ValueError(f"Unknown optimizer {name!r}: use rmsprop_tf1, rmsprop, sgd or adam.")


# ----------------------------------------------------------------------------- losses
def l2_regularization_loss(model, weight_decay: float) -> tf.Tensor:
    """weight_decay * sum(tf.nn.l2_loss(v)) over l2_variables(model) (note l2_loss = sum(v^2)/2),
    as a float32 scalar. Under a strategy, divide by num_replicas_in_sync if your per-replica
    losses are summed."""
    variables = l2_variables(model)
    if not variables or not weight_decay:
        return tf.constant(0.0, tf.float32)
    total = tf.add_n([tf.nn.l2_loss(tf.cast(tf.convert_to_tensor(v), tf.float32))
                      for v in variables])
    return tf.cast(weight_decay, tf.float32) * total


def classification_loss(labels, logits, num_classes: int, label_smoothing: float = 0.0):
    """Per-example softmax cross-entropy with label smoothing, in float32 (bf16 logits are cast).

    labels: int class ids [batch] (0-based) or dense targets [batch, num_classes].
    Smoothed target = onehot * (1 - label_smoothing) + label_smoothing / num_classes (as
    tf.compat.v1.losses.softmax_cross_entropy). Returns shape [batch]; reduce it yourself
    (sum / global_batch_size under a strategy).
    """
    logits = tf.cast(logits, tf.float32)
    if logits.shape[-1] is not None and logits.shape[-1] != num_classes:
        raise ValueError(f"logits have {logits.shape[-1]} classes but num_classes={num_classes}")
    labels = tf.convert_to_tensor(labels)
    if labels.shape.rank == logits.shape.rank:
        targets = tf.cast(labels, tf.float32)
    else:
        targets = tf.one_hot(tf.cast(labels, tf.int32), num_classes, dtype=tf.float32)
    if label_smoothing:
        targets = targets * (1.0 - label_smoothing) + label_smoothing / num_classes
    return tf.nn.softmax_cross_entropy_with_logits(labels=targets, logits=logits)
