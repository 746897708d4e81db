"""A tiny, deterministic training run, driven by the tests in subprocesses.

    python tests/train_worker.py MODEL_DIR STEPS STRATEGY [--cpus N] [--ckpt_every K] [--log]
        [--slow_save S] [--then_overflow N]

Writes MODEL_DIR/result.json: per-step losses (from history.jsonl), the final step, and the
final weights (as lists) so runs can be compared. Data: fixed random images from a seed,
split per replica so every strategy sees the same global batches.
"""
import argparse
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

GLOBAL_BATCH = 8
SIZE = 32


def dataset_fn_for(x, y, batch=GLOBAL_BATCH):
    def fn(ctx):
        replicas = ctx.num_replicas_in_sync
        per = batch // replicas
        mine = replicas // ctx.num_input_pipelines
        first = ctx.input_pipeline_id * mine
        ds = tf.data.Dataset.from_tensor_slices((x, y)).repeat().batch(batch, drop_remainder=True)

        def split(images, labels):  # this pipeline's replicas' slices of the global batch
            images = tf.reshape(images, [replicas, per, SIZE, SIZE, 3])[first:first + mine]
            labels = tf.reshape(labels, [replicas, per])[first:first + mine]
            return tf.data.Dataset.from_tensor_slices((images, labels))

        return ds.flat_map(split)

    return fn


def slow_saves(model_dir, seconds):
    import time

    record = tf.train.CheckpointManager._record_state

    def slow_record(manager):
        latest = manager.latest_checkpoint
        if latest and getattr(manager, "_slowed", None) != latest:
            manager._slowed = latest  # once per save (it records twice)
            with open(os.path.join(model_dir, "saving"), "a") as f:
                f.write(latest + "\n")
            time.sleep(seconds)
        record(manager)

    tf.train.CheckpointManager._record_state = slow_record


def main():
    p = argparse.ArgumentParser()
    p.add_argument("model_dir")
    p.add_argument("steps", type=int)
    p.add_argument("strategy")
    p.add_argument("--cpus", type=int, default=1)
    p.add_argument("--ckpt_every", type=int, default=2)
    p.add_argument("--sync_bn", action="store_true")
    p.add_argument("--bn_group", type=int, default=None, help="model.bn_group_size")
    p.add_argument("--drop", type=float, default=0.0)
    p.add_argument("--log", action="store_true", help="print the trainer's log lines")
    p.add_argument("--override", action="append", default=[], help="more config overrides")
    p.add_argument("--slow_save", type=float, default=0.0,
                   help="widen each checkpoint save: after its files are written and before the "
                        "'checkpoint' state file names it, write MODEL_DIR/saving (the "
                        "checkpoint's path) and sleep this long, so a kill can land inside")
    p.add_argument("--then_overflow", type=int, default=0,
                   help="float16: after the run, set the loss scale to 2^24 (an overflow) and "
                        "train N more steps with the same compiled step; its outcome goes to "
                        "result.json's 'overflow'")
    a = p.parse_args()
    if a.slow_save:
        slow_saves(a.model_dir, a.slow_save)
    if a.cpus > 1:
        cpu = tf.config.list_physical_devices("CPU")[0]
        tf.config.set_logical_device_configuration(
            cpu, [tf.config.LogicalDeviceConfiguration()] * a.cpus)

    from efficientnet_tf import config as cfglib
    from efficientnet_tf.train.loop import Trainer
    from efficientnet_tf.train.strategy import make_strategy

    config = cfglib.apply_overrides(cfglib.load_config("fashion_mnist"), [
        "model.width_coefficient=0.1", "model.depth_coefficient=0.1",
        f"model.dropout_rate={a.drop}", f"model.drop_connect_rate={a.drop}",
        f"model.synchronized_bn={str(a.sync_bn).lower()}",
        f"model.bn_group_size={a.bn_group if a.bn_group else 'none'}",
        f"data.image_size={SIZE}", "data.synthetic=true", f"train_batch_size={GLOBAL_BATCH}",
        "eval_batch_size=8", "steps_per_execution=1", f"checkpoint_every_steps={a.ckpt_every}",
        "seed=7", "resume_data=skip", "optimizer.warmup_epochs=0.5", "optimizer.ema_decay=0.9",
        f"train_steps={a.steps}", "keep_checkpoints=100", *a.override,
    ])
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (64, SIZE, SIZE, 3)).astype("float32")
    y = (x.mean(axis=(1, 2, 3)) > 127.5).astype("int32") + 2 * (x[:, :16].mean(axis=(1, 2, 3)) > 127.5)
    strategy = make_strategy(a.strategy)
    micro_batch = GLOBAL_BATCH // config.accumulate_steps
    trainer = Trainer(config, a.model_dir, strategy,
                      train_dataset_fn=dataset_fn_for(x, y, micro_batch),
                      num_train_examples=64, log=print if a.log else (lambda *_: None))
    if trainer.train().get("preempted"):
        sys.stdout.flush()
        return 143  # SIGTERM: checkpoint saved, as the training CLI exits
    if trainer.is_chief:
        with open(os.path.join(a.model_dir, "history.jsonl")) as f:
            losses = [json.loads(line)["loss"] for line in f]
        weights = [w.numpy().tolist() for w in trainer.model.weights]
        ema = [s.read_value().numpy().tolist() for s in trainer.ema.shadows]
        out = {"losses": losses, "step": int(trainer.optimizer.iterations.numpy()),
               "weights": weights, "ema": ema}
        if trainer.loss_scale is not None:
            out["loss_scale"] = float(trainer.loss_scale.scale.numpy())
            out["skipped_steps"] = int(trainer.loss_scale.skipped.numpy())
        tmp = os.path.join(a.model_dir, "result.json.tmp")
        with open(tmp, "w") as f:
            json.dump(out, f)
        os.replace(tmp, os.path.join(a.model_dir, "result.json"))
    if a.then_overflow:
        trainer.loss_scale.scale.assign(2.0 ** 24)
        trainer.manager.save(checkpoint_number=a.steps)  # train() restores the latest first
        before = int(trainer.loss_scale.skipped.numpy())
        trainer.train(total_steps=a.steps + a.then_overflow)
        if trainer.is_chief:
            with open(os.path.join(a.model_dir, "history.jsonl")) as f:
                records = [json.loads(line) for line in f][len(out["losses"]):]
            out["overflow"] = {
                "step": int(trainer.optimizer.iterations.numpy()),
                "skipped_steps": int(trainer.loss_scale.skipped.numpy()) - before,
                "loss_scale": float(trainer.loss_scale.scale.numpy()),
                "losses": [r["loss"] for r in records],
                "finite": all(bool(np.isfinite(w.numpy()).all()) for w in trainer.model.weights)}
            with open(tmp, "w") as f:
                json.dump(out, f)
            os.replace(tmp, os.path.join(a.model_dir, "result.json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
