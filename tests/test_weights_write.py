"""The weights converter: a TF1 checkpoint -> .weights.h5 / .keras / keras.applications .h5,
each read back with the same outputs (keras.applications loads the .h5 itself)."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
from keras.src.applications import efficientnet as keras_effnet

import efficientnet_tf as en
from efficientnet_tf import weights as W
from efficientnet_tf.weights.write import convert_weights
from reference_ckpt import write_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    prefix, _, _ = write_checkpoint(tmp_path_factory.mktemp("ckpt"), "b0", classes=1000)
    return prefix


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).uniform(0, 255, (2, 224, 224, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def direct(ckpt, images):
    """Our B0 with the checkpoint loaded directly, and its outputs."""
    model = en.EfficientNetB0(weights=ckpt)
    return model, model(images).numpy()


def test_weights_h5_round_trip_is_exact(ckpt, images, direct, tmp_path):
    out = str(tmp_path / "sub" / "b0.weights.h5")
    report = convert_weights(ckpt, out, "b0")
    assert report.format == "tf1_checkpoint" and report.ema is True
    assert os.listdir(tmp_path / "sub") == ["b0.weights.h5"]  # no temporary file left
    again = en.EfficientNetB0(weights=out)
    for a, b in zip(again.weights, direct[0].weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)
    np.testing.assert_array_equal(again(images).numpy(), direct[1])


def test_keras_applications_loads_the_h5_with_our_outputs(ckpt, images, direct, tmp_path):
    out = str(tmp_path / "b0.h5")
    convert_weights(ckpt, out, "b0")
    theirs = keras_effnet.EfficientNetB0(weights=out)
    np.testing.assert_allclose(theirs(images).numpy(), direct[1], rtol=1e-5, atol=1e-6)
    ours = en.EfficientNetB0(weights=out)  # and our loader reads it back unchanged
    np.testing.assert_allclose(ours(images).numpy(), direct[1], rtol=1e-6, atol=1e-7)


def test_keras_file_keeps_the_advprop_normalization(ckpt, tmp_path):
    out = str(tmp_path / "advprop.keras")
    report = convert_weights(ckpt, out, "b0", normalization="advprop", include_top=False)
    assert report.normalization == "advprop" and report.skipped == ["predictions"]
    model = keras.saving.load_model(out)
    assert W.model_normalization(model) == "advprop"
    with pytest.raises(ValueError, match="end it with one of"):
        convert_weights(ckpt, str(tmp_path / "x.pt"), "b0")


def test_cli_converts_and_refuses_bad_arguments(ckpt, tmp_path):
    out = tmp_path / "b0.weights.h5"
    env = {**os.environ, "PYTHONPATH": REPO}
    cmd = [sys.executable, "-m", "efficientnet_tf.weights", "convert", f"--weights={ckpt}",
           "--model_name=efficientnet-b0", f"--output={out}", "--noinclude_top"]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    assert f"Wrote {out}" in p.stdout and "EMA weights" in p.stdout, p.stdout
    assert os.path.getsize(out) > 1_000_000
    bad = subprocess.run(cmd[:-2] + [f"--output={tmp_path / 'x.txt'}"], capture_output=True,
                         text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "end it with one of" in bad.stderr
    listing = subprocess.run([sys.executable, "-m", "efficientnet_tf.weights", "list"],
                             capture_output=True, text=True, env=env, timeout=300)
    assert listing.returncode == 0 and "advprop: " in listing.stdout
    assert "l2 88.4%" in listing.stdout
