"""The exponential moving average of a model's weights, as the TPU reference keeps it.

It lives beside the model, not in the trainer: training updates it, and evaluation, export and
weight loading read it (a checkpoint's `ema` object holds the averages the reference evaluates).

    ema = ExponentialMovingAverage(model, decay=0.9999)   # build inside strategy.scope()
    ema.update(optimizer.iterations)                     # after each optimizer step
    with ema.swapped(model):                              # evaluate / export the averages
        ...
    tf.train.Checkpoint(model=model, optimizer=optimizer, ema=ema)
"""
from __future__ import annotations

import contextlib

import tensorflow as tf

# The weights averaged (floating point: trainable ones and BN statistics), one pick for both EMAs.
from efficientnet_tf.recipe import averaged_variables


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
