"""SavedModel export with TF Serving signatures (image bytes, uint8 image tensor, float pixels).

One SavedModel, three signatures traced with training=False:
  serving_default       image_bytes  string  [batch]                 (JPEG, PNG, GIF, BMP)
  serving_image_tensor  image_tensor uint8   [batch, h, w, 3]        (any h, w)
  serving_float         images       float32 [batch, size, size, 3]  (pixels in [0, 255], resized)
Each returns classes int64 [batch], probabilities float32 [batch, C], top_k_classes int64
[batch, k], top_k_scores float32 [batch, k] and, with label names, class_names string [batch]
and top_k_names string [batch, k]. The first two run the eval preprocessing of the training
config (center crop, bicubic resize) inside the graph.
"""
from __future__ import annotations

import os
import re
import shutil
import time
from typing import Sequence

import keras
import tensorflow as tf

from efficientnet_tf.data import preprocessing

SIGNATURES = ("serving_default", "serving_image_tensor", "serving_float")


def model_outputs_logits(model: keras.Model) -> bool:
    """True if the model's last layer has no softmax (outputs logits); raises if it cannot tell."""
    last = model.layers[-1]
    act = getattr(last, "activation", None)
    name = getattr(act, "__name__", None)
    if name == "softmax":
        return False
    if name == "linear" and isinstance(last, keras.layers.Dense):
        return True
    if isinstance(last, keras.layers.Softmax):
        return False
    raise ValueError(f"Cannot tell whether the model's last layer {last.name!r} outputs logits or "
                     "probabilities: pass outputs_are_logits=True or False.")


def model_image_size(model: keras.Model) -> int:
    shape = model.inputs[0].shape
    if len(shape) != 4 or shape[1] is None or shape[1] != shape[2] or shape[3] != 3:
        raise ValueError(f"The model's input shape is {tuple(shape)}; pass image_size= (the "
                         "square resolution the model was trained at).")
    return int(shape[1])


class ServingModule(tf.Module):
    """Holds the model and the three serving functions (tf.functions with input signatures)."""

    def __init__(self, model: keras.Model, image_size: int, crop_padding: int = 32,
                 resize_method: str = "bicubic_tf1", top_k: int = 5,
                 label_names: Sequence[str] | None = None, outputs_are_logits: bool = False):
        super().__init__(name="efficientnet_serving")
        if resize_method not in preprocessing.RESIZE_METHODS:
            raise ValueError(f"unknown resize_method {resize_method!r}; use one of "
                             f"{preprocessing.RESIZE_METHODS}")
        # Track the model's variables (as keras.export does), not the Keras model object: saving
        # the model object writes a second, uninitialized copy of every variable that TF1-style
        # loaders (TF Serving, saved_model_cli run) then fail on ("Could not find variable").
        self.__dict__["model"] = model  # untracked
        self.model_variables = [getattr(v, "value", v) for v in model.variables]  # tf.Variables
        num_classes = int(model.outputs[0].shape[-1])
        self._size = int(image_size)
        self._crop_padding = int(crop_padding)
        self._resize_method = resize_method
        self._k = max(1, min(int(top_k), num_classes))
        self._logits = bool(outputs_are_logits)
        self._labels = None
        if label_names is not None:
            label_names = [str(n) for n in label_names]
            if len(label_names) != num_classes:
                raise ValueError(f"label_names has {len(label_names)} names but the model has "
                                 f"{num_classes} classes.")
            self._labels = tf.constant(label_names, tf.string)
        size = self._size
        self.serve_bytes = tf.function(
            self._serve_bytes, input_signature=[tf.TensorSpec([None], tf.string, "image_bytes")])
        self.serve_image_tensor = tf.function(
            self._serve_image_tensor,
            input_signature=[tf.TensorSpec([None, None, None, 3], tf.uint8, "image_tensor")])
        self.serve_float = tf.function(
            self._serve_float,
            input_signature=[tf.TensorSpec([None, size, size, 3], tf.float32, "images")])

    def signatures(self) -> dict:
        return {
            "serving_default": self.serve_bytes.get_concrete_function(),
            "serving_image_tensor": self.serve_image_tensor.get_concrete_function(),
            "serving_float": self.serve_float.get_concrete_function(),
        }

    # -------------------------------------------------------------- graph bodies
    def _decode_one(self, image_bytes):
        tf.debugging.assert_greater(tf.strings.length(image_bytes), 0,
                                    message="image_bytes: got an empty string, expected the "
                                            "bytes of an encoded image (JPEG, PNG, GIF, BMP or WebP)")
        return preprocessing.preprocess_for_eval(image_bytes, self._size, self._crop_padding,
                                                 self._resize_method)

    def _serve_bytes(self, image_bytes):
        spec = tf.TensorSpec([self._size, self._size, 3], tf.float32)
        images = tf.map_fn(self._decode_one, image_bytes, fn_output_signature=spec)
        return self._outputs(images)

    def _serve_image_tensor(self, image_tensor):
        spec = tf.TensorSpec([self._size, self._size, 3], tf.float32)
        images = tf.map_fn(
            lambda im: preprocessing.preprocess_image_tensor_for_eval(
                im, self._size, self._crop_padding, self._resize_method),
            image_tensor, fn_output_signature=spec)
        return self._outputs(images)

    def _serve_float(self, images):
        return self._outputs(images)

    def _outputs(self, images):
        out = tf.cast(self.model(images, training=False), tf.float32)
        probs = tf.nn.softmax(out, axis=-1) if self._logits else out
        scores, idx = tf.math.top_k(probs, k=self._k)
        idx = tf.cast(idx, tf.int64)
        result = {"classes": idx[:, 0], "probabilities": probs,
                  "top_k_classes": idx, "top_k_scores": scores}
        if self._labels is not None:
            result["class_names"] = tf.gather(self._labels, idx[:, 0])
            result["top_k_names"] = tf.gather(self._labels, idx)
        return result


