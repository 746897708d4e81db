"""Predictor: an exported model (.tflite or SavedModel) on image files, bytes or arrays.

    p = Predictor("export/tflite/1_float32.tflite", num_threads=2)
    for r in p.predict(["cat.jpg", open("dog.png", "rb").read(), array]):
        print(r.source, r.names[:3], r.probabilities[:3]) if r.ok else print(r.source, r.error)

Each image gets the model's own eval preprocessing (center crop with its crop_padding, its resize
method, at the model's resolution): a .tflite file carries them in the `<file>.json` written
beside it by export_tflite (else the reference's defaults, crop_padding 32 and TF1 bicubic,
unless given); a SavedModel applies them in its own signatures. A .tflite runs on
ai_edge_litert's interpreter (tf.lite's only when that is missing; `runtime` says which), with
its input resized to the batch. An image that cannot be read or decoded gives a result with
`error` set and does not stop the others.
"""
from __future__ import annotations

import dataclasses
import json
import os

import numpy as np
import tensorflow as tf

from efficientnet_tf.constants import DEFAULT_CROP_PADDING


@dataclasses.dataclass
class Prediction:
    source: str
    classes: list = dataclasses.field(default_factory=list)  # top-k class indices
    probabilities: list = dataclasses.field(default_factory=list)
    names: list = dataclasses.field(default_factory=list)
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


def metadata_path(tflite_path: str) -> str:
    return tflite_path + ".json"


def _interpreter(path: str, num_threads: int | None):
    try:
        from ai_edge_litert.interpreter import Interpreter

        return Interpreter(model_path=path, num_threads=num_threads), "ai_edge_litert"
    except ImportError:
        return tf.lite.Interpreter(model_path=path, num_threads=num_threads), "tf.lite"


class Predictor:
    def __init__(self, path: str, *, num_threads: int | None = None, top_k: int = 5,
                 label_names=None, crop_padding: int | None = None,
                 resize_method: str | None = None):
        self.path, self.top_k = path, top_k
        meta = {}
        if path.endswith(".tflite"):
            if not tf.io.gfile.exists(path):
                raise ValueError(f"{path}: no such .tflite file.")
            if tf.io.gfile.exists(metadata_path(path)):
                with tf.io.gfile.GFile(metadata_path(path)) as f:
                    meta = json.load(f)
            local = path
            if "://" in path:  # the interpreter reads local files only
                local = os.path.join(_tmpdir(), os.path.basename(path))
                tf.io.gfile.copy(path, local, overwrite=True)
            self._interp, self.runtime = _interpreter(local, num_threads)
            self._allocated = False
            inp = self._interp.get_input_details()[0]
            self.image_size = int(inp["shape"][1])
            self.num_classes = int(self._interp.get_output_details()[0]["shape"][-1])
        else:
            if not tf.io.gfile.exists(os.path.join(path, "saved_model.pb")):
                raise ValueError(f"{path} is neither a .tflite file nor a SavedModel directory.")
            self._saved = tf.saved_model.load(path)
            self.runtime = "saved_model"
            spec = self._saved.signatures["serving_float"].structured_input_signature[1]
            self.image_size = int(next(iter(spec.values())).shape[1])
            out = self._saved.signatures["serving_float"].structured_outputs
            self.num_classes = int(out["probabilities"].shape[-1])
        self._names_seen = {}
        self.crop_padding = (crop_padding if crop_padding is not None
                             else meta.get("crop_padding", DEFAULT_CROP_PADDING))
        self.resize_method = resize_method or meta.get("resize_method", "bicubic_tf1")
        self.label_names = list(label_names or meta.get("label_names") or []) or None
        if self.label_names is None and self.num_classes == 1000:
            from efficientnet_tf.imagenet import class_index

            self.label_names = [name for _, name in class_index()]

    # ---------------------------------------------------------------- preprocessing
    def _preprocess(self, item) -> tuple[str, np.ndarray]:
        from efficientnet_tf.data import preprocessing

        if isinstance(item, np.ndarray):
            array = item if item.ndim == 3 else item[..., None]
            if array.shape[-1] == 1:
                array = np.repeat(array, 3, axis=-1)
            image = preprocessing.preprocess_image_tensor_for_eval(
                tf.convert_to_tensor(array.astype(np.uint8) if array.dtype != np.uint8
                                     else array), self.image_size, self.crop_padding,
                resize_method=self.resize_method)
            return "<array>", image.numpy()
        if isinstance(item, (bytes, bytearray)):
            source, data = "<bytes>", bytes(item)
        else:
            source = os.fspath(item)
            with tf.io.gfile.GFile(source, "rb") as f:
                data = f.read()
        image = preprocessing.preprocess_for_eval(data, self.image_size, self.crop_padding,
                                                  resize_method=self.resize_method)
        return source, image.numpy()

    # ---------------------------------------------------------------- running
    def probabilities(self, images: np.ndarray) -> np.ndarray:
        """Probabilities [n, classes] of preprocessed float32 images [n, s, s, 3] in [0, 255]."""
        images = np.asarray(images, np.float32)
        if self.runtime == "saved_model":
            out = self._saved.signatures["serving_float"](images=tf.constant(images))
            if "top_k_names" in out:  # the export's label names, for the classes it returns
                for cls, name in zip(out["top_k_classes"].numpy().reshape(-1),
                                     out["top_k_names"].numpy().reshape(-1)):
                    self._names_seen[int(cls)] = name.decode("utf8")
            return out["probabilities"].numpy()
        inp = self._interp.get_input_details()[0]
        if tuple(inp["shape"]) != images.shape:
            self._interp.resize_tensor_input(inp["index"], list(images.shape))
            self._interp.allocate_tensors()
        elif not self._allocated:
            self._interp.allocate_tensors()
        self._allocated = True
        self._interp.set_tensor(inp["index"], images)
        self._interp.invoke()
        out = self._interp.get_output_details()[0]
        return self._interp.get_tensor(out["index"]).copy()

    def predict(self, items, batch_size: int = 32) -> list[Prediction]:
        """One Prediction per item (a path, bytes or an HxWx3 array), in order."""
        results, ready = [], []
        for item in items:
            try:
                source, image = self._preprocess(item)
                ready.append((len(results), image))
                results.append(Prediction(source))
            except (tf.errors.OpError, OSError, ValueError) as e:
                name = item if isinstance(item, (str, os.PathLike)) else type(item).__name__
                results.append(Prediction(os.fspath(name) if not isinstance(name, str) else name,
                                          error=_short(e)))
        for start in range(0, len(ready), batch_size):
            chunk = ready[start:start + batch_size]
            probs = self.probabilities(np.stack([image for _, image in chunk]))
            for (i, _), p in zip(chunk, probs):
                top = np.argsort(-p)[: self.top_k]
                r = results[i]
                r.classes = [int(c) for c in top]
                r.probabilities = [float(p[c]) for c in top]
                r.names = [self.label_names[c] if self.label_names else
                           self._names_seen.get(int(c), str(c)) for c in top]
        return results


def _short(e: Exception) -> str:
    text = getattr(e, "message", None) or str(e)
    return f"{type(e).__name__}: {text.strip().splitlines()[0][:200]}" if text else type(e).__name__


def _tmpdir() -> str:
    import tempfile

    return tempfile.mkdtemp(prefix="efficientnet_tf_predict_")
