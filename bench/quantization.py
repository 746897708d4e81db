"""What post-training quantization costs on a trained model: top-1 of the Keras model, its LiteRT
float32 and float16 files and int8 files, on every image of the run's validation split.

    .venv/bin/python bench/quantization.py --model_dir=RUN [--model_dir=RUN2 ...] [--out=F.json]

RUN is a training job's model_dir (e.g. the demo's <dir>/model); its config.yaml gives the data,
the resolution and the eval preprocessing, and its latest checkpoint (EMA weights) the model.
int8 (full-integer, per-channel weights) is calibrated on --calibration_images images of the
TRAIN split (eval preprocessing), so no test image is seen; every op is quantized.
Prints one JSON object: per model, top-1 of each, the agreement of each file's top-1 with the
Keras model's, and the largest probability difference.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

from efficientnet_tf.data import pipeline  # noqa: E402
from efficientnet_tf.export import load_run  # noqa: E402
from efficientnet_tf.export.tflite import (export_tflite, run_tflite,  # noqa: E402
                                           tfrecord_calibration_images)


def eval_arrays(config, limit=None):
    data = dataclasses.replace(config.data, deterministic=True, cache=False, synthetic=False)
    images, labels = [], []
    for x, y in pipeline.build_dataset(data, "validation", 500, repeat=False):
        images.append(x.numpy().astype(np.float32))
        labels.append(y.numpy())
    images, labels = np.concatenate(images), np.concatenate(labels)
    return (images[:limit], labels[:limit]) if limit else (images, labels)


def keras_probabilities(model, images):
    out = np.concatenate([model(images[i:i + 500], training=False).numpy()
                          for i in range(0, len(images), 500)])
    if out.min() < 0 or not np.allclose(out.sum(-1), 1, atol=1e-3):  # logits
        out = tf.nn.softmax(out).numpy()
    return out


def measure(model_dir, calibration_images, limit, workdir):
    loaded = load_run.load_model_for_export(model_dir)
    config, model = loaded.config, loaded.model
    d = config.data
    images, labels = eval_arrays(config, limit)
    t = time.time()
    ref = keras_probabilities(model, images)
    result = {"model_dir": model_dir, "checkpoint": loaded.checkpoint, "images": len(images),
              "image_size": d.image_size, "keras_top1": float((ref.argmax(1) == labels).mean())}
    calib = tfrecord_calibration_images(d.data_dir, d.image_size, d.num_classes,
                                        calibration_images, split="train",
                                        crop_padding=d.crop_padding,
                                        resize_method=d.resize_method, data_config=d)
    cached = list(calib())  # the same images for every conversion

    def calibration():
        return iter(cached)

    files = {}
    for q in ("float32", "float16", "int8"):
        files[q] = export_tflite(model, os.path.join(workdir, f"{q}.tflite"), quantization=q,
                                 representative_data=calibration if q == "int8" else None,
                                 crop_padding=d.crop_padding, resize_method=d.resize_method)
    for name, path in files.items():
        probs = run_tflite(path, images)
        result[name] = {
            "top1": float((probs.argmax(1) == labels).mean()),
            "agrees_with_keras": float((probs.argmax(1) == ref.argmax(1)).mean()),
            "max_prob_diff": float(np.abs(probs - ref).max()),
            "bytes": os.path.getsize(path)}
        result[name]["points_lost"] = round(100 * (result["keras_top1"] - result[name]["top1"]), 2)
    result["seconds"] = round(time.time() - t, 1)
    return result


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model_dir", action="append", required=True)
    p.add_argument("--calibration_images", type=int, default=256)
    p.add_argument("--limit", type=int, default=None, help="only the first N eval images")
    p.add_argument("--out", default=None)
    args = p.parse_args()
    results = []
    for model_dir in args.model_dir:
        with tempfile.TemporaryDirectory() as work:
            results.append(measure(model_dir, args.calibration_images, args.limit, work))
            print(json.dumps(results[-1], indent=1), flush=True)
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
