"""The recipe's training pieces: TF1-semantics RMSProp, the LR schedule, L2 and the loss.

    schedule = learning_rate_schedule(0.016, 4096, steps_per_epoch=1281167 / 4096)
    optimizer = RMSpropTF1(schedule, rho=0.9, momentum=0.9, epsilon=1e-3)
    loss = mean(classification_loss(labels, logits, 1000, 0.1)) + l2_regularization_loss(model, 1e-5)
    optimizer.apply_gradients(...); ema.update(optimizer.iterations)   # efficientnet_tf.ema

All numbers follow the TPU reference (tensorflow/tpu models/official/efficientnet); see
docs/reference.md "Training recipe".
"""
from __future__ import annotations

import math

import keras
import tensorflow as tf

from efficientnet_tf.ema import ExponentialMovingAverage, averaged_variables  # noqa: F401  (moved)

_PACKAGE = "efficientnet_tf"


# ----------------------------------------------------------------------------- RMSProp
@keras.saving.register_keras_serializable(package=_PACKAGE)
class RMSpropTF1(keras.optimizers.Optimizer):
    """RMSProp with TF1 `tf.compat.v1.train.RMSPropOptimizer` semantics (what the paper used).

        ms  <- rho * ms + (1 - rho) * g^2          (ms starts at ONES, not zeros)
        mom <- momentum * mom + lr * g / sqrt(ms + epsilon)   (epsilon inside the sqrt)
        var <- var - mom

    Keras' RMSprop starts ms at zeros, so its first updates are about 1/sqrt(1 - rho) ~ 3x
    larger for rho = 0.9; with the paper's LR that early kick can destabilize training.
    Works under tf.distribute strategies, jit_compile=True and mixed precision (the update is
    computed in the variable's float32 dtype).
    """

    def __init__(self, learning_rate=0.001, rho: float = 0.9, momentum: float = 0.9,
                 epsilon: float = 1e-3, name: str = "rmsprop_tf1", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._ms = self.add_optimizer_variables(var_list, "ms", initializer="ones")
        self._mom = self.add_optimizer_variables(var_list, "momentum") if self.momentum else []

    def update_step(self, gradient, variable, learning_rate):
        ops = keras.ops
        lr = ops.cast(learning_rate, variable.dtype)
        grad = ops.cast(gradient, variable.dtype)
        index = self._get_variable_index(variable)
        ms = self._ms[index]
        self.assign(ms, ops.add(ops.multiply(self.rho, ms),
                                ops.multiply(1.0 - self.rho, ops.square(grad))))
        increment = ops.divide(ops.multiply(lr, grad), ops.sqrt(ops.add(ms, self.epsilon)))
        if self.momentum:
            mom = self._mom[index]
            self.assign(mom, ops.add(ops.multiply(self.momentum, mom), increment))
            self.assign_sub(variable, mom)
        else:
            self.assign_sub(variable, increment)

    def get_config(self):
        config = super().get_config()
        config.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon)
        return config


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


