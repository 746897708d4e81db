"""Model core: exact architecture, TF 'SAME' padding, drop-connect, scaling, serialization."""
import math
import re
import warnings

import keras
import numpy as np
import pytest
import tensorflow as tf

import efficientnet_tf as en
from efficientnet_tf.scaling import scaled_blocks

def tiny(**kw):
    kw.setdefault("input_shape", (32, 32, 3))
    kw.setdefault("classes", 10)
    return en.EfficientNet(0.25, 0.34, 32, **kw)


def reference_param_count(variant, classes=1000, bn_statistics=True) -> int:
    """Parameters by the TPU reference's builder rules alone (no Keras model): stem, every MBConv
    block (expand, depthwise, SE with biases, project, each conv followed by BN), head, dense.
    bn_statistics counts BN moving mean/variance and the 7 Normalization numbers, as Keras does."""
    from efficientnet_tf.scaling import round_filters, round_repeats

    w, d = variant.width_coefficient, variant.depth_coefficient
    fixed = variant.fixed_stem_head  # Lite: stem, head and the end stages' repeats unscaled
    per_bn = 4 if bn_statistics else 2
    stem = 32 if fixed else round_filters(32, w)
    n = 3 * 3 * 3 * stem + per_bn * stem
    for i, b in enumerate(variant.blocks):
        f_in, f_out = round_filters(b.filters_in, w), round_filters(b.filters_out, w)
        ends = fixed and i in (0, len(variant.blocks) - 1)
        for j in range(b.repeats if ends else round_repeats(b.repeats, d)):
            # The first block reads the stem's output (Lite's fixed 32 may differ from f_in).
            cin = (stem if i == 0 else f_in) if j == 0 else f_out
            exp = cin * b.expand_ratio
            if b.expand_ratio != 1:
                n += cin * exp + per_bn * exp
            n += b.kernel_size ** 2 * exp + per_bn * exp
            if b.se_ratio:
                se = max(1, int(cin * b.se_ratio))
                n += exp * se + se + se * exp + exp
            n += exp * f_out + per_bn * f_out
    head = 1280 if fixed else round_filters(1280, w)
    n += f_out * head + per_bn * head + head * classes + classes
    return n + (7 if bn_statistics else 0)


def test_reference_param_counts_from_the_builder_rules():
    """The rule-based count equals keras.applications' for B0-B7, and its trainable part equals
    timm's published counts for B8 and L2 (tf_efficientnet_b8 87.41M, tf_efficientnet_l2
    480.31M, timm's results tables); so the registry's B8/L2 numbers are the reference's."""
    for key, variant in en.VARIANTS.items():
        if key in ("b8", "l2") or key.startswith("lite") or variant.params is None:
            continue
        assert reference_param_count(variant) == variant.params, key
    for key, millions in (("b8", 87.41), ("l2", 480.31)):
        variant = en.VARIANTS[key]
        assert round(reference_param_count(variant, bn_statistics=False) / 1e6, 2) == millions
        assert reference_param_count(variant) == variant.params, key
    # EfficientNet-Lite: the reference's lite README lists 4.7M ... 13.0M parameters.
    for key, millions in (("lite0", 4.7), ("lite1", 5.4), ("lite2", 6.1), ("lite3", 8.2),
                          ("lite4", 13.0)):
        variant = en.VARIANTS[key]
        assert round(reference_param_count(variant, bn_statistics=False) / 1e6, 1) == millions
        assert reference_param_count(variant) == variant.params, key


def test_param_counts_and_macs_match_reference_for_all_variants():
    """Every registered variant against its reference numbers (spec.Variant.params: the count of
    keras.applications 3.15 with weights=None and top, or the builder rules' for B8/L2; .macs:
    the paper's, 2 significant digits; docs/reference.md "Variant table"): counted from each
    ModelSpec here (tests/test_modelspec.py checks those counts against built models), built
    for B0 and Lite0; the slow set builds every variant."""
    _check_variants(lambda v: v.name in ("b0", "lite0"), minimum=2)


@pytest.mark.slow
def test_param_counts_of_every_variant_built():
    _check_variants(lambda v: True, minimum=15)