def next_version(export_dir: str) -> int:
    """1 + the largest integer-named subdirectory of export_dir (1 if none)."""
    if not tf.io.gfile.isdir(export_dir):
        return 1
    numbers = [int(n.rstrip("/")) for n in tf.io.gfile.listdir(export_dir)
               if re.fullmatch(r"\d+/?", n)]
    return max(numbers, default=0) + 1


def export_saved_model(model: keras.Model, export_dir: str, *, image_size: int | None = None,
                       crop_padding: int = 32, resize_method: str = "bicubic_tf1",
                       top_k: int = 5, label_names: Sequence[str] | None = None,
                       version: int | str | None = None, outputs_are_logits: bool | None = None,
                       fold_batch_norm: bool = False, overwrite: bool = False) -> str:
    """Writes export_dir/<version>/ (saved_model.pb + variables) and returns that path.

    version: an integer (TF Serving serves the highest); None = next integer after the existing
    ones; "timestamp" = int(time.time()). outputs_are_logits: None = detect from the last layer.
    fold_batch_norm: fold inference BN into the preceding convolutions first (see fold.py).
    Local exports are written to a temporary directory and renamed, so a crash never leaves a
    half-written version that TF Serving would try to load.
    """
    if image_size is None:
        image_size = model_image_size(model)
    if outputs_are_logits is None:
        outputs_are_logits = model_outputs_logits(model)
    if version is None:
        version = next_version(export_dir)
    elif version == "timestamp":
        version = int(time.time())
    try:
        version = int(version)
    except (TypeError, ValueError):
        raise ValueError(f"version must be an integer, 'timestamp' or None, got {version!r}")
    if version < 0:
        raise ValueError(f"version must be >= 0 (TF Serving serves numeric versions), got {version}")
    final = os.path.join(export_dir, str(version))
    if tf.io.gfile.exists(final) and not overwrite:
        raise FileExistsError(f"{final} already exists: pick another version, or pass "
                              "overwrite=True (--overwrite) to replace it.")
    if fold_batch_norm:
        from efficientnet_tf.export.fold import fold_batch_norm as fold

        model = fold(model)
    module = ServingModule(model, image_size, crop_padding, resize_method, top_k, label_names,
                           outputs_are_logits)
    tf.io.gfile.makedirs(export_dir)
    if "://" in export_dir:  # object stores have no atomic directory rename
        if tf.io.gfile.exists(final):
            tf.io.gfile.rmtree(final)
        tf.saved_model.save(module, final, signatures=module.signatures())
        return final
    tmp = os.path.join(export_dir, f".tmp-{version}-{os.getpid()}")
    if os.path.exists(tmp):
        shutil.rmtree(tmp)
    try:
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        if os.path.exists(final):
            shutil.rmtree(final)
        os.rename(tmp, final)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
    return final
