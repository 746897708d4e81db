"""Shared fixtures."""
import pytest

from fmnist import FMNIST, require


@pytest.fixture
def fashion_mnist():
    """The Fashion-MNIST folder; fails the test with CI set when it is missing (see fmnist.py)."""
    require()
    return FMNIST