def _check_variants(select, minimum=9):
    checked = 0
    for key, variant in en.VARIANTS.items():
        if not select(variant):
            continue
        model = getattr(en, variant.constructor_name)()
        assert model is not None and variant.constructor_name == (
            f"EfficientNet{key.upper()}" if not key.startswith("lite") else
            f"EfficientNetLite{key[4:]}")
        prof = en.model_profile(model)
        assert model.input_shape == (None, variant.resolution, variant.resolution, 3)
        if variant.params is not None:
            assert prof["params"] == variant.params, key
            checked += 1
        if variant.macs is not None:
            assert prof["macs"] == pytest.approx(variant.macs, rel=0.06), key
        keras.backend.clear_session()
    assert checked >= minimum  # b0..b8 in the fast set


def test_a_variant_is_one_registry_entry():
    """Registering a variant is all it takes: constructor, recipe name and config resolution."""
    from efficientnet_tf import config as cfg, spec

    v = spec.register_variant(spec.Variant("t9", 0.25, 0.25, 40, 0.15))
    try:
        model = en.EfficientNetT9(weights=None)
        assert model.input_shape == (None, 40, 40, 3) and model.get_layer("top_dropout").rate == 0.15
        c = cfg.load_config("efficientnet-t9")
        assert (c.model.model_name, c.data.image_size, c.model.dropout_rate) == (
            "efficientnet-t9", 40, 0.15)
        assert "efficientnet-t9" in cfg.available_configs()
        from efficientnet_tf.factory import build_model_from_config

        built = build_model_from_config(c)
        assert built.count_params() == en.EfficientNetT9(classes=1000).count_params()
    finally:
        del spec.VARIANTS[v.name]
        for mod in (en, __import__("efficientnet_tf.model", fromlist=["x"])):
            mod.__dict__.pop(v.constructor_name, None)


def test_weights_layout_identical_to_keras_applications():
    ours = en.EfficientNetB0()
    theirs = keras.applications.EfficientNetB0(weights=None)
    assert {_path(w): tuple(w.shape) for w in ours.weights} == {
        _path(w): tuple(w.shape) for w in theirs.weights}
    for name in ("stem_conv", "block1a_dwconv", "block6a_expand_activation", "top_conv", "predictions"):
        ours.get_layer(name)


def _path(w):  # keras numbers repeated layer names: normalization_1/mean
    return re.sub(r"^normalization(_\d+)?/", "normalization/", w.path)


def copy_from_keras(ours, theirs):
    by_path = {_path(w): w for w in theirs.weights}
    for w in ours.weights:
        w.assign(by_path[_path(w)])


