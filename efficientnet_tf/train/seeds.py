"""Seeding without leaving process-wide state behind.

keras.utils.set_random_seed seeds Python's `random`, NumPy's global generator, TensorFlow's
global seed and Keras' global SeedGenerator, all process-wide. The trainer needs them only
while it builds the model (weight initializers and the layers' dropout RNG states are drawn
then), so seed_scope restores all four afterwards. (The input pipeline scopes its own seed:
data.seeding.)
"""
from __future__ import annotations

import contextlib
import random

import keras
import numpy as np

from efficientnet_tf.data.seeding import tf_global_seed


@contextlib.contextmanager
def seed_scope(seed: int | None):
    """keras.utils.set_random_seed(seed) inside the block; the previous states after it."""
    if seed is None:
        yield
        return
    from keras.src.backend.common import global_state
    from keras.src.random import seed_generator
    from keras.src.utils import rng_utils

    keys = (rng_utils.GLOBAL_RANDOM_SEED, seed_generator.GLOBAL_SEED_GENERATOR)
    keras_state = {k: global_state.get_global_attribute(k) for k in keys}
    py_state, np_state = random.getstate(), np.random.get_state()
    with tf_global_seed(seed):
        keras.utils.set_random_seed(seed)
        try:
            yield
        finally:
            for k, v in keras_state.items():
                global_state.set_global_attribute(k, v)
            random.setstate(py_state)
            np.random.set_state(np_state)
