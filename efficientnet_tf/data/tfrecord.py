"""TFRecord Example format of the TPU reference's imagenet_to_gcs converter.

Labels are stored 1-based (0 is ImageNet's "background"), like the published ImageNet files;
the reader subtracts `label_offset` (see pipeline.DataConfig).
"""
from __future__ import annotations

import tensorflow as tf

ENCODED = "image/encoded"
LABEL = "image/class/label"
SYNSET = "image/class/synset"
HEIGHT = "image/height"
WIDTH = "image/width"
FORMAT = "image/format"
FILENAME = "image/filename"
COLORSPACE = "image/colorspace"
CHANNELS = "image/channels"

# What the training reader needs (parsing fewer keys is faster).
TRAIN_FEATURES = {
    ENCODED: tf.io.FixedLenFeature([], tf.string, default_value=""),
    LABEL: tf.io.FixedLenFeature([], tf.int64, default_value=-1),
}
ALL_FEATURES = {
    **TRAIN_FEATURES,
    SYNSET: tf.io.FixedLenFeature([], tf.string, default_value=""),
    HEIGHT: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    WIDTH: tf.io.FixedLenFeature([], tf.int64, default_value=0),
    FORMAT: tf.io.FixedLenFeature([], tf.string, default_value=""),
    FILENAME: tf.io.FixedLenFeature([], tf.string, default_value=""),
}


def _bytes(value: bytes | str) -> tf.train.Feature:
    if isinstance(value, str):
        value = value.encode("utf-8")
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[int(value)]))


def make_example(image_bytes: bytes, label: int, height: int, width: int, synset: str = "",
                 filename: str = "", image_format: str = "JPEG") -> tf.train.Example:
    """One record in the imagenet_to_gcs layout. `label` is the STORED label (1-based for ImageNet)."""
    return tf.train.Example(features=tf.train.Features(feature={
        ENCODED: _bytes(image_bytes),
        LABEL: _int(label),
        SYNSET: _bytes(synset),
        HEIGHT: _int(height),
        WIDTH: _int(width),
        FORMAT: _bytes(image_format),
        FILENAME: _bytes(filename),
        COLORSPACE: _bytes("RGB"),
        CHANNELS: _int(3),
    }))


def parse_example(serialized: tf.Tensor, all_features: bool = False) -> dict[str, tf.Tensor]:
    """Parses one serialized Example; keys as stored (image/encoded, image/class/label, ...)."""
    return tf.io.parse_single_example(serialized, ALL_FEATURES if all_features else TRAIN_FEATURES)
