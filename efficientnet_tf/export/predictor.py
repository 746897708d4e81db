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

Arrays are pixels 0..255: uint8, any integer type with values in 0..255, or floats in [0, 255]
(rounded to uint8). Anything else raises ValueError (a caller's mistake, not a bad file): floats
whose maximum is in (0, 1] (scaled to [0, 1]: multiply by 255; an all-zero image is accepted,
black either way), NaN or infinity, values outside 0..255 (e.g. 16-bit images), other dtypes.
An array [n, h, w, 3] given as `items` is n images; [h, w, 3] or [h, w] is one.
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


def positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")
    return int(value)


def image_array(array) -> np.ndarray:
    """One image array as uint8 [h, w, channels]; ValueError when its pixels are not 0..255."""
    array = np.asarray(array)
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[-1] not in (1, 3, 4) or array.size == 0:
        raise ValueError(f"image array has shape {array.shape}; expected [height, width, 3] "
                         "(or [height, width] / [height, width, 1] grayscale).")
    if array.dtype == np.uint8:
        return array
    if np.issubdtype(array.dtype, np.integer):
        lo, hi = int(array.min()), int(array.max())
        if lo < 0 or hi > 255:
            raise ValueError(f"image array ({array.dtype}) has values {lo}..{hi}, outside "
                             "0..255: convert it to 8-bit pixels first (uint16: array // 257).")
        return array.astype(np.uint8)
    if not np.issubdtype(array.dtype, np.floating):
        raise ValueError(f"image array has dtype {array.dtype}; expected uint8 pixels or "
                         "floats in [0, 255].")
    if not np.isfinite(array).all():
        raise ValueError(f"image array ({array.dtype}) has NaN or infinite values.")
    lo, hi = float(array.min()), float(array.max())
    if lo < 0 or hi > 255:
        raise ValueError(f"image array ({array.dtype}) has values in [{lo:g}, {hi:g}], "
                         "outside [0, 255].")
    if 0 < hi <= 1:
        raise ValueError(f"image array ({array.dtype}) has values in [{lo:g}, {hi:g}]: it looks "
                         "scaled to [0, 1], and pixels must be in [0, 255]: multiply it by 255.")
    return np.rint(array).astype(np.uint8)


class Predictor:
    def __init__(self, path: str, *, num_threads: int | None = None, top_k: int = 5,
                 label_names=None, crop_padding: int | None = None,
                 resize_method: str | None = None):
        self.path, self.top_k = path, positive_int("top_k", top_k)
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
            image = preprocessing.preprocess_image_tensor_for_eval(
                tf.convert_to_tensor(image_array(item)), self.image_size, self.crop_padding,
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
        if images.ndim != 4 or images.shape[1:] != (self.image_size, self.image_size, 3):
            raise ValueError(f"images have shape {images.shape}; expected [n, {self.image_size}, "
                             f"{self.image_size}, 3] (center-cropped and resized).")
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
        """One Prediction per item (a path, bytes or an HxWx3 array), in order.

        items may also be one array: [n, h, w, 3] is n images, [h, w, 3] or [h, w] one. An array
        whose pixels are not 0..255 raises ValueError (see the module docstring).
        """
        batch_size = positive_int("batch_size", batch_size)
        if isinstance(items, np.ndarray):
            items = list(items) if items.ndim == 4 else [items]
        results, ready = [], []
        for n, item in enumerate(items):
            if isinstance(item, np.ndarray):
                try:
                    item = image_array(item)  # uint8 from here on
                except ValueError as e:
                    raise ValueError(f"item {n}: {e}") from None
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
