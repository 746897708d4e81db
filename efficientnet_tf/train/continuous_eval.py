"""Continuous evaluation of new checkpoints, the best checkpoint, and the training-curve PNG."""
from __future__ import annotations

import io
import json
import math
import os

import tensorflow as tf

from efficientnet_tf import fileio
from efficientnet_tf.rundir import RunDir


def continuous_eval(trainer, timeout: float = 3600, min_interval_secs: float = 0) -> dict | None:
    """Evaluates every new checkpoint in trainer.model_dir until training ends or timeout.

    Results go to model_dir/eval/results.jsonl; the best top-1 checkpoint is copied to
    model_dir/best/ and described in model_dir/best/best.json. Returns the best record.
    """
    model_dir, rundir = trainer.model_dir, trainer.rundir
    best = fileio.read_json(os.path.join(rundir.best_dir, "best.json"))
    results_path = rundir.eval_results_path
    tf.io.gfile.makedirs(os.path.dirname(results_path))
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
        fileio.append_line(results_path, json.dumps(result))
        trainer.log(f"eval step {step}: top-1 {result['top1']:.4f} top-5 {result['top5']:.4f} "
                    f"on {result['examples']} images ({result['skipped']} undecodable skipped)")
        if best is None or result["top1"] > best["top1"]:
            best = _save_best(rundir.best_dir, path, result)
        if step >= trainer.total_steps:
            break
    return best


def _save_best(best_dir, path, result):
    """Copies checkpoint `path` into model_dir/best/ and points best/best.json at it.

    No directory is renamed (object stores cannot do it atomically): the new checkpoint's files
    are copied in first, best.json is replaced atomically (fileio.write_file) last, then the
    previous best's files are deleted. A crash at any point leaves best.json naming a complete
    checkpoint; leftovers of an interrupted copy are deleted by the next save.
    """
    tf.io.gfile.makedirs(best_dir)
    src_dir, prefix = os.path.dirname(path) or ".", os.path.basename(path)
    for name in tf.io.gfile.listdir(src_dir):
        if name.startswith(prefix + "."):
            tf.io.gfile.copy(os.path.join(src_dir, name), os.path.join(best_dir, name),
                             overwrite=True)
    record = {**result, "checkpoint": os.path.join(best_dir, prefix)}
    fileio.write_file(os.path.join(best_dir, "best.json"), json.dumps(record, indent=2))
    for name in tf.io.gfile.listdir(best_dir):
        if name != "best.json" and not name.startswith(prefix + "."):
            tf.io.gfile.remove(os.path.join(best_dir, name))
    return record


def plot_history(model_dir: str, out_name: str = "training_curves.png") -> str | None:
    """Plots loss, accuracy and lr from model_dir/history.jsonl into a PNG; returns its path."""
    rundir = RunDir(model_dir)
    recs = fileio.read_jsonl(rundir.history_path)
    if not recs:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = [r["epoch"] for r in recs]
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    def train(key):  # None: a float16 call whose every step was skipped
        return [math.nan if r.get(key) is None else r[key] for r in recs]

    axes[0].plot(epochs, train("loss"), label="train")
    axes[0].set_title("loss (cross-entropy)")
    axes[1].plot(epochs, train("accuracy"), label="train")
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
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    plt.close(fig)
    return fileio.write_file(rundir.join(out_name), buf.getvalue())
