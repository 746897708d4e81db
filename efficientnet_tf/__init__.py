"""EfficientNet for TensorFlow 2 / Keras 3.

    from efficientnet_tf import EfficientNetB0
    model = EfficientNetB0(weights=None)   # inputs: float pixels in [0, 255]
"""
from efficientnet_tf.layers import MBConvBlock, Normalize, SqueezeExcite, StochasticDepth
from efficientnet_tf.model import (
    EfficientNet,
    EfficientNetB0,
    EfficientNetB1,
    EfficientNetB2,
    EfficientNetB3,
    EfficientNetB4,
    EfficientNetB5,
    EfficientNetB6,
    EfficientNetB7,
    EfficientNetFeatures,
    feature_endpoints,
)
from efficientnet_tf.scaling import compound_scaling, round_filters, round_repeats
from efficientnet_tf.spec import B0_BLOCKS, VARIANTS, BlockSpec, Variant, get_variant

__version__ = "0.1.0"
from efficientnet_tf.profile import model_profile
from efficientnet_tf.imagenet import decode_predictions, preprocess_input