def test_same_outputs_as_keras_applications_with_same_weights():
    theirs = keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3), classes=7)
    rng = np.random.default_rng(0)
    for w in theirs.weights:  # non-trivial BN statistics and normalization
        if "normalization" in w.path and w.path.endswith("count"):
            continue
        v = rng.uniform(0.5, 1.5, w.shape) if "variance" in w.path else rng.normal(0, 0.2, w.shape)
        w.assign(v.astype(w.dtype))
    ours = en.EfficientNetB0(input_shape=(64, 64, 3), classes=7)
    copy_from_keras(ours, theirs)
    x = rng.uniform(0, 255, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(ours(x, training=False), theirs(x, training=False), atol=2e-6)


def test_tf_same_padding_on_odd_and_unknown_sizes():
    static = en.EfficientNetB0(include_top=False, input_shape=(225, 225, 3))
    dynamic = en.EfficientNetB0(include_top=False, input_shape=(None, None, 3))
    dynamic.set_weights(static.get_weights())
    # TF 'SAME' on stride 2: ceil(n / 2) at every reduction.
    assert static.output_shape == (None, 8, 8, 1280)
    for name, size in (("stem_activation", 113), ("block2a_activation", 57), ("block3a_activation", 29),
                       ("block4a_activation", 15), ("block6a_activation", 8)):
        assert static.get_layer(name).output.shape[1:3] == (size, size), name
    x = np.random.default_rng(1).uniform(0, 255, (1, 225, 225, 3)).astype("float32")
    out = dynamic(x, training=False)
    assert out.shape == (1, 8, 8, 1280)
    np.testing.assert_allclose(out, static(x, training=False), atol=1e-5)
    # The stem conv is exactly tf.nn.conv2d(padding="SAME") of the normalized input.
    stem = keras.Model(static.input, static.get_layer("stem_conv").output)
    normed = keras.Model(static.input, static.get_layer("normalization").output)(x)
    ref = tf.nn.conv2d(normed, static.get_layer("stem_conv").kernel, 2, "SAME")
    np.testing.assert_allclose(stem(x), ref, atol=1e-5)


def test_drop_connect_rates_grow_linearly():
    blocks = scaled_blocks(en.B0_BLOCKS, 1.0, 1.0, 0.2)
    assert len(blocks) == 16
    rates = [r for _, _, r in blocks]
    assert rates[0] == 0.0
    np.testing.assert_allclose(rates, [0.2 * i / 16 for i in range(16)])
    model = en.EfficientNetB0()
    drops = {layer.name: layer.rate for layer in model.layers if isinstance(layer, en.StochasticDepth)}
    # Only blocks with an identity skip carry drop-connect.
    assert drops["block2b_drop"] == pytest.approx(0.2 * 2 / 16)
    assert "block2a_drop" not in drops and "block1a_drop" not in drops
    assert drops["block6d_drop"] == pytest.approx(0.2 * 14 / 16)


def test_block_structure_and_se_width():
    model = en.EfficientNetB2()
    names = {layer.name for layer in model.layers}
    assert "block1a_expand_conv" not in names  # expand ratio 1 has no expansion
    # SE reduces to int(block INPUT filters * 0.25), not expanded filters * 0.25.
    for prefix, spec, _ in scaled_blocks(en.B0_BLOCKS, 1.1, 1.2, 0.2):
        reduce_ = model.get_layer(prefix + "se_reduce")
        assert reduce_.filters == max(1, int(spec.filters_in * 0.25))
        assert model.get_layer(prefix + "se_expand").filters == spec.filters_in * spec.expand_ratio
        assert (prefix + "add" in names) == (spec.strides == 1 and spec.filters_in == spec.filters_out)
    assert model.get_layer("stem_conv").filters == 32 and model.get_layer("top_conv").filters == 1408


def test_stochastic_depth_per_sample_and_identity_at_inference():
    layer = en.StochasticDepth(0.25, seed=3)
    x = tf.ones((4000, 2, 2, 3))
    np.testing.assert_array_equal(layer(x, training=False), x)
    y = layer(x, training=True).numpy()
    per_sample = y.reshape(4000, -1)
    # Each sample is dropped whole or kept and scaled by 1 / keep.
    assert set(np.unique(per_sample)) <= {0.0, np.float32(1 / 0.75)}
    assert np.all(per_sample.min(1) == per_sample.max(1))
    assert per_sample[:, 0].mean() == pytest.approx(1.0, abs=0.05)
    kept = (per_sample[:, 0] > 0).mean()
    assert kept == pytest.approx(0.75, abs=0.03)
    with pytest.raises(ValueError, match="rate"):
        en.StochasticDepth(1.0)


def test_model_save_and_load_without_custom_objects(tmp_path):
    model = tiny(drop_connect_rate=0.3)
    x = np.random.default_rng(2).uniform(0, 255, (2, 32, 32, 3)).astype("float32")
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.models.load_model(path)
    np.testing.assert_allclose(loaded(x, training=False), model(x, training=False), atol=1e-6)


def test_mbconv_layer_is_serializable_and_matches_functional_block():
    blk = en.MBConvBlock(16, 16, kernel_size=5, strides=1, expand_ratio=6, drop_rate=0.1, name="mb")
    inp = keras.Input((9, 9, 16))
    model = keras.Model(inp, blk(inp))
    cfg = blk.get_config()
    clone = en.MBConvBlock.from_config(cfg)
    clone(inp)
    clone.set_weights(blk.get_weights())
    x = np.random.default_rng(4).normal(size=(2, 9, 9, 16)).astype("float32")
    np.testing.assert_allclose(clone(x, training=False), model(x, training=False), atol=1e-6)
    strided = en.MBConvBlock(16, 24, strides=2)
    assert strided(keras.Input((9, 9, 16))).shape == (None, 5, 5, 24)
    se = en.SqueezeExcite(16, 4)
    assert se(x).shape == x.shape
    assert en.SqueezeExcite.from_config(se.get_config()).reduced_filters == 4


def test_mixed_bfloat16_keeps_float32_outputs():
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny(classifier_activation=None)
        assert model.get_layer("stem_conv").compute_dtype == "bfloat16"
        out = model(np.zeros((1, 32, 32, 3), "float32"))
        assert out.dtype == tf.float32
    finally:
        keras.mixed_precision.set_global_policy("float32")


def test_feature_endpoints_follow_the_reference():
    model = en.EfficientNetB0(include_top=False, input_shape=(224, 224, 3))
    ends = en.feature_endpoints(model)
    assert ends == {"reduction_1": "block1a_project_bn", "reduction_2": "block2b_add",
                    "reduction_3": "block3b_add", "reduction_4": "block5c_add",
                    "reduction_5": "block7a_project_bn"}
    feats = en.EfficientNetFeatures(model)
    x = np.zeros((1, 224, 224, 3), "float32")
    out = feats(x)
    assert [out[f"reduction_{i}"].shape[1] for i in range(1, 6)] == [112, 56, 28, 14, 7]
    with pytest.raises(ValueError, match="available"):
        en.EfficientNetFeatures(model, ["reduction_9"])


def test_compound_scaling():
    cs = en.compound_scaling(1)
    assert (cs.depth_coefficient, cs.width_coefficient) == pytest.approx((1.2, 1.1))
    assert cs.resolution == 256  # 224 * 1.15 = 257.6, to a multiple of 8
    assert cs.flops_multiplier == pytest.approx(1.2 * 1.1**2 * 1.15**2)
    neg = en.compound_scaling(-2)
    assert neg.depth_coefficient == pytest.approx(1.2**-2) and neg.resolution == 168
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        en.compound_scaling(3)  # 1.92 is within 10% of 2: no warning
        with pytest.raises(UserWarning, match="near 2"):
            en.compound_scaling(1, alpha=2.0)
    with pytest.raises(ValueError, match="near 2"):
        en.compound_scaling(1, alpha=1.0, beta=1.0, gamma=1.0, strict=True)
    with pytest.raises(ValueError, match=">= 1"):
        en.compound_scaling(1, alpha=0.9)
    model = en.EfficientNet(phi=-1, classes=10)
    assert model.input_shape == (None, 192, 192, 3)
    assert model.get_layer("stem_conv").filters == en.round_filters(32, 1.1**-1)


def test_round_filters_keeps_the_ten_percent_rule():
    assert en.round_filters(32, 2.0) == 64 and en.round_filters(1280, 2.0) == 2560
    # 0.5 * 24 = 12 -> int(16) // 8 * 8 = 16 ; 0.5 * 40 = 20 -> 24.
    assert en.round_filters(24, 0.5) == 16
    # 0.45 * 40 = 18 -> 16 < 0.9 * 18 = 16.2 -> bumped to 24 by the 10% rule.
    assert en.round_filters(40, 0.45) == 24
    assert en.round_filters(1, 0.1) == 8
    assert en.round_repeats(3, 1.1) == 4 and en.round_repeats(1, 3.1) == 4


def test_clear_errors_for_bad_arguments():
    with pytest.raises(ValueError, match="b0, .*b7|efficientnet-b0"):
        en.get_variant("b9")
    assert en.get_variant("EfficientNet-B3").resolution == 300
    with pytest.raises(ValueError, match="3 RGB channels"):
        en.EfficientNetB0(input_shape=(224, 224, 1))
    with pytest.raises(ValueError, match="at least 32"):
        en.EfficientNetB0(include_top=False, input_shape=(16, 16, 3))
    with pytest.raises(ValueError, match="classes=1000"):
        en.EfficientNetB0(weights="imagenet", classes=10)
    with pytest.raises(ValueError, match="not found"):
        en.EfficientNetB0(weights="/nonexistent/file.h5")
    with pytest.raises(ValueError, match="pooling"):
        en.EfficientNetB0(include_top=False, pooling="median")
    with pytest.raises(ValueError, match="phi"):
        en.EfficientNet(1.0, 1.0, phi=1)


def test_initializers_follow_reference_fan_out():
    model = tiny(input_shape=(32, 32, 3))
    kernel = model.get_layer("top_conv").kernel.numpy()  # 1x1, out = 320 at width 0.25
    std = math.sqrt(2.0 / (1 * 1 * kernel.shape[-1]))
    assert kernel.std() == pytest.approx(std, rel=0.05)
    dw = model.get_layer("block2a_dwconv").kernel.numpy()  # depthwise: fan_out = k*k*1
    assert dw.std() == pytest.approx(math.sqrt(2.0 / 9), rel=0.15)
    dense = model.get_layer("predictions").kernel.numpy()
    assert np.abs(dense).max() <= 1 / math.sqrt(10) + 1e-6
