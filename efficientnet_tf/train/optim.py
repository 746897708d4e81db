"""The recipe's training pieces: TF1-semantics RMSProp, the LR schedule, the EMA, L2 and the loss.

    schedule = learning_rate_schedule(0.016, 4096, steps_per_epoch=1281167 / 4096)
    optimizer = RMSpropTF1(schedule, rho=0.9, momentum=0.9, epsilon=1e-3)
    ema = ExponentialMovingAverage(model, decay=0.9999)   # build inside strategy.scope()
    ...
    loss = mean(classification_loss(labels, logits, 1000, 0.1)) + l2_regularization_loss(model, 1e-5)
    optimizer.apply_gradients(...); ema.update(optimizer.iterations)
    with ema.swapped(model):   # evaluate / export with the averaged weights
        ...
    tf.train.Checkpoint(model=model, optimizer=optimizer, ema=ema)

All numbers follow the TPU reference (tensorflow/tpu models/official/efficientnet); see
REFERENCE.md "Training recipe".
"""
from __future__ import annotations

import contextlib
import math

import keras
import tensorflow as tf

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
    """The optimizer named by an OptimizerConfig (train/config.py), with learning_rate (a float
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


# ----------------------------------------------------------------------------- EMA
def _bn_layers(model) -> list:
    layers = model._flatten_layers() if hasattr(model, "_flatten_layers") else [model]
    return [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]


def averaged_variables(model) -> list:
    """The model variables the EMA averages: all floating-point model weights, i.e. trainable
    variables plus non-trainable ones such as BN moving_mean/moving_variance. Optimizer state
    and integer state (e.g. RNG seeds) are not included."""
    return [v for v in model.weights if v.dtype in ("float32", "float64", "float16", "bfloat16")]


class ExponentialMovingAverage(tf.Module):
    """Shadow copies of a model's weights, averaged as the TPU reference does.

        decay_t = min(decay, (1 + t) / (10 + t))        (num_updates warm-up, t = update count)
        shadow <- shadow - (1 - decay_t) * (shadow - variable)

    Covers trainable variables AND BatchNormalization moving_mean/moving_variance, so the
    averaged model is consistent at eval time. Keras 3 optimizers have `use_ema`, but it has no
    num_updates warm-up (with decay 0.9999 the early average is dominated by the random init),
    skips the BN statistics (non-trainable), and overwrites the model at the end of fit instead
    of being swappable for periodic evaluation; hence this class.

    Create it inside `strategy.scope()` after the model is built. The shadows are SyncOnRead
    variables (aggregation ONLY_FIRST_REPLICA): update() may be called
      - in replica context (inside `strategy.run`, also inside a jit_compile'd step): each replica
        updates its own copy from its own model values, no communication; model weights are
        identical on all replicas after the synchronized optimizer step, so the copies agree;
      - in cross-replica context (outside strategy.run): it calls strategy.run for you;
      - with no strategy: plainly.
    Reading or checkpointing a shadow in cross-replica context gives replica 0's value.

    `t` is the `step` argument of update() (pass optimizer.iterations AFTER apply_gradients, 1 at
    the first update, as the reference whose EMA reads the already-incremented global step), or,
    when step is None, this object's own update counter (also 1 at the first update).

    Checkpoint it next to the model: tf.train.Checkpoint(model=..., optimizer=..., ema=ema).
    """

    def __init__(self, model, decay: float = 0.9999, num_updates_warmup: bool = True,
                 name: str = "ema"):
        super().__init__(name=name)
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        if not model.built or not model.weights:
            raise ValueError("Build the model (call it once or give it an input shape) before "
                             "creating its ExponentialMovingAverage.")
        self.decay = float(decay)
        self.num_updates_warmup = bool(num_updates_warmup)
        model_variables = averaged_variables(model)
        # Not tracked: the checkpoint gets the model's variables from the model itself.
        self._held = _Untracked(model_variables)
        sync = dict(synchronization=tf.VariableSynchronization.ON_READ,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA, trainable=False)
        with tf.name_scope(name):
            self.shadows = [
                tf.Variable(tf.convert_to_tensor(v), name=_shadow_name(v), **sync)
                for v in model_variables]
            self.num_updates = tf.Variable(0, dtype=tf.int64, name="num_updates", **sync)

    # ------------------------------------------------------------------ update
    def current_decay(self, step=None) -> tf.Tensor:
        """decay_t for update number `step` (default: the internal counter)."""
        t = tf.cast(self.num_updates if step is None else step, tf.float32)
        decay = tf.constant(self.decay, tf.float32)
        if self.num_updates_warmup:
            decay = tf.minimum(decay, (1.0 + t) / (10.0 + t))
        return decay

    def update(self, step=None):
        """One EMA step from the model's current values (see the class docstring for contexts)."""
        if tf.distribute.has_strategy() and tf.distribute.in_cross_replica_context():
            return tf.distribute.get_strategy().run(self._local_update, args=(step,))
        return self._local_update(step)

    def _local_update(self, step):
        self.num_updates.assign_add(1)
        one_minus = 1.0 - self.current_decay(step)
        for shadow, var in zip(self.shadows, self._held.variables):
            value = tf.cast(tf.convert_to_tensor(var), shadow.dtype)
            shadow.assign_sub(tf.cast(one_minus, shadow.dtype) * (shadow - value))
        return one_minus

    # ------------------------------------------------------------------ use
    def _targets(self, model):
        if model is None:
            return list(self._held.variables)
        targets = averaged_variables(model)
        if len(targets) != len(self.shadows) or any(
                tuple(t.shape) != tuple(s.shape) for t, s in zip(targets, self.shadows)):
            raise ValueError("This model's weights do not match the EMA's (different "
                             "architecture or variable order); build the same model.")
        return targets

    def copy_to(self, model=None):
        """Writes the averaged values into `model` (default: the model the EMA was made from;
        another model must have the same architecture). Call in cross-replica context."""
        for target, shadow in zip(self._targets(model), self.shadows):
            target.assign(tf.cast(shadow.read_value(), target.dtype))

    @contextlib.contextmanager
    def swapped(self, model=None):
        """Context in which `model` holds the EMA values (for eval/export); the training values
        come back on exit, even on an exception."""
        targets = self._targets(model)
        backup = [tf.identity(tf.convert_to_tensor(t)) for t in targets]
        self.copy_to(model)
        try:
            yield model
        finally:
            for target, value in zip(targets, backup):
                target.assign(value)


class _Untracked:
    """Holds the model's variables out of sight of tf.Module tracking and checkpointing."""

    def __init__(self, variables):
        self.variables = list(variables)


def _shadow_name(variable) -> str:
    path = getattr(variable, "path", None) or variable.name
    return path.replace("/", "__").replace(":", "_")


# ----------------------------------------------------------------------------- losses
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
    bn_ids = {id(v) for layer in _bn_layers(model) for v in layer.weights}
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
