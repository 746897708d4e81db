"""The model and the recipe (efficientnet_tf/recipe.py) on Keras' other backends.

Each backend runs tests/backend_worker.py once in a subprocess with KERAS_BACKEND set (Keras
picks its backend at import); this process (TensorFlow) writes its weights first and checks
what the worker wrote. jax runs in the fast set; torch is marked `torch` (deselected by
default: `python -m pytest -m torch tests/test_backends.py`, with PyTorch installed).
"""
import importlib.util
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from backend_worker import MODELS, perturb
from fmnist import needs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(REPO, "tests", "backend_worker.py")
INSTALL = {"jax": 'pip install "jax[cpu]>=0.4.36" (or pip install -e .[test])',
           "torch": "pip install torch --index-url https://download.pytorch.org/whl/cpu "
                    "(the CPU wheel; see docs/training.md)"}


def _tf_model(name):
    import efficientnet_tf.model as model_lib

    return getattr(model_lib, name)(weights=None, input_shape=(64, 64, 3), classes=10,
                                    classifier_activation=None)


@pytest.fixture(scope="module", params=["jax", pytest.param("torch", marks=pytest.mark.torch)])
def run(request, tmp_path_factory):
    """Writes TensorFlow weights and outputs, runs the worker under the backend, returns
    (backend, folder, the worker's result.json, inputs, {name: TF logits})."""
    backend = request.param
    assert keras.backend.backend() == "tensorflow", "run these tests with the TensorFlow backend"
    if importlib.util.find_spec(backend) is None:
        pytest.fail(f"{backend} is not installed in {sys.executable}; {INSTALL[backend]}")
    folder = tmp_path_factory.mktemp(backend)
    x = np.random.default_rng(0).uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.save(folder / "inputs.npy", x)
    tf_logits = {}
    for name in MODELS:
        keras.utils.set_random_seed(7)
        model = _tf_model(name)
        perturb(model, seed=0)
        tf_logits[name] = model.predict(x, verbose=0)
        np.save(folder / f"{name}.tf.npy", tf_logits[name])
        model.save_weights(str(folder / f"{name}.tf.weights.h5"))
    env = dict(os.environ, KERAS_BACKEND=backend, PYTHONPATH=REPO, JAX_PLATFORMS="cpu",
               CUDA_VISIBLE_DEVICES="", TF_CPP_MIN_LOG_LEVEL="2")
    proc = subprocess.run([sys.executable, WORKER, str(folder)], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, (proc.stdout[-2000:], proc.stderr[-6000:])
    result = json.loads((folder / "result.json").read_text())
    assert result["backend"] == backend
    print(json.dumps(result, indent=1))  # the numbers, with -s
    return backend, folder, result, x, tf_logits


def _tolerance(reference):
    return 1e-4 * max(1.0, float(np.abs(reference).max()))


@pytest.mark.parametrize("name", MODELS)
def test_forward_matches_tensorflow_on_the_same_weights(run, name):
    """a. TensorFlow's weights file, loaded under the backend, gives TensorFlow's logits."""
    backend, folder, _, _, tf_logits = run
    want = tf_logits[name]
    got = np.load(folder / f"{name}.from_tf.npy")
    assert got.shape == want.shape == (2, 10)
    # The inputs matter well above the tolerance: a real comparison.
    assert np.abs(want[0] - want[1]).max() > 10 * _tolerance(want)
    diff = float(np.abs(got - want).max())
    print(f"{backend} {name}: max |diff| {diff:.2e}, logits up to {np.abs(want).max():.2f}")
    assert diff <= _tolerance(want), f"{backend} {name}: max |diff| {diff:.2e}"


@pytest.mark.parametrize("name", MODELS)
def test_weights_written_under_the_backend_load_in_tensorflow(run, name):
    """b. The backend's own .weights.h5 loads under TensorFlow and gives the backend's logits."""
    backend, folder, _, x, tf_logits = run
    want = np.load(folder / f"{name}.{backend}.npy")
    model = _tf_model(name)
    model.load_weights(str(folder / f"{name}.{backend}.weights.h5"))
    got = model.predict(x, verbose=0)
    # Other weights than TensorFlow's own: the file did the work.
    assert np.abs(want - tf_logits[name]).max() > 10 * _tolerance(want)
    diff = float(np.abs(got - want).max())
    print(f"{backend} {name}: max |diff| {diff:.2e}, logits up to {np.abs(want).max():.2f}")
    assert diff <= _tolerance(want), f"{backend} {name}: max |diff| {diff:.2e}"


def test_the_package_needs_no_tensorflow(run):
    """Building, saving and loading the models and importing recipe never import TensorFlow."""
    backend, _, result, _, _ = run
    assert result["tensorflow_imported"] is False, f"{backend}: tensorflow got imported"


def test_group_batch_norm_refuses_other_backends(run):
    """d. GroupBatchNormalization(group_size=2) fails at construction, saying what to do."""
    backend, _, result, _, _ = run
    error = result["group_bn"]["error"]
    assert error is not None, f"group_size=2 was accepted under {backend}"
    assert repr(backend) in error and "group_size 1" in error and "tensorflow" in error.lower()
    assert result["group_bn"]["group_size_1"] == 1


@needs
def test_fit_with_the_recipe_trains(run):
    """c. model.fit with RMSpropTF1 + the schedule + LabelSmoothedCrossEntropy + weight decay
    + ModelEMA trains a tiny network on Fashion-MNIST under the backend."""
    backend, _, result, _, _ = run
    fit = result["fit"]
    losses, val_accuracy = fit["loss"], fit["val_accuracy"]
    assert losses[-1] < losses[0] - 0.2, losses
    assert val_accuracy[-1] > 0.3, val_accuracy  # chance is 0.1
    # Every batch updated the EMA; at the end the averages are in the model, and they are
    # not the training values.
    assert fit["num_updates"] == fit["steps"]
    assert fit["model_equals_averages"]
    assert fit["max_average_vs_raw"] > 1e-3
    # The last validation ran on the averages: it equals evaluate() with them in the model.
    assert fit["val_loss"][-1] == pytest.approx(fit["eval_loss"], rel=1e-5)
    assert fit["val_accuracy"][-1] == pytest.approx(fit["eval_accuracy"])
    # The reported loss is the smoothed CE plus the L2 term (BN weights not covered).
    assert 0 < fit["num_covered"] < fit["num_trainable"]
    assert fit["l2"] > 1e-3
    assert fit["eval_loss"] == pytest.approx(fit["ce"] + fit["l2"], abs=2e-5)
