"""Dynamic loss scaling for float16 training, in the training loop's own step.

float16 has 5 exponent bits: small gradients underflow to zero unless the loss is multiplied
by a large factor before differentiating (and the gradients divided by it after). The factor
follows the rule of Keras 3's LossScaleOptimizer and NVIDIA's AMP (docs/reference.md "Mixed
precision and memory"):

    start at `initial` (2^15);
    non-finite gradients: skip the update (no optimizer step, no EMA update), halve the scale;
    `growth_steps` (2000) finite steps in a row: double the scale.

The decision is the same on every replica (the count of non-finite gradient values is summed
over replicas first). The scale, the finite-step count and the number of skipped steps are
variables: checkpointed with the run, so a resumed run goes on with the same scale.
"""
from __future__ import annotations

import tensorflow as tf


class DynamicLossScale(tf.Module):
    """Make it inside strategy.scope(); see the module docstring for the rule."""

    def __init__(self, initial: float = 2.0 ** 15, growth_steps: int = 2000,
                 name: str = "loss_scale"):
        super().__init__(name=name)
        self.growth_steps = int(growth_steps)
        sync = dict(trainable=False, synchronization=tf.VariableSynchronization.ON_WRITE,
                    aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA)
        self.scale = tf.Variable(float(initial), dtype=tf.float32, name="scale", **sync)
        self.good_steps = tf.Variable(0, dtype=tf.int64, name="good_steps", **sync)
        self.skipped = tf.Variable(0, dtype=tf.int64, name="skipped_steps", **sync)

    def scale_loss(self, loss):
        return loss * tf.cast(self.scale, loss.dtype)

    def unscale(self, grads):
        inverse = 1.0 / self.scale
        return [None if g is None else g * tf.cast(inverse, g.dtype) for g in grads]

    def apply_if_finite(self, grads, update_fn) -> tf.Tensor:
        """In replica context: update_fn(grads) when every replica's gradients are finite,
        then the scale follows the rule. Returns whether the update ran."""
        ctx = tf.distribute.get_replica_context()
        bad = tf.add_n([tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(g)), tf.float32))
                        for g in grads if g is not None])
        finite = tf.equal(ctx.all_reduce(tf.distribute.ReduceOp.SUM, bad), 0.0)
        if tf.__internal__.distribute.strategy_supports_no_merge_call():
            tf.cond(finite, lambda: _none(update_fn, grads), _nothing)
        else:
            # The optimizer's apply_gradients calls merge_call, which a tf.cond in replica
            # context cannot hold: decide in cross-replica context, update in each replica.
            def cross_replica(strategy, grads, finite):
                finite = strategy.experimental_local_results(finite)[0]
                tf.cond(finite,
                        lambda: _none(strategy.extended.call_for_each_replica, update_fn,
                                      args=(grads,)),
                        _nothing)

            ctx.merge_call(cross_replica, args=(grads, finite))
        self._follow(finite)
        return finite

    def _follow(self, finite):
        grown = self.good_steps + 1 >= self.growth_steps
        self.scale.assign(tf.where(finite, tf.where(grown, self.scale * 2.0, self.scale),
                                   self.scale * 0.5))
        self.good_steps.assign(tf.where(finite & ~grown, self.good_steps + 1,
                                        tf.constant(0, tf.int64)))
        self.skipped.assign_add(tf.where(finite, tf.constant(0, tf.int64),
                                         tf.constant(1, tf.int64)))


def _none(fn, *args, **kwargs):
    fn(*args, **kwargs)


def _nothing():
    return None
