"""Inference speed of our B0 vs keras.applications' B0 in one process; prints JSON.

    .venv/bin/python bench/model.py [--iters 10] [--size 224] [--batch 32]

Both models get the same weights (copied by path), the same inputs and the same call path
(a tf.function around model(x, training=False)). Also reports two faster inference paths
beside the float32 numbers: BN folded into the convolutions, and bfloat16 compute (this CPU
has avx512_bf16).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import re
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

import efficientnet_tf as en  # noqa: E402


def _key(w):
    return re.sub(r"^normalization(_\d+)?/", "normalization/", w.path)


def timed(fn, x, iters: int) -> float:
    """Median seconds per call after two warm-up calls."""
    fn(x)
    fn(x)
    times = []
    for _ in range(iters):
        t = time.perf_counter()
        np.asarray(fn(x))
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def measure(model, size, batch, iters):
    fn = tf.function(lambda x: model(x, training=False), reduce_retracing=True)
    xb = tf.random.uniform((batch, size, size, 3), 0, 255, seed=1)
    x1 = xb[:1]
    t_batch = timed(fn, xb, iters)
    t_one = timed(fn, x1, iters * 3)
    return {"images_per_s": round(batch / t_batch, 1), "batch1_latency_ms": round(1000 * t_one, 2)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=10)
    args = p.parse_args()

    theirs = keras.applications.EfficientNetB0(weights=None)
    ours = en.EfficientNetB0()
    src = {_key(w): w for w in theirs.weights}
    for w in ours.weights:
        w.assign(src[_key(w)])
    x = np.random.default_rng(0).uniform(0, 255, (4, 224, 224, 3)).astype("float32")
    max_diff = float(np.abs(ours(x, training=False) - theirs(x, training=False)).max())

    result = {
        "machine": {"cpus": os.cpu_count(), "python": platform.python_version(),
                    "tensorflow": tf.__version__, "keras": keras.__version__},
        "size": args.size, "batch": args.batch, "iters": args.iters,
        "max_abs_output_diff": max_diff,
        "params": {"ours": en.model_profile(ours)["params"], "keras": theirs.count_params()},
        "macs": en.model_profile(ours)["macs"],
    }
    # Alternate the two models so background load hits both alike.
    result["ours_fp32"] = measure(ours, args.size, args.batch, args.iters)
    result["keras_fp32"] = measure(theirs, args.size, args.batch, args.iters)
    result["ratio_fp32_throughput"] = round(
        result["ours_fp32"]["images_per_s"] / result["keras_fp32"]["images_per_s"], 3)
    result["ratio_fp32_latency"] = round(
        result["keras_fp32"]["batch1_latency_ms"] / result["ours_fp32"]["batch1_latency_ms"], 3)

    # Faster inference path 1: BN folded into the convolutions (what export --fold_batch_norm does).
    from efficientnet_tf.export.fold import fold_batch_norm

    folded = fold_batch_norm(ours)
    result["folded_max_abs_output_diff"] = float(np.abs(folded(x, training=False)
                                                         - ours(x, training=False)).max())
    result["ours_fp32_bn_folded"] = measure(folded, args.size, args.batch, args.iters)

    # Faster inference path 2: bfloat16 compute (avx512_bf16 on this CPU).
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    ours_bf16 = en.EfficientNetB0()
    ours_bf16.set_weights(ours.get_weights())
    result["ours_bf16"] = measure(ours_bf16, args.size, args.batch, args.iters)
    keras.mixed_precision.set_global_policy("float32")
    result["bf16_max_abs_prob_diff"] = float(np.abs(ours_bf16(x, training=False)
                                                     - ours(x, training=False)).max())
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