# ----------------------------------------------------------------------------- LR schedule
@keras.saving.register_keras_serializable(package=_PACKAGE)
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to peak_lr, then staircase exponential decay, cosine, or constant.

    As the TPU reference (utils.build_learning_rate) computes it:
        warmup_steps = int(warmup_epochs * steps_per_epoch)
        step <  warmup_steps: lr = peak_lr * step / warmup_steps          (0 at step 0)
        step >= warmup_steps:
          exponential: peak_lr * decay_rate ** floor(step / (decay_epochs * steps_per_epoch))
          cosine:      0.5 * peak_lr * (1 + cos(pi * min(step, total_steps) / total_steps))
          constant:    peak_lr
    The decay counts from step 0, not from the end of warmup (as the reference): at batch 4096
    the first post-warmup LR is already peak * 0.97^2. decay_steps may be fractional (the
    reference uses steps_per_epoch = num_images / batch, a float). Past total_steps the cosine
    stays at 0 (the reference would rise again; it never runs there).
    """

    def __init__(self, peak_lr: float, steps_per_epoch: float, warmup_epochs: float = 5.0,
                 decay_epochs: float = 2.4, decay_rate: float = 0.97, kind: str = "exponential",
                 total_steps: int | None = None):
        if kind not in ("exponential", "cosine", "constant"):
            raise ValueError(f"kind must be exponential, cosine or constant, got {kind!r}")
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch}")
        if kind == "cosine" and not total_steps:
            raise ValueError("The cosine schedule needs total_steps (the last training step).")
        if kind == "exponential" and decay_epochs <= 0:
            raise ValueError(f"decay_epochs must be > 0, got {decay_epochs}")
        self.peak_lr = float(peak_lr)
        self.steps_per_epoch = float(steps_per_epoch)
        self.warmup_epochs = float(warmup_epochs)
        self.decay_epochs = float(decay_epochs)
        self.decay_rate = float(decay_rate)
        self.kind = kind
        self.total_steps = int(total_steps) if total_steps else None
        self.warmup_steps = int(self.warmup_epochs * self.steps_per_epoch)
        self.decay_steps = self.decay_epochs * self.steps_per_epoch

    def __call__(self, step):
        step = tf.cast(step, tf.float32)
        peak = tf.constant(self.peak_lr, tf.float32)
        if self.kind == "exponential":
            lr = peak * tf.pow(self.decay_rate, tf.floor(step / self.decay_steps))
        elif self.kind == "cosine":
            total = float(self.total_steps)
            lr = 0.5 * peak * (1.0 + tf.cos(math.pi * tf.minimum(step, total) / total))
        else:
            lr = peak
        if self.warmup_steps > 0:
            warmup_lr = peak * step / float(self.warmup_steps)
            lr = tf.where(step < float(self.warmup_steps), warmup_lr, lr)
        return lr

    def get_config(self):
        return {"peak_lr": self.peak_lr, "steps_per_epoch": self.steps_per_epoch,
                "warmup_epochs": self.warmup_epochs, "decay_epochs": self.decay_epochs,
                "decay_rate": self.decay_rate, "kind": self.kind, "total_steps": self.total_steps}


class ScaledAfter(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule`, times `scale` from step `start` on (fine-tuning's second phase)."""

    def __init__(self, schedule, start: int, scale: float):
        self.schedule, self.start, self.scale = schedule, int(start), float(scale)

    def __call__(self, step):
        lr = tf.convert_to_tensor(self.schedule(step))
        after = tf.cast(step, tf.int64) >= self.start
        return lr * tf.where(after, tf.constant(self.scale, lr.dtype), tf.constant(1, lr.dtype))

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
                "start": self.start, "scale": self.scale}


def learning_rate_schedule(base_lr_per_256: float, global_batch_size: int,
                           steps_per_epoch: float, warmup_epochs: float = 5.0,
                           decay_epochs: float = 2.4, decay_rate: float = 0.97,
                           kind: str = "exponential",
                           total_steps: int | None = None) -> WarmupDecaySchedule:
    """The recipe's schedule with peak LR = base_lr_per_256 * global_batch_size / 256.

    Pass steps_per_epoch = num_train_images / global_batch_size as a float to match the
    reference's warmup and decay boundaries exactly (it does not floor it).
    """
    return WarmupDecaySchedule(base_lr_per_256 * global_batch_size / 256.0, steps_per_epoch,
                               warmup_epochs, decay_epochs, decay_rate, kind, total_steps)


# ----------------------------------------------------------------------------- losses
def bn_layers(model) -> list:
    layers = model._flatten_layers() if hasattr(model, "_flatten_layers") else [model]
    return [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]


def _is_bn_name(name: str) -> bool:
    name = name.lower()
    if "batch_normalization" in name or "batchnorm" in name:
        return True
    parts = name.replace("/", "_").replace(":", "_").split("_")
    return "bn" in parts


def l2_variables(model) -> list:
    """Trainable variables the L2 term covers: all but those of BatchNormalization layers
    (found by layer type, nested layers included; a variable name with a 'bn' /
    'batch_normalization' component is also excluded, as a fallback for custom BN layers)."""
    bn_ids = {id(v) for layer in bn_layers(model) for v in layer.weights}
    return [v for v in model.trainable_variables
            if id(v) not in bn_ids and not _is_bn_name(getattr(v, "path", None) or v.name)]


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
