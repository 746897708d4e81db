"""CPU inference in one process: keras.applications B0, ours (float32, BN folded, SavedModel),
LiteRT float32 / float16 / int8 of ours, and Lite0 float32 / int8. Prints JSON and a table.

    .venv/bin/python bench/inference.py [--size 224] [--iters 20] [--batch 16]

For each: batch-1 latency (median ms) and throughput (images/s: TF paths at --batch, LiteRT
at batch 1 and --batch with 1 and 2 threads), the GFLOP/s that gives (2 x the model's
multiply-adds per image) and its fraction of this machine's fp32 peak, estimated as
cores x GHz x 32 FLOP/cycle (two AVX2/AVX-512 FMA units; --peak_gflops to override).
Random weights (the speed does not depend on them); int8 calibrated on 16 photos from
scikit-image. TF paths use TensorFlow's default threading (all cores).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import efficientnet_tf as en  # noqa: E402
from efficientnet_tf.export import Predictor, export_saved_model, export_tflite  # noqa: E402
from efficientnet_tf.export.fold import fold_batch_norm  # noqa: E402


def _median_seconds(fn, iters):
    fn()
    fn()
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def _peak_gflops():
    cores = os.cpu_count() or 1
    ghz = 0.0
    try:
        text = open("/proc/cpuinfo").read()
        m = re.search(r"model name\s*:.*@\s*([\d.]+)GHz", text)
        ghz = float(m[1]) if m else max(float(x) for x in re.findall(r"cpu MHz\s*:\s*([\d.]+)",
                                                                       text)) / 1000
    except (OSError, ValueError):
        ghz = 2.6
    return cores * ghz * 32, cores, ghz


def _tf_path(fn, size, batch, iters):
    xb = tf.random.uniform((batch, size, size, 3), 0, 255, seed=1)
    x1 = xb[:1]
    t1 = _median_seconds(lambda: np.asarray(fn(x1)), iters * 2)
    tb = _median_seconds(lambda: np.asarray(fn(xb)), iters)
    return {"batch1_ms": 1000 * t1, "images_per_s": batch / tb}


def _lite_path(path, size, batch, iters, threads):
    p = Predictor(path, num_threads=threads)
    rng = np.random.default_rng(0)
    x1 = rng.uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    xb = rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32)
    t1 = _median_seconds(lambda: p.probabilities(x1), iters * 2)
    tb = _median_seconds(lambda: p.probabilities(xb), iters)
    return {"batch1_ms": 1000 * t1, "images_per_s": max(1 / t1, batch / tb),
            "runtime": p.runtime}


def _calibration(size):
    from skimage import data

    from efficientnet_tf.data import preprocessing

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket()]
    out = []
    for i in range(16):
        img = photos[i % 4]
        h, w = img.shape[:2]
        s = min(h, w) * (0.6 + 0.1 * (i // 4))
        crop = img[: int(s), : int(s)] if i % 2 else img[-int(s):, -int(s):]
        out.append(preprocessing.preprocess_image_tensor_for_eval(crop, size).numpy())
    return np.stack(out)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--iters", type=int, default=20)
    ap.add_argument("--peak_gflops", type=float, default=None)
    args = ap.parse_args()
    size, batch, iters = args.size, args.batch, args.iters
    peak, cores, ghz = _peak_gflops()
    peak = args.peak_gflops or peak
    tmp = tempfile.mkdtemp(prefix="bench_inference_")
    calib = _calibration(size)
    rows = []

    def add(name, macs, result, threads="default"):
        gflops = 2 * macs * result["images_per_s"] / 1e9
        rows.append({"path": name, "threads": threads,
                     "batch1_ms": round(result["batch1_ms"], 2),
                     "images_per_s": round(result["images_per_s"], 1),
                     "gflop_per_s": round(gflops, 1), "fraction_of_peak": round(gflops / peak, 3),
                     **({"runtime": result["runtime"]} if "runtime" in result else {})})
        print(f"{name:32s} {threads!s:8s} {rows[-1]['batch1_ms']:8.2f} ms "
              f"{rows[-1]['images_per_s']:8.1f} img/s {gflops:7.1f} GFLOP/s", flush=True)

    shape = (size, size, 3)
    theirs = keras.applications.EfficientNetB0(weights=None, input_shape=shape)
    ours = en.EfficientNetB0(input_shape=shape)
    b0_macs = en.model_profile(ours)["macs"]
    add("keras.applications B0 (tf.function)", b0_macs,
        _tf_path(tf.function(lambda x: theirs(x, training=False)), size, batch, iters))
    add("ours B0 float32 (tf.function)", b0_macs,
        _tf_path(tf.function(lambda x: ours(x, training=False)), size, batch, iters))
    folded = fold_batch_norm(ours)
    add("ours B0 BN folded (tf.function)", b0_macs,
        _tf_path(tf.function(lambda x: folded(x, training=False)), size, batch, iters))
    saved = tf.saved_model.load(export_saved_model(ours, os.path.join(tmp, "serving"),
                                                   image_size=size))
    serve = saved.signatures["serving_float"]
    add("ours B0 SavedModel serving_float", b0_macs,
        _tf_path(lambda x: serve(images=x)["probabilities"], size, batch, iters))

    lite0 = en.EfficientNetLite0(input_shape=shape)
    lite_macs = en.model_profile(lite0)["macs"]
    files = {}
    for name, model, kind, macs in (("B0", ours, "float32", b0_macs),
                                    ("B0", ours, "float16", b0_macs),
                                    ("B0", ours, "int8", b0_macs),
                                    ("Lite0", lite0, "float32", lite_macs),
                                    ("Lite0", lite0, "int8", lite_macs)):
        path = os.path.join(tmp, f"{name}_{kind}.tflite")
        t = time.perf_counter()
        export_tflite(model, path, quantization=kind, image_size=size,
                      representative_data=calib if kind == "int8" else None)
        files[f"{name}_{kind}"] = {"seconds_to_convert": round(time.perf_counter() - t, 1),
                                   "bytes": os.path.getsize(path)}
        for threads in (1, 2):
            add(f"LiteRT {name} {kind}", macs, _lite_path(path, size, batch, iters, threads),
                threads)
    keras_best = rows[0]["images_per_s"]
    out = {"size": size, "batch": batch, "iters": iters, "cores": cores, "ghz": ghz,
           "peak_gflop_per_s": round(peak, 1), "b0_macs": b0_macs, "lite0_macs": lite_macs,
           "rows": rows, "files": files,
           "best_vs_keras": round(max(r["images_per_s"] for r in rows) / keras_best, 2),
           "load_average": os.getloadavg()}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
