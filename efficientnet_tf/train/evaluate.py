"""Continuous evaluation of new checkpoints, the best checkpoint, and the training-curve PNG."""
from __future__ import annotations

import json
import os
import shutil

import tensorflow as tf


def continuous_eval(trainer, timeout: float = 3600, min_interval_secs: float = 0) -> dict | None:
    """Evaluates every new checkpoint in trainer.model_dir until training ends or timeout.

    Results go to model_dir/eval/results.jsonl; the best top-1 checkpoint is copied to
    model_dir/best/ and described in model_dir/best/best.json. Returns the best record.
    """
    model_dir = trainer.model_dir
    best = _read_json(os.path.join(model_dir, "best", "best.json"))
    results_path = os.path.join(model_dir, "eval", "results.jsonl")
    os.makedirs(os.path.dirname(results_path), exist_ok=True)
    for path in tf.train.checkpoints_iterator(model_dir, min_interval_secs=min_interval_secs,
                                              timeout=timeout):
        try:
            trainer.checkpoint.restore(path).expect_partial()
        except (tf.errors.NotFoundError, tf.errors.DataLossError) as e:
            # The trainer's keep-last-K may delete it before we read it: skip, do not die.
            trainer.log(f"Skipping {path}: {e.__class__.__name__}")
            continue
        step = int(trainer.optimizer.iterations.numpy())
        result = {"checkpoint": path, "step": step, **trainer.evaluate()}
        with open(results_path, "a") as f:
            f.write(json.dumps(result) + "\n")
        trainer.log(f"eval step {step}: top-1 {result['top1']:.4f} top-5 {result['top5']:.4f}")
        if best is None or result["top1"] > best["top1"]:
            best = _save_best(model_dir, path, result)
        if step >= trainer.total_steps:
            break
    return best


def _save_best(model_dir, path, result):
    best_dir = os.path.join(model_dir, "best")
    tmp = best_dir + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    prefix = os.path.basename(path)
    for name in tf.io.gfile.listdir(os.path.dirname(path) or "."):
        if name.startswith(prefix + "."):
            tf.io.gfile.copy(os.path.join(os.path.dirname(path), name), os.path.join(tmp, name))
    record = {**result, "checkpoint": os.path.join(best_dir, prefix)}
    with open(os.path.join(tmp, "best.json"), "w") as f:
        json.dump(record, f, indent=2)
    # Swap in the new best with renames so a crash leaves either the old or the new one.
    old = best_dir + ".old"
    shutil.rmtree(old, ignore_errors=True)
    if os.path.exists(best_dir):
        os.rename(best_dir, old)
    os.rename(tmp, best_dir)
    shutil.rmtree(old, ignore_errors=True)
    return record


def _read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def plot_history(model_dir: str, out_name: str = "training_curves.png") -> str | None:
    """Plots loss, accuracy and lr from model_dir/history.jsonl into a PNG; returns its path."""
    path = os.path.join(model_dir, "history.jsonl")
    if not os.path.exists(path):
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with open(path) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    if not recs:
        return None
    epochs = [r["epoch"] for r in recs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    axes[0].plot(epochs, [r["loss"] for r in recs], label="train")
    axes[0].set_title("loss (cross-entropy)")
    axes[1].plot(epochs, [r["accuracy"] for r in recs], label="train")
    ev = [(r["epoch"], r["eval"]) for r in recs if "eval" in r]
    if ev:
        axes[0].plot([e for e, _ in ev], [v["loss"] for _, v in ev], "o-", label="eval")
        axes[1].plot([e for e, _ in ev], [v["top1"] for _, v in ev], "o-", label="eval top-1")
    axes[1].set_title("accuracy")
    axes[2].plot(epochs, [r["lr"] for r in recs])
    axes[2].set_title("learning rate")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend()
    axes[1].legend()
    fig.tight_layout()
    out = os.path.join(model_dir, out_name)
    tmp = out + ".tmp.png"
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    os.replace(tmp, out)
    return out
