"""Peak memory of one training step, with and without gradient checkpointing (model.recompute).

    .venv/bin/python bench/memory.py [--variant b4] [--image_size 380] [--batches 2,4]
        [--modes none,blocks] [--budget_gb 16] [--out memory.json]

Each (mode, batch) runs in its own process (a fresh allocator, so peaks do not mix): it builds
the variant at image_size with RMSpropTF1 and the EMA (the recipe's state), notes its resident
set, then runs training steps (forward, loss, gradients, update) on random images and notes
the process's peak resident set (getrusage ru_maxrss). On a CPU the peak RSS is an honest proxy
for what a GPU would need; an accelerator's allocator, kernels and XLA fusions move the numbers
(they measure the same thing, not the same bytes).

From two batch sizes: memory per image (the slope) and the fixed part (the intercept), and the
largest batch that fits in --budget_gb: (budget - fixed) / per image.
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def _rss_gb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 30


def _peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB on Linux


def child(variant, image_size, batch, mode, steps):
    import tensorflow as tf

    from efficientnet_tf import recompute
    from efficientnet_tf.config import ModelConfig
    from efficientnet_tf.ema import ExponentialMovingAverage
    from efficientnet_tf.factory import build_model
    from efficientnet_tf.train import optim

    model = build_model(ModelConfig(model_name=f"efficientnet-{variant}"), image_size, 1000)
    optimizer = optim.RMSpropTF1(1e-4)
    optimizer.build(model.trainable_variables)
    ema = ExponentialMovingAverage(model, 0.9999)
    images = tf.random.uniform((batch, image_size, image_size, 3), 0, 255, seed=1)
    labels = tf.random.uniform((batch,), 0, 1000, tf.int32, seed=2)
    built = _rss_gb()

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            logits = (recompute.call(model, images) if mode == "blocks"
                      else model(images, training=True))
            loss = tf.reduce_mean(optim.classification_loss(labels, logits, 1000, 0.1))
        grads = tape.gradient(loss, model.trainable_variables)
        optimizer.apply_gradients(zip(grads, model.trainable_variables))
        ema.update(optimizer.iterations)
        return loss

    step()  # traces
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        step().numpy()
        times.append(time.perf_counter() - t)
    return {"variant": variant, "image_size": image_size, "batch": batch, "mode": mode,
            "params": model.count_params(), "built_gb": round(built, 3),
            "peak_gb": round(_peak_gb(), 3), "step_s": round(statistics.median(times), 2)}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--variant", default="b4", help="a registered variant: b0..b8, l2, lite0..4")
    p.add_argument("--image_size", type=int, default=380)
    p.add_argument("--batches", default="2,4", help="comma-separated batch sizes (two or more "
                   "for the per-image fit)")
    p.add_argument("--modes", default="none,blocks", help="comma-separated model.recompute "
                   "values: none, blocks")
    p.add_argument("--steps", type=int, default=2, help="timed steps after the traced one")
    p.add_argument("--budget_gb", type=float, default=16.0, help="the memory for the largest "
                   "batch estimate")
    p.add_argument("--out", default=None, help="also write the JSON here")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    a = p.parse_args()
    batches = [int(b) for b in a.batches.split(",")]
    if a.child:
        print(json.dumps(child(a.variant, a.image_size, batches[0], a.modes, a.steps)))
        return
    rows = []
    for mode in a.modes.split(","):
        for batch in batches:
            cmd = [sys.executable, __file__, "--child", f"--variant={a.variant}",
                   f"--image_size={a.image_size}", f"--batches={batch}", f"--modes={mode}",
                   f"--steps={a.steps}"]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode:
                rows.append({"mode": mode, "batch": batch,
                             "error": proc.stderr.strip().splitlines()[-1:]})
            else:
                rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
            print(json.dumps(rows[-1]), flush=True)
    out = {"cpus": os.cpu_count(), "rows": rows, "fits": {}}
    for mode in a.modes.split(","):
        ok = sorted((r["batch"], r["peak_gb"]) for r in rows if r.get("mode") == mode
                    and "peak_gb" in r)
        if len(ok) >= 2:
            (b1, m1), (b2, m2) = ok[0], ok[-1]
            per_image = (m2 - m1) / (b2 - b1)
            fixed = m1 - per_image * b1
            if per_image < 0.05:  # GB: within the noise of the fixed part
                out["fits"][mode] = {"gb_per_image": round(per_image, 3), "note": (
                    "too small to fit at these sizes; use larger images or batches")}
                continue
            out["fits"][mode] = {"gb_per_image": round(per_image, 3), "fixed_gb": round(fixed, 3),
                                 f"max_batch_in_{a.budget_gb:g}_gb":
                                     int((a.budget_gb - fixed) // per_image)}
    text = json.dumps(out, indent=2)
    print(text)
    if a.out:
        with open(a.out + ".tmp", "w") as f:
            f.write(text)
        os.replace(a.out + ".tmp", a.out)


if __name__ == "__main__":
    main()
