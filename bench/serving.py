"""Serving throughput: SavedModel serving_float vs Keras, same process, B0 at 224 px (CPU).

    TF_CPP_MIN_LOG_LEVEL=2 python bench/serving.py [--image_size=224] [--rounds=5]

Prints JSON: images/s (median over interleaved rounds) at batch 1 and 32 for
  keras_predict         model.predict(x, batch_size=b)
  keras_call            model(x, training=False)           (eager call)
  keras_tf_function     tf.function(model(x, training=False))  (graph, no export)
  saved_model           tf.saved_model.load(export)["serving_float"]
  saved_model_folded    the same, exported with fold_batch_norm=True
plus the max |probability difference| of each SavedModel vs Keras and the max |logit difference|
of the BN-folded Keras model vs the original. The model has random weights
with randomized BN statistics (so folding is not a no-op); speed does not depend on the values.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402


def _randomize_bn(model, rng):
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.gamma.shape[0]
            layer.gamma.assign(rng.uniform(0.5, 1.5, n).astype("float32"))
            layer.beta.assign(rng.normal(0, 0.2, n).astype("float32"))
            layer.moving_mean.assign(rng.normal(0, 0.2, n).astype("float32"))
            layer.moving_variance.assign(rng.uniform(0.5, 2.0, n).astype("float32"))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--image_size", type=int, default=224)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batches", default="1,32")
    args = p.parse_args()

    from efficientnet_tf import EfficientNetB0
    from efficientnet_tf.export import export_saved_model

    size = args.image_size
    rng = np.random.default_rng(0)
    keras.utils.set_random_seed(0)
    model = EfficientNetB0(weights=None, input_shape=(size, size, 3), classifier_activation=None)
    _randomize_bn(model, rng)
    from efficientnet_tf.export import fold_batch_norm

    probe = tf.constant(rng.uniform(0, 255, (4, size, size, 3)).astype("float32"))
    logits = model(probe, training=False).numpy()
    folded_logits = fold_batch_norm(model)(probe, training=False).numpy()
    tmp = tempfile.mkdtemp(prefix="bench_serving_")
    t0 = time.perf_counter()
    plain = export_saved_model(model, os.path.join(tmp, "plain"), top_k=5)
    export_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    folded = export_saved_model(model, os.path.join(tmp, "folded"), top_k=5, fold_batch_norm=True)
    export_folded_s = time.perf_counter() - t0
    sigs = {"saved_model": tf.saved_model.load(plain).signatures["serving_float"],
            "saved_model_folded": tf.saved_model.load(folded).signatures["serving_float"]}

    graph_call = tf.function(lambda x: model(x, training=False))
    batches = [int(b) for b in args.batches.split(",")]
    result = {"model": "efficientnet-b0 (ours)", "image_size": size, "rounds": args.rounds,
              "cpu_count": os.cpu_count(), "tf": tf.__version__, "keras": keras.__version__,
              "export_seconds": round(export_s, 1),
              "export_folded_seconds": round(export_folded_s, 1), "images_per_s": {},
              "max_abs_prob_diff_vs_keras": {},
              "folded_keras_max_abs_logit_diff": float(np.abs(folded_logits - logits).max()),
              "logit_abs_max": float(np.abs(logits).max())}
    for b in batches:
        x = rng.uniform(0, 255, (b, size, size, 3)).astype("float32")
        xt = tf.constant(x)
        fns = {
            "keras_predict": lambda: model.predict(x, batch_size=b, verbose=0),
            "keras_call": lambda: model(xt, training=False).numpy(),
            "keras_tf_function": lambda: graph_call(xt).numpy(),
            "saved_model": lambda: sigs["saved_model"](images=xt)["probabilities"].numpy(),
            "saved_model_folded":
                lambda: sigs["saved_model_folded"](images=xt)["probabilities"].numpy(),
        }
        reference = tf.nn.softmax(model(xt, training=False)).numpy()
        for name in ("saved_model", "saved_model_folded"):
            diff = float(np.abs(fns[name]() - reference).max())
            result["max_abs_prob_diff_vs_keras"].setdefault(name, {})[str(b)] = diff
        for fn in fns.values():  # warm-up (tracing, predict_function)
            fn()
            fn()
        iters = 10 if b == 1 else 2
        times = {name: [] for name in fns}
        for _ in range(args.rounds):  # interleaved, so load from other processes hits all alike
            for name, fn in fns.items():
                t0 = time.perf_counter()
                for _ in range(iters):
                    fn()
                times[name].append((time.perf_counter() - t0) / iters)
        result["images_per_s"][str(b)] = {
            name: round(b / statistics.median(ts), 2) for name, ts in times.items()}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
