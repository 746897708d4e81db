"""Example encode/decode in the TPU reference's imagenet_to_gcs layout."""
import tensorflow as tf

from efficientnet_tf.data import tfrecord


def test_example_round_trip_keeps_reference_keys_and_values():
    jpeg = tf.io.encode_jpeg(tf.zeros([5, 7, 3], tf.uint8)).numpy()
    ex = tfrecord.make_example(jpeg, label=17, height=5, width=7, synset="n01440764",
                               filename="a.JPEG")
    keys = set(ex.features.feature)
    assert {"image/encoded", "image/class/label", "image/class/synset", "image/height",
            "image/width", "image/format", "image/filename"} <= keys
    parsed = tfrecord.parse_example(ex.SerializeToString(), all_features=True)
    assert parsed["image/encoded"].numpy() == jpeg
    assert int(parsed["image/class/label"]) == 17
    assert parsed["image/class/synset"].numpy() == b"n01440764"
    assert (int(parsed["image/height"]), int(parsed["image/width"])) == (5, 7)
    assert parsed["image/format"].numpy() == b"JPEG"
    assert parsed["image/filename"].numpy() == b"a.JPEG"


def test_train_parse_reads_only_image_and_label():
    ex = tfrecord.make_example(b"xyz", label=3, height=1, width=1)
    parsed = tfrecord.parse_example(tf.constant(ex.SerializeToString()))
    assert set(parsed) == {"image/encoded", "image/class/label"}
    assert parsed["image/encoded"].numpy() == b"xyz" and int(parsed["image/class/label"]) == 3
