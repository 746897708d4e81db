"""Shared fixtures and the tiny network most tests train.

    from conftest import TINY_NETWORK, tiny_config
    config = tiny_config("data.synthetic=true", "train_steps=2")   # or the `tiny_config` fixture
"""
import pytest

from fmnist import FMNIST, require

# Width and depth 0.1: every stage present (one block each), 8-16 filters, trains in seconds.
TINY_NETWORK = ("model.width_coefficient=0.1", "model.depth_coefficient=0.1")


def tiny_config(*overrides, recipe="fashion_mnist"):
    """`recipe` (default: the demo's) with the tiny network, then `overrides` (later wins)."""
    from efficientnet_tf import config as cfglib

    return cfglib.apply_overrides(cfglib.load_config(recipe), [*TINY_NETWORK, *overrides])


@pytest.fixture(name="tiny_config")
def tiny_config_fixture():
    return tiny_config


@pytest.fixture
def fashion_mnist():
    """The Fashion-MNIST folder; fails the test with CI set when it is missing (see fmnist.py)."""
    require()
    return FMNIST
