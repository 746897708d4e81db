"""Tiny TFRecord folders for the training-job tests (any tf.io.gfile path, ram:// included).

write_records(data_dir, n_train, n_val, bad={index: bytes}) writes train-00000-of-00002,
train-00001-of-00002 and validation-00000-of-00001 of 16x16 JPEGs, 4 classes (1-based labels),
and labels.txt. `bad` replaces the image bytes of those training records (round-robin over the
two train shards: record i goes to shard i % 2).
"""
import os

import numpy as np
import tensorflow as tf

from efficientnet_tf.data import tfrecord

CLASSES = 4
SIZE = 16


def jpeg(i):
    rng = np.random.default_rng(i)
    return tf.io.encode_jpeg(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)).numpy()


def jpeg_corrupt_inside(i):
    """jpeg(i) with its frame header's height set to 0: markers and end marker intact (it passes
    the cheap checks), but the decoder fails on it."""
    data = bytearray(jpeg(i))
    sof = data.index(b"\xff\xc0")  # SOF0: marker, length (2), precision (1), height (2), width
    data[sof + 5:sof + 7] = b"\x00\x00"
    return bytes(data)


def write_records(data_dir, n_train=16, n_val=8, bad=None, val_bad=None):
    bad, val_bad = bad or {}, val_bad or {}
    tf.io.gfile.makedirs(data_dir)
    train = [tf.io.TFRecordWriter(os.path.join(data_dir, f"train-0000{k}-of-00002"))
             for k in range(2)]
    for i in range(n_train):
        ex = tfrecord.make_example(bad.get(i, jpeg(i)), 1 + i % CLASSES, SIZE, SIZE)
        train[i % 2].write(ex.SerializeToString())
    for w in train:
        w.close()
    with tf.io.TFRecordWriter(os.path.join(data_dir, "validation-00000-of-00001")) as w:
        for i in range(n_val):
            ex = tfrecord.make_example(val_bad.get(i, jpeg(1000 + i)), 1 + i % CLASSES, SIZE, SIZE)
            w.write(ex.SerializeToString())
    with tf.io.gfile.GFile(os.path.join(data_dir, "labels.txt"), "w") as f:
        f.write("".join(f"class{c}\n" for c in range(CLASSES)))


def overrides(data_dir, steps=4):
    """Config overrides of a seconds-long run on write_records' data."""
    return ["model.width_coefficient=0.1", "model.depth_coefficient=0.1",
            f"data.data_dir={data_dir}", f"data.image_size={SIZE}", f"data.num_classes={CLASSES}",
            "data.shuffle_buffer=16", "train_batch_size=4", "eval_batch_size=4",
            f"train_steps={steps}", "steps_per_execution=2", "checkpoint_every_steps=2", "seed=3"]
