"""Where the tests find Fashion-MNIST (Debian's dataset-fashion-mnist), and what a missing copy does.

Locally, tests that need it are skipped with a message saying how to install it. With CI set
(as .ci/run runs), they run and fail instead, so a CI machine without the data cannot pass
without them.
"""
import os

import pytest

FMNIST = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")
MISSING = not os.path.exists(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz"))
HOW = "install it with: apt-get install dataset-fashion-mnist"

# Marks for a test module (pytestmark = needs_fashion_mnist) or, through needs(), one test;
# the fixture `fashion_mnist` (conftest.py) calls require().
needs_fashion_mnist = [
    pytest.mark.skipif(MISSING and not os.environ.get("CI"),
                       reason=f"Fashion-MNIST missing at {FMNIST}; {HOW}"),
    pytest.mark.usefixtures("fashion_mnist"),
]


def needs(test):
    for mark in needs_fashion_mnist:
        test = mark(test)
    return test


def require():
    """Fails the calling test (in CI) with a clear message when the data set is missing."""
    if MISSING:
        pytest.fail(f"Fashion-MNIST missing at {FMNIST} with CI set; {HOW} (run.sh does).")
