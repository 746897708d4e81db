"""Moved to efficientnet_tf.config (configs import no TensorFlow there); this name is kept for
code written against earlier versions and warns once."""
import warnings

from efficientnet_tf.config import *  # noqa: F401,F403
from efficientnet_tf.config import CONFIG_DIR, DataConfig  # noqa: F401

DataSection = DataConfig  # the old name of the data section

warnings.warn("efficientnet_tf.train.config moved to efficientnet_tf.config", DeprecationWarning,
              stacklevel=2)
