"""TF1 checkpoints in the TPU reference's names (tests/reference_ckpt.py writes them), loaded with
weights=<prefix or directory>, and checked against an independent forward pass that reads the
checkpoint by the reference's names with plain tf.nn ops."""
import os

import numpy as np
import pytest
import tensorflow as tf

import efficientnet_tf as en
from efficientnet_tf import weights as W
from efficientnet_tf.weights import tf1_checkpoint as T
from reference_ckpt import SIZE, reference_logits, write_checkpoint


def _model(variant, **kw):
    kw.setdefault("input_shape", (SIZE, SIZE, 3))
    kw.setdefault("classes", 10)
    return getattr(en, en.VARIANTS[variant].constructor_name)(classifier_activation=None, **kw)


@pytest.mark.parametrize("variant", ["b0", "b1"])  # b1: depth 1.1 renumbers every block
def test_loads_ema_by_default_and_matches_the_reference_computation(tmp_path, variant):
    prefix, raw, ema = write_checkpoint(tmp_path / "ckpt", variant)
    images = np.random.default_rng(1).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    for source in (prefix, str(tmp_path / "ckpt")):  # a prefix, or the directory's latest
        model = _model(variant, weights=source)
        ours = model(images, training=False).numpy()
        want = reference_logits(ema, variant, images)
        np.testing.assert_allclose(ours, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
        assert np.abs(want[0] - want[1]).max() > 0.05 * np.abs(want).max()  # input matters
    raw_model = _model(variant)
    report = W.load_weights(raw_model, prefix, use_ema=False)
    assert report.format == "tf1_checkpoint" and report.ema is False
    want_raw = reference_logits(raw, variant, images)
    np.testing.assert_allclose(raw_model(images, training=False).numpy(), want_raw, rtol=1e-4,
                               atol=1e-4 * np.abs(want_raw).max())
    assert np.abs(want_raw - want).max() > 1e-3 * np.abs(want).max()  # EMA and raw differ
    assert W.load_weights(_model(variant), prefix).ema is True


def test_other_classes_load_without_top_and_fail_with_it(tmp_path):
    prefix, _, ema = write_checkpoint(tmp_path, "b0", classes=1000)
    notop = en.EfficientNetB0(include_top=False, input_shape=(SIZE, SIZE, 3), weights=prefix)
    report = W.load_weights(notop, prefix)
    assert report.skipped == ["predictions"] and report.ema is True
    np.testing.assert_array_equal(notop.get_layer("top_conv").kernel.numpy(),
                                  ema["efficientnet-b0/head/conv2d/kernel"])
    with pytest.raises(ValueError, match="shape mismatch for predictions/(kernel|bias)"):
        _model("b0", weights=prefix)  # 10 classes here, 1000 in the file


def test_wrong_variant_and_truncated_checkpoints_fail_and_load_nothing(tmp_path):
    b1, _, _ = write_checkpoint(tmp_path / "b1", "b1")
    model = _model("b0")
    before = [w.numpy().copy() for w in model.weights]
    with pytest.raises(ValueError, match="efficientnet-b1/blocks_|shape mismatch"):
        W.load_weights(model, b1)
    prefix, _, _ = write_checkpoint(tmp_path / "b0", "b0")
    data = next(p for p in os.listdir(tmp_path / "b0") if ".data-" in p)
    path = tmp_path / "b0" / data
    path.write_bytes(path.read_bytes()[: os.path.getsize(path) // 2])
    with pytest.raises(ValueError, match="truncated or corrupt"):
        W.load_weights(model, prefix)
    assert all(np.array_equal(b, w.numpy()) for b, w in zip(before, model.weights))


def test_missing_tensor_names_the_layer(tmp_path):
    prefix, raw, _ = write_checkpoint(tmp_path / "full", "b0")
    reader = tf.train.load_checkpoint(prefix)
    names = [n for n, _ in tf.train.list_variables(prefix)
             if not n.startswith("efficientnet-b0/blocks_3/se/")]
    cut = str(tmp_path / "cut" / "model.ckpt-1")
    tf.raw_ops.SaveV2(prefix=cut, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(reader.get_tensor(n)) for n in names])
    with pytest.raises(ValueError, match="no layer 'block3a_se_reduce'"):
        W.load_weights(_model("b0"), cut)


def test_sniff_tells_checkpoints_from_other_files(tmp_path):
    prefix, _, _ = write_checkpoint(tmp_path / "ckpt", "b0")
    assert T.sniff(prefix) and T.sniff(str(tmp_path / "ckpt"))
    assert not T.sniff(str(tmp_path / "nope" / "model.ckpt"))
    h5 = tmp_path / "w.weights.h5"
    _model("b0").save_weights(str(h5))
    assert not T.sniff(str(h5)) and W.find_format(str(h5)).name == "keras_weights_h5"
    assert W.find_format(prefix).name == "tf1_checkpoint"


@pytest.mark.parametrize("normalization", ["advprop", None])
def test_normalization_option_feeds_the_checkpoint_what_it_was_trained_on(tmp_path,
                                                                           normalization):
    prefix, _, ema = write_checkpoint(tmp_path, "b0")
    images = np.random.default_rng(4).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    model = _model("b0", weights=prefix, normalization=normalization)
    imagenet = reference_logits(ema, "b0", images)
    if normalization is None:  # the caller normalizes: ImageNet's statistics here
        inputs = ((images / 255.0 - np.float32([0.485, 0.456, 0.406]))
                  / np.float32([0.229, 0.224, 0.225])).astype(np.float32)
        want = imagenet
    else:
        inputs, want = images, reference_logits(ema, "b0", images, normalization)
        assert np.abs(imagenet - want).max() > 1e-2 * np.abs(want).max()  # the option matters
    np.testing.assert_allclose(model(inputs, training=False).numpy(), want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())
    assert W.model_normalization(model) == normalization
    assert ("rescaling" in [la.name for la in model.layers]) == (normalization is not None)


def test_normalization_survives_a_keras_file_round_trip(tmp_path):
    prefix, _, _ = write_checkpoint(tmp_path / "ckpt", "b0")
    model = _model("b0", weights=prefix, normalization="advprop")
    path = str(tmp_path / "advprop.keras")
    model.save(path)
    import keras

    again = keras.saving.load_model(path)
    images = np.random.default_rng(5).uniform(0, 255, (1, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(again(images).numpy(), model(images).numpy(), rtol=1e-5,
                               atol=1e-5)
    assert W.model_normalization(again) == "advprop"
    with pytest.raises(ValueError, match="normalization must be one of"):
        _model("b0", normalization="inception")
