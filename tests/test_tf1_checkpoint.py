"""TF1 checkpoints in the TPU reference's names: written here with tf.raw_ops.SaveV2 (random
kernels, settled BN statistics, EMA shadows that differ from the raw weights, RMSProp slots,
global_step), loaded with weights=<prefix or directory>, and checked against an independent
forward pass that reads the checkpoint by the reference's names with plain tf.nn ops."""
import dataclasses
import os

import numpy as np
import pytest
import tensorflow as tf

import efficientnet_tf as en
from efficientnet_tf import weights as W
from efficientnet_tf.model import scaled_blocks
from efficientnet_tf.weights import tf1_checkpoint as T

SIZE = 64
EMA = "ExponentialMovingAverage"


def reference_names(variant: str, classes: int):
    """{reference variable name: shape} for a variant, from the builder rules alone."""
    v = en.VARIANTS[variant]
    scope = f"efficientnet-{variant}"
    bn = lambda p, c: {f"{p}/{w}": (c,) for w in ("gamma", "beta", "moving_mean",  # noqa: E731
                                                  "moving_variance")}
    stem = en.round_filters(32, v.width_coefficient)
    names = {f"{scope}/stem/conv2d/kernel": (3, 3, 3, stem), **bn(f"{scope}/stem/tpu_batch_normalization", stem)}
    blocks = scaled_blocks(v.blocks, v.width_coefficient, v.depth_coefficient, 0.0)
    for n, (_, s, _) in enumerate(blocks):
        p = f"{scope}/blocks_{n}"
        exp = s.filters_in * s.expand_ratio
        se = max(1, int(s.filters_in * s.se_ratio))
        bns = [f"{p}/tpu_batch_normalization" + suffix for suffix in ("", "_1", "_2")]
        if s.expand_ratio != 1:
            names[f"{p}/conv2d/kernel"] = (1, 1, s.filters_in, exp)
            names.update(bn(bns.pop(0), exp))
        names[f"{p}/depthwise_conv2d/depthwise_kernel"] = (s.kernel_size, s.kernel_size, exp, 1)
        names.update(bn(bns.pop(0), exp))
        names.update({f"{p}/se/conv2d/kernel": (1, 1, exp, se), f"{p}/se/conv2d/bias": (se,),
                      f"{p}/se/conv2d_1/kernel": (1, 1, se, exp), f"{p}/se/conv2d_1/bias": (exp,)})
        names[f"{p}/{'conv2d_1' if s.expand_ratio != 1 else 'conv2d'}/kernel"] = (
            1, 1, exp, s.filters_out)
        names.update(bn(bns.pop(0), s.filters_out))
    head = en.round_filters(1280, v.width_coefficient)
    names[f"{scope}/head/conv2d/kernel"] = (1, 1, blocks[-1][1].filters_out, head)
    names.update(bn(f"{scope}/head/tpu_batch_normalization", head))
    names.update({f"{scope}/head/dense/kernel": (head, classes), f"{scope}/head/dense/bias": (classes,)})
    return names, blocks


def write_checkpoint(directory, variant, classes=10, seed=0, step=1234):
    """A reference-layout checkpoint; returns (prefix, {name: raw}, {name: ema})."""
    rng = np.random.default_rng(seed)
    shapes, _ = reference_names(variant, classes)
    raw, ema, tensors = {}, {}, {}
    for name, shape in shapes.items():
        w = name.rsplit("/", 1)[1]
        if w == "moving_variance":
            value = rng.uniform(0.5, 1.5, shape)
        elif w == "gamma":
            value = rng.uniform(0.8, 1.2, shape)
        elif w in ("moving_mean", "beta", "bias"):
            value = rng.normal(0, 0.1, shape)
        else:  # kernels: fan-out scaled so activations stay in range over many blocks
            fan_out = np.prod(shape[:2]) * (shape[-1] if w != "depthwise_kernel" else 1)
            value = rng.normal(0, np.sqrt(1.0 / fan_out), shape)
        raw[name] = value.astype(np.float32)
        ema[name] = (value * rng.uniform(0.9, 1.1, shape)).astype(np.float32)  # differs
        tensors[name] = raw[name]
        tensors[f"{name}/{EMA}"] = ema[name]
        if w not in ("moving_mean", "moving_variance"):  # optimizer slots of trainables
            tensors[f"{name}/RMSProp"] = np.ones(shape, np.float32)
            tensors[f"{name}/RMSProp_1"] = np.zeros(shape, np.float32)
    tensors["global_step"] = np.asarray(step, np.int64)
    os.makedirs(directory, exist_ok=True)
    prefix = os.path.join(str(directory), f"model.ckpt-{step}")
    names = sorted(tensors)
    tf.raw_ops.SaveV2(prefix=prefix, tensor_names=names, shape_and_slices=[""] * len(names),
                      tensors=[tf.constant(tensors[n]) for n in names])
    with open(os.path.join(str(directory), "checkpoint"), "w") as f:
        f.write(f'model_checkpoint_path: "model.ckpt-{step}"\n')
    return prefix, raw, ema


def reference_logits(values, variant, images):
    """The reference's inference computation, from the checkpoint's names, with tf.nn ops."""
    scope = f"efficientnet-{variant}"
    get = lambda n: tf.constant(values[f"{scope}/{n}"])  # noqa: E731

    def bn(x, p):
        return ((x - get(f"{p}/moving_mean")) / tf.sqrt(get(f"{p}/moving_variance") + 1e-3)
                * get(f"{p}/gamma") + get(f"{p}/beta"))

    def conv(x, n, stride=1):
        return tf.nn.conv2d(x, get(n), stride, "SAME")

    mean = tf.constant([0.485, 0.456, 0.406]) * 255.0
    std = tf.constant([0.229, 0.224, 0.225]) * 255.0
    x = (tf.constant(images) - mean) / std
    x = tf.nn.swish(bn(conv(x, "stem/conv2d/kernel", 2), "stem/tpu_batch_normalization"))
    _, blocks = reference_names(variant, 1)
    for n, (_, s, _) in enumerate(blocks):
        p = f"blocks_{n}"
        bns = [f"{p}/tpu_batch_normalization" + suffix for suffix in ("", "_1", "_2")]
        h = x
        if s.expand_ratio != 1:
            h = tf.nn.swish(bn(conv(h, f"{p}/conv2d/kernel"), bns.pop(0)))
        h = tf.nn.depthwise_conv2d(h, get(f"{p}/depthwise_conv2d/depthwise_kernel"),
                                   [1, s.strides, s.strides, 1], "SAME")
        h = tf.nn.swish(bn(h, bns.pop(0)))
        se = tf.reduce_mean(h, [1, 2], keepdims=True)
        se = tf.nn.swish(conv(se, f"{p}/se/conv2d/kernel") + get(f"{p}/se/conv2d/bias"))
        se = conv(se, f"{p}/se/conv2d_1/kernel") + get(f"{p}/se/conv2d_1/bias")
        h = tf.sigmoid(se) * h
        h = bn(conv(h, f"{p}/{'conv2d_1' if s.expand_ratio != 1 else 'conv2d'}/kernel"), bns.pop(0))
        x = h + x if s.strides == 1 and s.filters_in == s.filters_out else h
    x = tf.nn.swish(bn(conv(x, "head/conv2d/kernel"), "head/tpu_batch_normalization"))
    x = tf.reduce_mean(x, [1, 2])
    return (tf.matmul(x, get("head/dense/kernel")) + get("head/dense/bias")).numpy()


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
