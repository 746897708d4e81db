"""TFLite export: float32, float16 weights, or int8 post-training quantization calibrated on
real images.

The .tflite model is the serving_float signature with the batch fixed to 1 and only its
probabilities output: float32 [1, size, size, 3] pixels in [0, 255] (already center-cropped and
resized) -> float32 probabilities [1, classes]. int8 models keep that float interface
(quantize/dequantize at the edges) with int8 weights and activations inside.
Uses tf.lite.TFLiteConverter, which TF 2.21 still ships (ai-edge-litert is its successor).
"""
from __future__ import annotations

from typing import Callable, Iterable

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf import fileio
from efficientnet_tf.constants import DEFAULT_CROP_PADDING
from efficientnet_tf.export.saved_model import (ServingModule, model_image_size,
                                                model_outputs_logits, signature)

QUANTIZATIONS = ("float32", "float16", "int8")  # float16: weights stored as float16
SIGNATURE = "serving_float"  # the SIGNATURE_TABLE entry a .tflite file is
OUTPUTS = ("probabilities",)


def tflite_available() -> bool:
    return hasattr(tf, "lite") and hasattr(tf.lite, "TFLiteConverter")


def tfrecord_calibration_images(data_dir: str, image_size: int, num_classes: int,
                                num_images: int = 64, split: str = "validation",
                                crop_padding: int = DEFAULT_CROP_PADDING,
                                resize_method: str = "bicubic_tf1",
                                data_config=None) -> Callable[[], Iterable]:
    """Representative data set: eval-preprocessed images from TFRecords via the data pipeline.
    data_config: the run's DataConfig (file patterns, label_offset), else the defaults."""
    import dataclasses

    from efficientnet_tf.data import pipeline

    base = data_config or pipeline.DataConfig()
    config = dataclasses.replace(base, data_dir=data_dir, image_size=image_size,
                                 num_classes=num_classes, crop_padding=crop_padding,
                                 resize_method=resize_method, deterministic=True, synthetic=False,
                                 cache=False)

    def gen():
        ds = pipeline.build_dataset(config, split, 1, repeat=False).take(num_images)
        for images, _ in ds:
            yield [tf.cast(images, tf.float32).numpy()]

    return gen


def _as_generator(representative_data, image_size: int) -> Callable[[], Iterable]:
    """Accepts a callable returning an iterable of arrays/batches, or an array [n, s, s, 3]."""
    if callable(representative_data):
        source = representative_data
    else:
        array = np.asarray(representative_data, np.float32)
        source = lambda: iter(array)  # noqa: E731

    def gen():
        for item in source():
            if isinstance(item, (list, tuple)):
                item = item[0]
            item = np.asarray(item, np.float32)
            if item.ndim == 3:
                item = item[np.newaxis]
            if item.shape[1:] != (image_size, image_size, 3):
                raise ValueError(f"representative image has shape {item.shape}, expected "
                                 f"[1, {image_size}, {image_size}, 3] float32 pixels in [0, 255]")
            for one in item:
                yield [one[np.newaxis]]

    return gen


def export_tflite(model: keras.Model, path: str, *, quantization: str = "float32",
                  representative_data=None, image_size: int | None = None,
                  outputs_are_logits: bool | None = None,
                  crop_padding: int = DEFAULT_CROP_PADDING, resize_method: str = "bicubic_tf1",
                  label_names=None) -> str:
    """Writes a .tflite file (atomically) and returns its path, and beside it `<path>.json`:
    the eval preprocessing (image_size, crop_padding, resize_method) and label names, which
    export.Predictor applies.

    quantization="int8" needs representative_data: a callable returning an iterable of float32
    images [s, s, 3] or batches [n, s, s, 3] in [0, 255] (e.g. tfrecord_calibration_images(...)),
    or an array of such images.
    """
    if not tflite_available():
        raise RuntimeError("This TensorFlow has no tf.lite.TFLiteConverter; install ai-edge-litert "
                           "and convert with it instead.")
    if quantization not in QUANTIZATIONS:
        raise ValueError(f"quantization must be one of {QUANTIZATIONS}, got {quantization!r}")
    if quantization == "int8" and representative_data is None:
        raise ValueError("int8 quantization needs representative_data (a few dozen real images, "
                         "e.g. tfrecord_calibration_images(data_dir, ...)).")
    size = image_size or model_image_size(model)
    logits = model_outputs_logits(model) if outputs_are_logits is None else outputs_are_logits

    module = ServingModule(model, size, outputs_are_logits=logits)
    serve = module.function(signature(SIGNATURE), batch=1, outputs=OUTPUTS)
    # The converter freezes the variables it finds on the trackable object: the module holds the
    # model's tf.Variables (a Keras 3 model hides them behind keras.Variable).
    converter = tf.lite.TFLiteConverter.from_concrete_functions(
        [serve.get_concrete_function()], module)
    if quantization == "int8":
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = _as_generator(representative_data, size)
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    elif quantization == "float16":  # half the file; CPUs dequantize to float32 at load
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.target_spec.supported_types = [tf.float16]
    flatbuffer = converter.convert()
    import json

    fileio.write_file(path + ".json", json.dumps({
        "image_size": size, "crop_padding": crop_padding, "resize_method": resize_method,
        "quantization": quantization, "num_classes": int(model.outputs[0].shape[-1]),
        "label_names": list(label_names) if label_names else None}, indent=1))
    return fileio.write_file(path, flatbuffer)


def run_tflite(path: str, images: np.ndarray) -> np.ndarray:
    """Runs a .tflite model from export_tflite one image at a time: probabilities [n, C]
    (ai_edge_litert's interpreter; tf.lite's only when that is missing)."""
    from efficientnet_tf.export.predictor import _interpreter

    interpreter, _ = _interpreter(path, None)
    interpreter.allocate_tensors()
    inp = interpreter.get_input_details()[0]
    out = interpreter.get_output_details()[0]
    results = []
    for image in np.asarray(images, np.float32):
        interpreter.set_tensor(inp["index"], image[np.newaxis])
        interpreter.invoke()
        results.append(interpreter.get_tensor(out["index"])[0].copy())
    return np.stack(results)
