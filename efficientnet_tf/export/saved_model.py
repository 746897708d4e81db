"""SavedModel export with TF Serving signatures (image bytes, uint8 image tensor, float pixels).

One SavedModel, three signatures traced with training=False:
  serving_default       image_bytes  string  [batch]                 (JPEG, PNG, GIF, BMP)
  serving_image_tensor  image_tensor uint8   [batch, h, w, 3]        (any h, w)
  serving_float         images       float32 [batch, size, size, 3]  (pixels in [0, 255], resized)
Each returns classes int64 [batch], probabilities float32 [batch, C], top_k_classes int64
[batch, k], top_k_scores float32 [batch, k] and, with label names, class_names string [batch]
and top_k_names string [batch, k]. The first two run the eval preprocessing of the training
config (center crop, bicubic resize) inside the graph. serving_float does not resize: images of
another size fail with InvalidArgumentError naming the expected and the given shape (TF2's
loaded signatures do not check the declared shape themselves). An empty batch (0 images) gives
empty outputs ([0], [0, C], [0, k]) on every signature. SIGNATURE_TABLE defines them (TFLite takes
serving_float from it); a new signature is one entry there.
"""
from __future__ import annotations

import dataclasses
import inspect
import os
import re
import time
from typing import Callable, Sequence

import keras
import tensorflow as tf

from efficientnet_tf import fileio
from efficientnet_tf.constants import DEFAULT_CROP_PADDING, RESIZE_METHODS
from efficientnet_tf.data import preprocessing
from efficientnet_tf.rundir import check_writable_dir, process_alive


@dataclasses.dataclass(frozen=True)
class Signature:
    """One serving signature: its input and how that input becomes float images."""

    name: str  # signature key in the SavedModel
    attr: str  # ServingModule attribute holding its tf.function
    input_name: str
    dtype: tf.DType
    shape_fn: Callable[[int], tuple]  # image size -> input shape, batch first (None: any)
    preprocess: Callable  # (ServingModule, input) -> float32 images [batch, size, size, 3]

    def spec(self, image_size: int, batch: int | None = None) -> tf.TensorSpec:
        shape = list(self.shape_fn(image_size))
        if batch is not None:
            shape[0] = batch
        return tf.TensorSpec(shape, self.dtype, self.input_name)


def _decode_one(module, image_bytes):
    tf.debugging.assert_greater(tf.strings.length(image_bytes), 0,
                                message="image_bytes: got an empty string, expected the "
                                        "bytes of an encoded image (JPEG, PNG, GIF, BMP or WebP)")
    return preprocessing.preprocess_for_eval(image_bytes, module._size, module._crop_padding,
                                             module._resize_method)


def _crop_one(module, image):
    return preprocessing.preprocess_image_tensor_for_eval(image, module._size,
                                                          module._crop_padding,
                                                          module._resize_method)


def _check_size(module, images):
    """images as they are, after a run-time check that they are [batch, size, size, 3]."""
    size = module._size
    shape = tf.shape(images)
    ok = tf.reduce_all(tf.equal(shape[1:3], [size, size]))
    check = tf.debugging.Assert(ok, [f"serving_float: images must be [batch, {size}, {size}, 3] "
                                     "(center-cropped and resized; serving_image_tensor takes "
                                     "any size), got shape", shape], summarize=4)
    with tf.control_dependencies([check]):
        return tf.identity(images)


def _per_image(fn):
    """Maps fn(module, one image) over the batch: float32 [batch, size, size, 3]."""
    def preprocess(module, batch):
        spec = tf.TensorSpec([module._size, module._size, 3], tf.float32)
        return tf.map_fn(lambda x: fn(module, x), batch, fn_output_signature=spec)

    return preprocess


SIGNATURE_TABLE = (
    Signature("serving_default", "serve_bytes", "image_bytes", tf.string,
              lambda size: (None,), _per_image(_decode_one)),
    Signature("serving_image_tensor", "serve_image_tensor", "image_tensor", tf.uint8,
              lambda size: (None, None, None, 3), _per_image(_crop_one)),
    Signature("serving_float", "serve_float", "images", tf.float32,
              lambda size: (None, size, size, 3), _check_size),
)
SIGNATURES = tuple(s.name for s in SIGNATURE_TABLE)


