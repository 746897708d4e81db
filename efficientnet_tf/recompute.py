"""Gradient checkpointing per MBConv block (TensorFlow backend): less activation memory for
about one more forward pass.

    logits = recompute.call(model, images, training=True)   # instead of model(images, ...)

Each block keeps only its input for the backward pass; its activations are computed again
when its gradient is needed. The model and its variables are the same objects (nothing to
convert, checkpoints unchanged). The recomputation sees the block's state as the forward pass
did: the drop-connect masks are drawn from the same RNG state and the BN moving statistics are
not updated twice, so the gradients equal those of model(images, training=True).
"""
from __future__ import annotations

import tensorflow as tf

from efficientnet_tf import builder, modelspec
from efficientnet_tf import layers as enl


def call(model, images, training: bool = True):
    """model(images, training=training), recomputing each block's activations in the backward
    pass. The model must be one of ours (it carries its ModelSpec)."""
    spec = modelspec.spec_of(model)
    if spec is None:
        raise ValueError(f"{model.name} carries no ModelSpec (it was not built by "
                         "efficientnet_tf.builder); gradient checkpointing needs the block plan.")
    parts = builder.parts_of(model, spec)
    return builder.forward(parts, images, training=training, apply_block=_recomputed_block)


def _block_state(blk: dict) -> list:
    """The variables a block's forward pass writes: BN moving statistics and RNG states."""
    return [v for layer in _layers(blk) for v in layer.non_trainable_variables]


def _layers(blk: dict):
    for value in blk.values():
        yield from (value.values() if isinstance(value, dict) else (value,))


def _recomputed_block(blk: dict, inputs, training=None):
    """apply_block under tf.recompute_grad, which runs the block a second time when its
    gradient is needed. That second run first rewinds the block's state to what the forward
    pass saw (same drop-connect masks) and afterwards puts back what the forward pass left (BN
    moving statistics updated once). Ordering: the state reads and writes are ops on the same
    variables, which tf.function runs in program order."""
    state = _block_state(blk)
    seen = {}

    def run(x):
        if "before" not in seen:  # the forward pass
            seen["before"] = [tf.identity(v.value) for v in state]
            with tf.control_dependencies(seen["before"]):
                return enl.apply_block(blk, tf.identity(x), training=training)
        after = [tf.identity(v.value) for v in state]  # the recomputation
        with tf.control_dependencies(after):
            rewind = [v.assign(b) for v, b in zip(state, seen["before"])]
        with tf.control_dependencies(rewind):
            y = enl.apply_block(blk, tf.identity(x), training=training)
        with tf.control_dependencies([y]):
            restore = [v.assign(a) for v, a in zip(state, after)]
        with tf.control_dependencies(restore):
            return tf.identity(y)

    return tf.recompute_grad(run)(inputs)
