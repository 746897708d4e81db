"""Training images/s: our loop (full recipe, and stripped) vs keras.applications B0 under fit.

    .venv/bin/python bench/train.py [--steps 10] [--repeats 3] [--cases 32x256,224x32]
        [--variants keras_fit,ours_plain,ours_recipe,ours_recompute]

Same process, same batches (one fixed random batch repeated), B0 at each size:
- keras_fit: keras.applications.EfficientNetB0(weights=None) + compile(RMSprop) + fit;
- ours_plain: our Trainer with EMA, L2 and label smoothing switched off;
- ours_recipe: our Trainer with the paper's recipe (RMSpropTF1, EMA, L2, label smoothing);
- ours_recompute: ours_recipe with model.recompute=blocks (gradient checkpointing; not run
  unless named in --variants).
Ours is timed by the loop's own per-execution clock (steps_per_execution = steps, after a
warm-up execution), Keras by wall time around fit() after a warm-up fit; each figure is the
median of --repeats timed executions (min and max are printed too). Prints JSON.
Goal: ours_recipe costs at most 10% over keras_fit.
"""
import argparse
import json
import os
import statistics
import tempfile
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
import tensorflow as tf  # noqa: E402


def batches(size, batch):
    x = tf.random.uniform((batch, size, size, 3), 0, 255, seed=1)
    y = tf.random.uniform((batch,), 0, 1000, tf.int32, seed=2)
    return tf.data.Dataset.from_tensors((x, y)).repeat()


def summary(rates):
    rates = sorted(rates)
    return {"median": round(statistics.median(rates), 1), "min": round(rates[0], 1),
            "max": round(rates[-1], 1)}


def keras_fit(size, batch, steps, repeats):
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(size, size, 3))
    model.compile(keras.optimizers.RMSprop(1e-3), "sparse_categorical_crossentropy",
                  steps_per_execution=steps)
    ds = batches(size, batch)
    model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)  # warm-up: trace and compile
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        model.fit(ds, steps_per_epoch=steps, epochs=1, verbose=0)
        rates.append(steps * batch / (time.perf_counter() - t))
    return summary(rates)


def ours(size, batch, steps, repeats, recipe: bool, recompute: bool = False):
    from efficientnet_tf import config as cfglib
    from efficientnet_tf.train.loop import Trainer

    overrides = [f"data.image_size={size}", f"train_batch_size={batch}", f"eval_batch_size={batch}",
                 f"steps_per_execution={steps}", f"train_steps={(1 + repeats) * steps}",
                 "checkpoint_every_steps=1000000", "precision=float32", "data.synthetic=true",
                 f"model.recompute={'blocks' if recompute else 'none'}"]
    if not recipe:
        overrides += ["optimizer.ema_decay=0", "optimizer.weight_decay=0",
                      "optimizer.label_smoothing=0"]
    config = cfglib.apply_overrides(cfglib.load_config("efficientnet-b0"), overrides)
    with tempfile.TemporaryDirectory() as model_dir:
        trainer = Trainer(config, model_dir, train_dataset_fn=lambda ctx: batches(size, batch),
                          num_train_examples=batch * 1000, log=lambda *_: None)
        trainer.train()
        with open(os.path.join(model_dir, "history.jsonl")) as f:
            records = [json.loads(line) for line in f]
    return summary([r["images_per_s"] for r in records[1:]])  # the first execution traces


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=3, help="timed executions per variant")
    p.add_argument("--cases", default="32x256,224x32")
    p.add_argument("--variants", default="keras_fit,ours_plain,ours_recipe",
                   help="comma-separated: keras_fit, ours_plain, ours_recipe, ours_recompute")
    args = p.parse_args()
    out = {"cpus": os.cpu_count(), "tensorflow": tf.__version__, "steps": args.steps,
           "repeats": args.repeats, "images_per_s": "median (min, max) of the repeats",
           "cases": {}}
    for case in args.cases.split(","):
        size, batch = (int(v) for v in case.split("x"))
        steps = args.steps
        run = {"keras_fit": lambda: keras_fit(size, batch, steps, args.repeats),
               "ours_plain": lambda: ours(size, batch, steps, args.repeats, recipe=False),
               "ours_recipe": lambda: ours(size, batch, steps, args.repeats, recipe=True),
               "ours_recompute": lambda: ours(size, batch, steps, args.repeats, recipe=True,
                                              recompute=True)}
        r = {"steps_per_execution": steps}
        for name in args.variants.split(","):
            if name not in run:
                p.error(f"unknown variant {name!r}; choose from {', '.join(run)}")
            r[name] = run[name]()
        med = {k: r[k]["median"] for k in run if k in r}
        for a, b in [("ours_recipe", "keras_fit"), ("ours_recipe", "ours_plain"),
                     ("ours_recompute", "ours_recipe")]:
            if a in med and b in med:
                r[f"{a.replace('ours_', '')}_cost_vs_{b}"] = round(1 - med[a] / med[b], 3)
        out["cases"][case] = r
        keras.backend.clear_session()
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
