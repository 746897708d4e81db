"""EfficientNet for TensorFlow 2 / Keras 3.

    from efficientnet_tf import EfficientNetB0
    model = EfficientNetB0(weights=None)   # inputs: float pixels in [0, 255]

The names below are loaded on first use, so `import efficientnet_tf.config` (or spec, scaling,
constants) does not import TensorFlow or Keras.
"""
import importlib
import importlib.util

__version__ = "0.1.0"

# name -> module that defines it
_EXPORTS = {
    **{name: "efficientnet_tf.layers"
       for name in ("MBConvBlock", "Normalize", "SqueezeExcite", "StochasticDepth")},
    **{name: "efficientnet_tf.model"
       for name in ("EfficientNet", "EfficientNetFeatures", "feature_endpoints")},
    **{name: "efficientnet_tf.scaling"
       for name in ("compound_scaling", "round_filters", "round_repeats")},
    **{name: "efficientnet_tf.spec"
       for name in ("B0_BLOCKS", "VARIANTS", "BlockSpec", "Variant", "get_variant",
                    "register_variant")},
    **{name: "efficientnet_tf.modelspec" for name in ("ModelSpec", "PlannedBlock")},
    "build_model": "efficientnet_tf.factory",
    "model_profile": "efficientnet_tf.profile",
    "decode_predictions": "efficientnet_tf.imagenet",
    "preprocess_input": "efficientnet_tf.imagenet",
}


def _constructor_names():
    from efficientnet_tf import spec

    return [v.constructor_name for v in spec.VARIANTS.values()]


def __getattr__(name):
    module = _EXPORTS.get(name)
    if module is None and name.startswith("EfficientNet") and name in _constructor_names():
        module = "efficientnet_tf.model"  # EfficientNetB0 ... : one per registered variant
    if module is None:
        if importlib.util.find_spec(f"{__name__}.{name}") is not None:  # a submodule
            return importlib.import_module(f"{__name__}.{name}")
        raise AttributeError(f"module 'efficientnet_tf' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(_EXPORTS) | set(_constructor_names()))


__all__ = sorted(set(_EXPORTS) | set(_constructor_names()))
