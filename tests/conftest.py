"""Shared fixtures and the tiny network most tests train.

    from conftest import TINY_NETWORK, tiny_config
    config = tiny_config("data.synthetic=true", "train_steps=2")   # or the `tiny_config` fixture
    model = tiny_bn_model()                                         # conv, BN, pool, dense
"""
import pytest

from fmnist import FMNIST, require

# Width and depth 0.1: every stage present (one block each), 8-16 filters, trains in seconds.
TINY_NETWORK = ("model.width_coefficient=0.1", "model.depth_coefficient=0.1")


def tiny_config(*overrides, recipe="fashion_mnist"):
    """`recipe` (default: the demo's) with the tiny network, then `overrides` (later wins)."""
    from efficientnet_tf import config as cfglib

    return cfglib.apply_overrides(cfglib.load_config(recipe), [*TINY_NETWORK, *overrides])


def tiny_bn_model(seed=0):
    """conv -> BN -> pool -> dense on 4x4 images: the smallest model with BN statistics (EMA,
    L2 and optimizer tests)."""
    import keras

    keras.utils.set_random_seed(seed)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(4, 3, padding="same", use_bias=False, name="stem_conv")(inputs)
    x = keras.layers.BatchNormalization(name="stem_bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    return keras.Model(inputs, outputs)


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
    return tiny_config


@pytest.fixture
def fashion_mnist():
    """The Fashion-MNIST folder; fails the test with CI set when it is missing (see fmnist.py)."""
    require()
    return FMNIST
