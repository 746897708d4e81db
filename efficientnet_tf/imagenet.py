"""ImageNet helpers in keras.applications' style: preprocess_input and decode_predictions.

The 1000-class index ships inside the package (resources/imagenet_class_index.json, Keras'
format {"0": ["n01440764", "tench"], ...}); nothing is downloaded. Class i is the i-th WordNet
synset id in sorted order (the ILSVRC-2012 order, as tensorflow-datasets' imagenet2012 labels);
its name is the synset's first WordNet 3.0 lemma, as in Keras' imagenet_class_index.json.
"""
from __future__ import annotations

import functools
import json
from importlib import resources

import numpy as np

NUM_CLASSES = 1000
_INDEX_FILE = "imagenet_class_index.json"


def preprocess_input(x, data_format=None):
    """Identity: returns `x` unchanged, as keras.applications.efficientnet.preprocess_input.

    EfficientNet models here take float pixels in [0, 255] (RGB) and normalize inside the model
    (Rescaling(1/255) then the ImageNet mean/std Normalize layer), so no preprocessing is
    needed; the function exists so code written for other Keras Applications keeps working.
    `data_format` is accepted for API compatibility and must be None, "channels_last" or
    "channels_first".
    """
    if data_format not in (None, "channels_last", "channels_first"):
        raise ValueError(f"data_format must be None, 'channels_last' or 'channels_first', "
                         f"got {data_format!r}.")
    return x


@functools.lru_cache(maxsize=1)
def class_index() -> tuple[tuple[str, str], ...]:
    """The 1000 (synset id, class name) pairs, index = class id of the model's output."""
    text = resources.files("efficientnet_tf").joinpath("resources", _INDEX_FILE).read_text("utf8")
    raw = json.loads(text)
    index = tuple((str(raw[str(i)][0]), str(raw[str(i)][1])) for i in range(len(raw)))
    if len(index) != NUM_CLASSES:
        raise RuntimeError(f"{_INDEX_FILE} has {len(index)} classes, expected {NUM_CLASSES}.")
    return index


def decode_predictions(preds, top: int = 5):
    """Decodes ImageNet predictions: for each sample, the `top` (synset, name, score) tuples.

    preds: array-like (numpy or tensor) of shape (samples, 1000), e.g. the model's softmax.
    Returns a list (one per sample) of lists of (class_id, class_name, score), best first,
    like keras.applications.imagenet_utils.decode_predictions, with the class index shipped
    in this package instead of downloaded.
    """
    preds = np.asarray(preds)
    if preds.ndim != 2 or preds.shape[1] != NUM_CLASSES:
        raise ValueError(
            "decode_predictions expects a batch of ImageNet predictions: a 2D array of shape "
            f"(samples, {NUM_CLASSES}). Got shape {preds.shape}. (A single image's "
            f"predictions of shape ({NUM_CLASSES},) need a batch axis: preds[None].)")
    if isinstance(top, bool) or not isinstance(top, (int, np.integer)) or not 1 <= top <= NUM_CLASSES:
        raise ValueError(f"top must be an integer in [1, {NUM_CLASSES}], got {top!r}.")
    index = class_index()
    # Stable sort on the negated scores: ties keep the lower class id first.
    order = np.argsort(-preds, axis=1, kind="stable")[:, :top]
    return [[(*index[i], row[i]) for i in idx] for row, idx in zip(preds, order)]
