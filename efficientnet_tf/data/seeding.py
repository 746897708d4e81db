"""TensorFlow's global seed, set only inside a block.

A seeded tf.data op (`shuffle(seed=s)`, `Dataset.random(s)`) takes its seed pair when it is
created: (TensorFlow's global seed, s), or (a fixed default, s) when no global seed is set.
Unseeded stateful ops in dataset functions draw their op seeds from the global seed too. So a
seeded input stream depends on whatever global seed the process holds, unless the pipeline is
built inside tf_global_seed(seed): then the stream is a function of its own seed alone, and
nothing global survives the block.
"""
from __future__ import annotations

import contextlib

import tensorflow as tf
from tensorflow.python.eager import context


@contextlib.contextmanager
def tf_global_seed(seed: int | None):
    """tf.random.set_seed(seed) inside the block (nothing when seed is None); the previous
    global seed and op-seed generator after it."""
    if seed is None:
        yield
        return
    ctx = context.context()
    # TensorFlow has no public getter for its eager global seed: read the context's fields.
    old_seed, old_rng = ctx._seed, getattr(ctx, "_rng", None)
    old_state = old_rng.getstate() if old_rng is not None else None
    tf.random.set_seed(seed)
    try:
        yield
    finally:
        ctx._set_global_seed(old_seed)  # also drops kernels cached with this seed
        if old_state is not None:
            ctx._rng.setstate(old_state)
