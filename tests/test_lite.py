"""EfficientNet-Lite0..4: the reference's lite builder rules (ReLU6, no squeeze-excite, stem and
head and the first and last stages' repeats not scaled), its published sizes, and its TF1
checkpoints through the same reader."""
import numpy as np
import pytest

import efficientnet_tf as en
from efficientnet_tf import weights as W
from reference_ckpt import SIZE, reference_logits, write_checkpoint

# The reference's lite README: params (rounded to 0.1 M) and multiply-adds.
README = {"lite0": (4.7e6, 407e6), "lite1": (5.4e6, 631e6), "lite2": (6.1e6, 899e6),
          "lite3": (8.2e6, 1.44e9), "lite4": (13.0e6, 2.64e9)}


@pytest.mark.parametrize("name", list(README))
def test_sizes_match_the_reference_readme(name):
    model = getattr(en, en.VARIANTS[name].constructor_name)()
    prof = en.model_profile(model)
    params, macs = README[name]
    assert round(prof["trainable_params"] / 1e6, 1) == params / 1e6, prof["trainable_params"]
    # Our rule counts conv and dense multiply-adds (B0: 0.386 G, the paper's 0.39 G); the lite
    # README's counts come out 3-5.5% higher, by a rule it does not state.
    assert 0.94 < prof["macs"] / macs < 0.975, prof["macs"]
    names = [la.name for la in model.layers]
    assert not any("_se_" in n for n in names)
    assert model.get_layer("stem_conv").filters == 32 and model.get_layer("top_conv").filters == 1280
    assert model.get_layer("block1a_activation").get_config()["activation"] == "relu6"
    assert sum(n.endswith("_dwconv") and n.startswith("block1") for n in names) == 1
    assert sum(n.endswith("_dwconv") and n.startswith("block7") for n in names) == 1
    assert W.model_normalization(model) == "lite"
    assert model.input_shape[1] == en.VARIANTS[name].resolution


def test_constructor_names_and_the_weight_set():
    assert en.EfficientNetLite0.__name__ == "EfficientNetLite0"
    assert "relu6" in en.EfficientNetLite4.__doc__
    assert W.weight_sets()["lite"].archives["lite0"] == "lite/efficientnet-lite0.tar.gz"
    with pytest.raises(ValueError, match="exists for lite0"):
        en.EfficientNetB0(weights="lite")


@pytest.mark.parametrize("name", ["lite0", "lite3"])  # lite3: its stem (32) < block1a filters_in (40)
def test_reference_checkpoint_round_trips(tmp_path, name):
    prefix, raw, ema = write_checkpoint(tmp_path, name)
    model = getattr(en, en.VARIANTS[name].constructor_name)(
        weights=prefix, input_shape=(SIZE, SIZE, 3), classes=10, classifier_activation=None)
    images = np.random.default_rng(2).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    want = reference_logits(ema, name, images, "lite")
    np.testing.assert_allclose(model(images).numpy(), want, rtol=1e-4,
                               atol=1e-4 * np.abs(want).max())
    assert np.abs(want[0] - want[1]).max() > 0.05 * np.abs(want).max()
    W.verify_checkpoint(prefix, name)
    with pytest.raises(ValueError, match="not of efficientnet-lite1"):
        W.verify_checkpoint(prefix, "lite1" if name == "lite0" else "lite1")


def test_a_custom_width_lite_config_keeps_the_lite_architecture():
    from efficientnet_tf import config as cfglib
    from efficientnet_tf import factory

    def build(name):
        m = cfglib.ModelConfig(model_name=name, width_coefficient=0.5, depth_coefficient=0.5,
                               stem_strides=1)
        return factory.build_model(m, 32, 10)

    lite, b0 = build("efficientnet-lite0"), build("efficientnet-b0")
    names = [layer.name for layer in lite.layers]
    assert not any("_se_" in n for n in names) and any("_se_" in layer.name for layer in b0.layers)
    acts = {getattr(layer, "activation", None).__name__ for layer in lite.layers
            if layer.name.endswith("_activation") or layer.name == "top_activation"}
    assert acts == {"relu6"}, acts
    # Stem and head keep Lite's fixed widths (32 and 1280) at width 0.5; B0's shrink.
    assert lite.get_layer("stem_conv").filters == 32 and b0.get_layer("stem_conv").filters == 16
    assert lite.get_layer("top_conv").filters == 1280 and b0.get_layer("top_conv").filters == 640
    assert W.model_normalization(lite) == "lite" and W.model_normalization(b0) == "imagenet"


def test_converting_a_lite_checkpoint_path_keeps_lite_normalization(tmp_path):
    """A TF1 checkpoint stores no normalization: converted from a path (no named set), a Lite
    model keeps its own "lite" one, not ImageNet's."""
    from efficientnet_tf.weights.write import convert_weights

    prefix, _, _ = write_checkpoint(tmp_path, "lite0")
    out = str(tmp_path / "lite0.weights.h5")
    report = convert_weights(prefix, out, variant="lite0", include_top=False)
    assert report.normalization == "lite"
    model = en.EfficientNetLite0(include_top=False, weights=out, input_shape=(SIZE, SIZE, 3))
    assert W.model_normalization(model) == "lite"
