"""modelspec.py: the network resolved once; counts without building; the spec the model carries."""
import dataclasses

import keras
import numpy as np
import pytest

import efficientnet_tf as en
from efficientnet_tf import config as cfglib
from efficientnet_tf import modelspec
from efficientnet_tf.builder import build
from efficientnet_tf.factory import build_model
from efficientnet_tf.modelspec import resolve
from efficientnet_tf.weights import get_weight_set


def test_counts_without_building_match_the_registry_for_every_variant():
    """params(): keras.applications' count with the 1000-class top (B8/L2/Lite: the builder
    rules', tests/test_model.py); macs(): the paper's, 2 significant digits."""
    for key, v in en.VARIANTS.items():
        s = resolve(key)
        assert (s.variant, s.resolution, s.dropout_rate) == (key, v.resolution, v.dropout_rate)
        assert s.params() == v.params, key
        if v.macs is not None:
            assert s.macs() == pytest.approx(v.macs, rel=0.06), key


@pytest.mark.parametrize("make, size, classes", [
    (lambda: en.EfficientNetB0(input_shape=(64, 64, 3), classes=7), 64, 7),
    (lambda: en.EfficientNetLite2(input_shape=(48, 48, 3), classes=3), 48, 3),
    (lambda: en.EfficientNet(phi=-2, stem_strides=1, input_shape=(40, 40, 3), classes=5,
                             normalization=None), 40, 5),
    (lambda: en.EfficientNet(0.3, 0.4, 33, include_top=False, input_shape=(33, 33, 3),
                             pooling="avg"), 33, None),
])
def test_counts_equal_the_built_models(make, size, classes):
    model = make()
    s = modelspec.spec_of(model)
    top = classes is not None
    assert s.params(classes or 0, include_top=top) == model.count_params()
    assert s.macs(size, classes or 0, include_top=top) == en.model_profile(model)["macs"]
    assert [la.name for la in model.layers if la.name.endswith("_dwconv")] == [
        b.prefix + "dwconv" for b in s.blocks]


def test_the_rules_live_in_resolve():
    lite = resolve("lite0", width_coefficient=0.5, depth_coefficient=0.5)
    assert lite.variant is None and (lite.stem_filters, lite.head_filters) == (32, 1280)
    assert (lite.activation, lite.normalization, lite.resolution) == ("relu6", "lite", 224)
    assert all(b.block.se_ratio == 0 for b in lite.blocks)
    assert lite.blocks[0].block.filters_in == 32  # the fixed stem, not round_filters(32, 0.5)
    b3 = resolve("efficientnet-b3")
    assert (b3.stem_filters, b3.head_filters, b3.name) == (40, 1536, "efficientnetb3")
    phi = resolve(phi=-1)
    assert phi.resolution == 192 and phi.variant is None and phi.normalization == "imagenet"
    assert phi.stem_filters == en.round_filters(32, 1.1 ** -1)
    advprop = resolve("b0", weight_set=get_weight_set("advprop"))
    assert advprop.normalization == "advprop"
    assert resolve("l2", weight_set=get_weight_set("noisy-student-475")).resolution == 475
    with pytest.raises(ValueError, match="trained with normalization='advprop'"):
        resolve("b0", normalization="imagenet", weight_set=get_weight_set("advprop"))
    with pytest.raises(ValueError, match="phi scales B0"):
        resolve("lite1", phi=1)
    with pytest.raises(ValueError, match="stem_strides"):
        resolve("b0", stem_strides=3)
    with pytest.raises(ValueError, match="normalization must be one of"):
        resolve("b0", normalization="caffe")
    # A given resolution wins over the set's; another shape is no longer the variant.
    assert resolve("l2", weight_set=get_weight_set("noisy-student-475"),
                   resolution=300).resolution == 300
    relu = resolve("b0", activation="relu6")
    assert relu.variant is None and relu.activation == "relu6"
    assert resolve("b0", activation="swish").variant == "b0"
    with pytest.raises(ValueError, match="registered network"):
        en.EfficientNetB0(activation="relu6")
    rates = [b.drop_rate for b in resolve("b0").blocks]
    np.testing.assert_allclose(rates, [0.2 * i / 16 for i in range(16)])


def test_a_spec_is_frozen_hashable_and_equal_for_equal_networks():
    a, b = resolve("b1"), resolve("b1")
    assert a == b and hash(a) == hash(b) and len({a, b}) == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        a.resolution = 1
    assert resolve("b1", dropout_rate=0.5) != a
    # Width 0.251 and 0.25 round to the same filters: one network, one architecture key.
    assert resolve(width_coefficient=0.251).architecture_key() == resolve(
        width_coefficient=0.25).architecture_key()


def test_the_training_config_resolves_through_the_same_rules():
    config = cfglib.apply_overrides(cfglib.load_config("efficientnet-lite1"), [
        "model.width_coefficient=0.5", "model.depth_coefficient=0.5", "data.image_size=64"])
    s = config.model.to_spec(64)
    assert s == resolve("lite1", width_coefficient=0.5, depth_coefficient=0.5, resolution=64,
                        dropout_rate=0.2, name="efficientnetlite1")
    model = build_model(config.model, 64, 4)
    assert modelspec.spec_of(model) == s and model.count_params() == s.params(4)
    assert cfglib.load_config("efficientnet-b2").model.to_spec().variant == "b2"


def test_a_model_loaded_from_a_file_gives_the_same_structure(tmp_path):
    """Models loaded from .keras carry no spec: block_plan reads their layers, with the same
    answers (endpoints, stages) as the spec of the model that was saved."""
    model = build(resolve(width_coefficient=0.25, depth_coefficient=0.5, resolution=64),
                  include_top=False)
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras")
    assert modelspec.spec_of(loaded) is None
    spec, plan = modelspec.spec_of(model), modelspec.block_plan(loaded)
    assert [(b.prefix, b.stage, b.strides, b.expands, b.has_skip) for b in plan] == [
        (b.prefix, b.stage, b.strides, b.expands, b.has_skip) for b in spec.blocks]
    assert en.feature_endpoints(loaded) == spec.endpoints() == en.feature_endpoints(model)
