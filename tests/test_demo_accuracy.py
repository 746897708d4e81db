"""The main job's accuracy guard (slow): the demo recipe, shortened by bench/demo_accuracy.py,
must reach the threshold that the bench's spread over seeds gave (docs/benchmarks.md, "The
demo's accuracy guard"). A change to the model, the recipe or the input stream that costs the
demo accuracy fails here; the tests of each piece only check that it computes what it says."""
import os
import sys

import pytest

from fmnist import needs_fashion_mnist

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "bench"))
import demo_accuracy  # noqa: E402

pytestmark = [pytest.mark.slow, *needs_fashion_mnist]


def test_the_demo_recipe_reaches_its_measured_accuracy(tmp_path):
    assert demo_accuracy.THRESHOLD is not None, "measure it: python bench/demo_accuracy.py"
    out = str(tmp_path)
    data_dir = demo_accuracy.prepare_data(out)
    result = demo_accuracy.run_seed(1, demo_accuracy.EPOCHS, out, data_dir)
    assert result["ema"]
    assert result["top1"] >= demo_accuracy.THRESHOLD, (
        f"the demo recipe ({demo_accuracy.EPOCHS} epochs, seed 1) reached top-1 "
        f"{result['top1']:.4f}, below {demo_accuracy.THRESHOLD} (measured spread: docs/benchmarks.md)")
