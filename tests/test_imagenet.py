"""decode_predictions / preprocess_input and the ImageNet class index shipped in the package."""
import hashlib
import json
import os
from importlib import resources

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets

import efficientnet_tf as en
from efficientnet_tf import imagenet

# keras/src/applications/imagenet_utils.py checks its downloaded imagenet_class_index.json
# against this md5 (file_hash=...): a byte-identical copy of Keras' index has it.
KERAS_CLASS_INDEX_MD5 = "c2c37ea517e94d9795004a39431a14cb"


def _index_bytes():
    return resources.files("efficientnet_tf").joinpath(
        "resources", "imagenet_class_index.json").read_bytes()


def test_shipped_index_is_keras_index_and_tfds_synset_order():
    assert hashlib.md5(_index_bytes()).hexdigest() == KERAS_CLASS_INDEX_MD5
    index = imagenet.class_index()
    assert len(index) == 1000
    assert index[0] == ("n01440764", "tench")
    assert index[1] == ("n01443537", "goldfish")
    assert index[2] == ("n01484850", "great_white_shark")
    assert index[999] == ("n15075141", "toilet_tissue")
    synsets = [s for s, _ in index]
    assert synsets == sorted(synsets) and len(set(synsets)) == 1000
    tfds_labels = os.path.join(os.path.dirname(tensorflow_datasets.__file__),
                               "datasets", "imagenet2012", "labels.txt")
    if os.path.exists(tfds_labels):
        with open(tfds_labels) as f:
            assert synsets == [line.strip() for line in f if line.strip()]


def test_decode_predictions_top_k_order_and_values():
    rng = np.random.default_rng(0)
    preds = rng.random((3, 1000)).astype("float32")
    preds[1, 417] = 5.0  # balloon
    out = en.decode_predictions(preds, top=4)
    assert len(out) == 3 and all(len(r) == 4 for r in out)
    index = imagenet.class_index()
    for row, decoded in zip(preds, out):
        want = np.argsort(row)[::-1][:4]
        assert [d[0] for d in decoded] == [index[i][0] for i in want]
        assert [d[1] for d in decoded] == [index[i][1] for i in want]
        np.testing.assert_array_equal([d[2] for d in decoded], row[want])
        assert all(a[2] >= b[2] for a, b in zip(decoded, decoded[1:]))
    assert out[1][0] == ("n02782093", "balloon", np.float32(5.0))
    # Default top=5; tensors are accepted; top=1000 lists every class once.
    assert len(en.decode_predictions(tf.constant(preds))[0]) == 5
    full = en.decode_predictions(preds[:1], top=1000)[0]
    assert sorted(d[0] for d in full) == sorted(s for s, _ in index)


def test_decode_predictions_matches_keras_with_the_same_index(monkeypatch):
    from keras.src.applications import imagenet_utils

    # Give Keras our index so it does not download its own, then compare the outputs.
    monkeypatch.setattr(imagenet_utils, "CLASS_INDEX", json.loads(_index_bytes()))
    preds = np.random.default_rng(1).random((2, 1000)).astype("float32")
    assert en.decode_predictions(preds, top=7) == imagenet_utils.decode_predictions(preds, top=7)


@pytest.mark.parametrize("shape", [(1000,), (2, 10), (2, 1001), (2, 1000, 1), ()])
def test_decode_predictions_rejects_bad_shapes(shape):
    with pytest.raises(ValueError, match=r"\(samples, 1000\).*" + str(shape).replace("(", r"\(")
                       .replace(")", r"\)")):
        en.decode_predictions(np.zeros(shape))


@pytest.mark.parametrize("top", [0, -1, 1001, 2.5, True])
def test_decode_predictions_rejects_bad_top(top):
    with pytest.raises(ValueError, match="top must be an integer"):
        en.decode_predictions(np.zeros((1, 1000)), top=top)


def test_preprocess_input_is_identity():
    x = np.random.default_rng(2).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    assert en.preprocess_input(x) is x
    t = tf.constant(x)
    assert en.preprocess_input(t, data_format="channels_last") is t
    assert "[0, 255]" in en.preprocess_input.__doc__
    with pytest.raises(ValueError, match="data_format"):
        en.preprocess_input(x, data_format="NHWC")