def signature(name: str) -> Signature:
    for entry in SIGNATURE_TABLE:
        if entry.name == name:
            return entry
    raise KeyError(f"no signature {name!r}; have {SIGNATURES}")


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
    """Holds the model and one tf.function per SIGNATURE_TABLE entry (with its input signature)."""

    def __init__(self, model: keras.Model, image_size: int,
                 crop_padding: int = DEFAULT_CROP_PADDING, resize_method: str = "bicubic_tf1",
                 top_k: int = 5, label_names: Sequence[str] | None = None,
                 outputs_are_logits: bool = False):
        super().__init__(name="efficientnet_serving")
        if resize_method not in RESIZE_METHODS:
            raise ValueError(f"unknown resize_method {resize_method!r}; use one of "
                             f"{RESIZE_METHODS}")
        # Track the model's variables (as keras.export does), not the Keras model object: saving
        # the model object writes a second, uninitialized copy of every variable that TF1-style
        # loaders (TF Serving, saved_model_cli run) then fail on ("Could not find variable").
        self.__dict__["model"] = model  # untracked
        self.model_variables = [getattr(v, "value", v) for v in model.variables]  # tf.Variables
        num_classes = int(model.outputs[0].shape[-1])
        self._num_classes = num_classes
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
        for entry in SIGNATURE_TABLE:
            setattr(self, entry.attr, self.function(entry))

    def function(self, entry: Signature, batch: int | None = None,
                 outputs: Sequence[str] | None = None) -> tf.types.experimental.GenericFunction:
        """entry's tf.function: its input -> preprocess -> _outputs (only `outputs`, if given)."""
        def serve(*args, **kwargs):
            result = self._outputs(entry.preprocess(self, *args, *kwargs.values()))
            return result if outputs is None else {k: result[k] for k in outputs}

        # Name the one parameter after the input: the SavedModel keeps it (serve_float(images=)).
        serve.__signature__ = inspect.Signature(
            [inspect.Parameter(entry.input_name, inspect.Parameter.POSITIONAL_OR_KEYWORD)])
        serve.__name__ = entry.attr
        return tf.function(serve, input_signature=[entry.spec(self._size, batch)])

    def signatures(self) -> dict:
        return {e.name: getattr(self, e.attr).get_concrete_function() for e in SIGNATURE_TABLE}

    def _outputs(self, images):
        def run():
            return tf.cast(self.model(images, training=False), tf.float32)

        if images.shape[0]:  # a fixed batch (TFLite)
            out = run()
        else:  # the model's convolutions fail on 0 images: skip it
            out = tf.cond(tf.shape(images)[0] > 0, run,
                          lambda: tf.zeros([0, self._num_classes], tf.float32))
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


def check_export_dir(path: str) -> None:
    """ValueError (rundir.RunDirError) unless path is, or can be made, a folder we can write (a
    probe file; a folder made for the check is removed again). Run it before the slow parts."""
    check_writable_dir(path, "--export_dir")


TEMP_DIR = re.compile(r"\.tmp-(\d+)-(\d+)/?")  # .tmp-<version>-<pid of the export>
STALE_AFTER_S = 600


def _newest_mtime_s(path: str) -> float:
    newest = tf.io.gfile.stat(path).mtime_nsec
    for root, dirs, files in tf.io.gfile.walk(path):
        for name in dirs + files:
            newest = max(newest, tf.io.gfile.stat(os.path.join(root, name)).mtime_nsec)
    return newest / 1e9


def remove_stale_temp_dirs(export_dir: str, stale_after_s: float = STALE_AFTER_S) -> list[str]:
    """Removes the .tmp-<version>-<pid> folders a crashed export left in export_dir; returns them.

    A folder is stale only when its pid is not running on this host and nothing in it changed
    for stale_after_s (the pid alone is not enough: export_dir may be shared with other hosts).
    """
    from absl import logging

    if not tf.io.gfile.isdir(export_dir):
        return []
    removed = []
    for name in tf.io.gfile.listdir(export_dir):
        match = TEMP_DIR.fullmatch(name)
        pid = int(match.group(2)) if match else 0
        if not match or pid <= 0 or pid == os.getpid() or process_alive(pid):
            continue
        path = os.path.join(export_dir, name.rstrip("/"))
        try:
            age = time.time() - _newest_mtime_s(path)
            if age < stale_after_s:
                continue
            tf.io.gfile.rmtree(path)
        except tf.errors.NotFoundError:  # removed meanwhile
            continue
        logging.warning("Removed %s, left by an export that did not finish (process %s gone, "
                        "unchanged for %d min).", path, match.group(2), age // 60)
        removed.append(path)
    return removed


def export_saved_model(model: keras.Model, export_dir: str, *, image_size: int | None = None,
                       crop_padding: int = DEFAULT_CROP_PADDING,
                       resize_method: str = "bicubic_tf1",
                       top_k: int = 5, label_names: Sequence[str] | None = None,
                       version: int | str | None = None, outputs_are_logits: bool | None = None,
                       fold_batch_norm: bool = False, overwrite: bool = False) -> str:
    """Writes export_dir/<version>/ (saved_model.pb + variables) and returns that path.

    version: an integer (TF Serving serves the highest); None = next integer after the existing
    ones; "timestamp" = int(time.time()). outputs_are_logits: None = detect from the last layer.
    fold_batch_norm: fold inference BN into the preceding convolutions first (see fold.py).
    Local exports are written to a temporary directory and renamed, so a crash never leaves a
    half-written version that TF Serving would try to load; such leftovers are removed by the
    next export to export_dir once stale (remove_stale_temp_dirs).
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
    if fileio.is_remote(export_dir):
        # Object stores have no atomic directory rename (on gs:// it copies object by object):
        # saved in place; TensorFlow writes saved_model.pb after the variables.
        if tf.io.gfile.exists(final):
            tf.io.gfile.rmtree(final)
        tf.saved_model.save(module, final, signatures=module.signatures())
        return final
    remove_stale_temp_dirs(export_dir)
    tmp = os.path.join(export_dir, f".tmp-{version}-{os.getpid()}")
    if tf.io.gfile.exists(tmp):
        tf.io.gfile.rmtree(tmp)
    try:
        tf.saved_model.save(module, tmp, signatures=module.signatures())
        if tf.io.gfile.exists(final):
            tf.io.gfile.rmtree(final)
        tf.io.gfile.rename(tmp, final)
    finally:
        if tf.io.gfile.exists(tmp):
            tf.io.gfile.rmtree(tmp)
    return final
