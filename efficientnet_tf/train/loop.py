"""The training loop: a custom tf.function loop under any tf.distribute strategy.

Why a custom loop and not model.fit: the recipe needs an EMA that also averages BN statistics
and is swapped in for evaluation and export, TF1-semantics RMSProp, L2 that skips BN, and exact
resume from a step; all of that is a few lines here and would be callbacks fighting fit() there.
Each call of the compiled `train_loop` runs `steps_per_execution` steps on the device (the TPU
reference's iterations_per_loop), so the host is out of the inner loop.
"""
from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import time

import keras
import numpy as np
import tensorflow as tf

from efficientnet_tf.train import optim
from efficientnet_tf.train.strategy import per_replica_batch_size


def build_model(config, num_replicas: int = 1) -> keras.Model:
    """The model described by config.model (logits output, float32); num_replicas sizes the
    cross-replica BN groups (inference does not depend on them)."""
    from efficientnet_tf.model import EfficientNet
    from efficientnet_tf.spec import get_variant

    m = config.model
    size = config.data.image_size
    if m.phi is not None:
        kw = dict(phi=m.phi)
    elif m.width_coefficient is not None:
        kw = dict(width_coefficient=m.width_coefficient, depth_coefficient=m.depth_coefficient)
    else:
        v = get_variant(m.model_name)
        kw = dict(width_coefficient=v.width_coefficient, depth_coefficient=v.depth_coefficient)
    return EfficientNet(
        **kw, default_size=size, dropout_rate=m.dropout_rate,
        drop_connect_rate=m.drop_connect_rate, stem_strides=m.stem_strides,
        bn_momentum=m.bn_momentum, bn_epsilon=m.bn_epsilon, synchronized_bn=m.synchronized_bn,
        bn_group_size=None if m.synchronized_bn else m.resolved_bn_group_size(num_replicas),
        input_shape=(size, size, 3),
        classes=m.num_classes, classifier_activation=None,
        name=m.model_name.replace("-", "") if m.model_name else None)


class Trainer:
    """Owns the strategy, model, optimizer, EMA, checkpoints and summaries of one model_dir."""

    def __init__(self, config, model_dir: str, strategy: tf.distribute.Strategy | None = None,
                 jit_compile: bool = False, log=print, train_dataset_fn=None,
                 num_train_examples: int | None = None):
        """train_dataset_fn(input_context) -> per-replica batches replaces the TFRecord
        pipeline (tests, custom data); then give num_train_examples too."""
        self.config = config
        self._custom_dataset_fn = train_dataset_fn
        self.model_dir = model_dir
        self.strategy = strategy or tf.distribute.get_strategy()
        self.log = log
        self.jit_compile = jit_compile
        os.makedirs(model_dir, exist_ok=True)
        self.global_batch = config.train_batch_size
        self.per_replica = per_replica_batch_size(self.global_batch, self.strategy)
        per_replica_batch_size(config.eval_batch_size, self.strategy)
        if config.use_bfloat16:
            keras.mixed_precision.set_global_policy("mixed_bfloat16")
        self.data_config = config.data.to_data_config()
        if config.seed is not None:
            keras.utils.set_random_seed(config.seed)
        n_train = num_train_examples or self._num_train_examples()
        self.steps_per_epoch = max(1, n_train // self.global_batch)
        # The reference's warm-up and decay boundaries use the unfloored steps per epoch.
        self._exact_steps_per_epoch = max(1.0, n_train / self.global_batch)
        self.total_steps = (config.train_steps if config.train_steps
                            else int(math.ceil(config.epochs * self.steps_per_epoch)))
        with self.strategy.scope():
            self.model = build_model(config, self.strategy.num_replicas_in_sync)
            o = config.optimizer
            self.lr_schedule = optim.learning_rate_schedule(
                o.lr, self.global_batch, self._exact_steps_per_epoch, warmup_epochs=o.warmup_epochs,
                decay_epochs=o.decay_epochs, decay_rate=o.decay_rate, kind=o.schedule,
                total_steps=self.total_steps)
            self.optimizer = optim.make_optimizer(o, self.lr_schedule)
            self.optimizer.build(self.model.trainable_variables)
            self.ema = optim.ExponentialMovingAverage(self.model, o.ema_decay) if o.ema_decay else None
        # Keras keeps the dropout / drop-connect RNG states outside model.weights: checkpoint
        # them too, so a resumed run draws the same masks as an uninterrupted one.
        rng = [layer.seed_generator.state for layer in self.model.layers
               if getattr(layer, "seed_generator", None) is not None]
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              rng=rng, **({"ema": self.ema} if self.ema else {}))
        # Multi-worker: every worker must take part in a save, but only the chief's survives.
        self.is_chief = _is_chief(self.strategy)
        ckpt_dir = model_dir if self.is_chief else os.path.join(
            model_dir, f".worker-{self.strategy.cluster_resolver.task_id}")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, ckpt_dir, max_to_keep=config.keep_checkpoints if self.is_chief else 1,
            step_counter=self.optimizer.iterations)
        self._train_loop = None
        self._eval_step = None

    # ---------------------------------------------------------------- data
    def _num_train_examples(self) -> int:
        from efficientnet_tf.data import pipeline

        return pipeline.count_examples(self.data_config, "train")

    def _train_dataset(self, start_step: int):
        from efficientnet_tf.data import pipeline

        dc = self.data_config

        if self.config.resume_data == "reseed" and start_step:
            import dataclasses

            # A new shuffle order, not a replay: costs nothing, but not bit-exact.
            dc = dataclasses.replace(dc, seed=(dc.seed or 0) + start_step)

        def train_dataset_fn(ctx):
            if self._custom_dataset_fn is not None:
                ds = self._custom_dataset_fn(ctx)
            else:
                ds = pipeline.build_dataset(dc, "train", self.global_batch, input_context=ctx)
            if start_step and self.config.resume_data == "skip":
                # Exact resume: replay the deterministic stream up to where we stopped.
                ds = ds.skip(start_step * ctx.num_replicas_in_sync // ctx.num_input_pipelines)
            return ds

        return self.strategy.distribute_datasets_from_function(train_dataset_fn)

    def _eval_dataset(self):
        from efficientnet_tf.data import pipeline

        per_replica = self.config.eval_batch_size // self.strategy.num_replicas_in_sync
        pad = functools.partial(_pad_batch, size=per_replica, image_size=self.data_config.image_size)

        def eval_dataset_fn(ctx):
            ds = pipeline.build_dataset(self.data_config, "validation", self.config.eval_batch_size,
                                        input_context=ctx, repeat=False)
            return ds.map(pad)

        return self.strategy.distribute_datasets_from_function(eval_dataset_fn)

    # ---------------------------------------------------------------- steps
    def _replica_train_step(self, images, labels):
        o = self.config.optimizer
        with tf.GradientTape() as tape:
            logits = self.model(images, training=True)
            ce = optim.classification_loss(labels, logits, self.config.model.num_classes,
                                           o.label_smoothing)
            loss = tf.reduce_sum(ce) / self.global_batch
            if o.weight_decay:
                loss += optim.l2_regularization_loss(self.model, o.weight_decay) / (
                    self.strategy.num_replicas_in_sync)
        grads = tape.gradient(loss, self.model.trainable_variables)
        self.optimizer.apply_gradients(zip(grads, self.model.trainable_variables))
        if self.ema is not None:
            self.ema.update(self.optimizer.iterations)
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                                 tf.cast(labels, tf.int32)), tf.float32))
        return tf.reduce_sum(ce), correct

    def _make_train_loop(self):
        step_fn = tf.function(self._replica_train_step, jit_compile=self.jit_compile)

        @tf.function
        def train_loop(iterator, steps):
            total_ce = tf.constant(0.0)
            total_correct = tf.constant(0.0)
            for _ in tf.range(steps):
                ce, correct = self.strategy.run(step_fn, args=next(iterator))
                total_ce += self.strategy.reduce("SUM", ce, axis=None)
                total_correct += self.strategy.reduce("SUM", correct, axis=None)
            return total_ce, total_correct

        return train_loop

    def _replica_eval_step(self, images, labels):
        logits = tf.cast(self.model(images, training=False), tf.float32)
        valid = labels >= 0
        safe = tf.where(valid, tf.cast(labels, tf.int32), 0)
        ce = optim.classification_loss(safe, logits, self.config.model.num_classes, 0.0)
        mask = tf.cast(valid, tf.float32)
        top1 = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), safe), tf.float32)
        k = min(5, self.config.model.num_classes)
        top5 = tf.cast(tf.nn.in_top_k(safe, logits, k), tf.float32)
        return (tf.reduce_sum(ce * mask), tf.reduce_sum(top1 * mask), tf.reduce_sum(top5 * mask),
                tf.reduce_sum(mask))

    # ---------------------------------------------------------------- public
    def _bn_description(self) -> str:
        n = self.strategy.num_replicas_in_sync
        k = self.config.model.resolved_bn_group_size(n)
        if k == 1:
            return "BN statistics per replica"
        return f"BN statistics over {'all' if k == n else f'groups of {k}'} replicas"

    def ema_weights(self):
        """Context in which the model holds the EMA weights (no-op without EMA)."""
        return self.ema.swapped(self.model) if self.ema is not None else contextlib.nullcontext()

    def restore(self) -> int:
        """Restores the latest checkpoint in model_dir (if any); returns its step."""
        latest = tf.train.latest_checkpoint(self.model_dir)
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            self.log(f"Restored {latest} (step {int(self.optimizer.iterations.numpy())}).")
        return int(self.optimizer.iterations.numpy())

    def train(self, total_steps: int | None = None, eval_every_steps: int | None = None) -> dict:
        cfg = self.config
        total_steps = total_steps or self.total_steps
        step = self.restore()
        if step >= total_steps:
            self.log(f"Already trained {step} >= {total_steps} steps.")
            return {"step": step}
        iterator = iter(self._train_dataset(step))
        if self._train_loop is None:
            self._train_loop = self._make_train_loop()
        writer = (tf.summary.create_file_writer(os.path.join(self.model_dir, "train"))
                  if self.is_chief else tf.summary.create_noop_writer())
        history_path = os.path.join(self.model_dir, "history.jsonl") if self.is_chief else None
        spe = max(1, cfg.steps_per_execution)
        ckpt_every = cfg.checkpoint_every_steps or self.steps_per_epoch
        last_ckpt = step
        start_step, t_start = step, time.perf_counter()
        self.log(f"Training {self.model.name}: steps {step} -> {total_steps} "
                 f"({self.steps_per_epoch} per epoch), global batch {self.global_batch} on "
                 f"{self.strategy.num_replicas_in_sync} replica(s); {self._bn_description()}.")
        while step < total_steps:
            n = min(spe, total_steps - step)
            t0 = time.perf_counter()
            ce, correct = self._train_loop(iterator, tf.constant(n))
            ce, correct = float(ce), float(correct)
            dt = time.perf_counter() - t0
            step = int(self.optimizer.iterations.numpy())
            images = n * self.global_batch
            rec = {"step": step, "epoch": round(step / self.steps_per_epoch, 3),
                   "loss": ce / images, "accuracy": correct / images,
                   "lr": float(self.lr_schedule(step)), "images_per_s": images / dt}
            if not math.isfinite(rec["loss"]):
                raise FloatingPointError(f"Loss is {rec['loss']} at step {step}: lower the "
                                         "learning rate or check the input data.")
            with writer.as_default(step=step):
                for key in ("loss", "accuracy", "lr", "images_per_s"):
                    tf.summary.scalar(f"train/{key}", rec[key])
            if step - last_ckpt >= ckpt_every or step >= total_steps:
                self.manager.save(checkpoint_number=step)
                last_ckpt = step
            if eval_every_steps and (step % eval_every_steps < n or step >= total_steps):
                rec["eval"] = self.evaluate()
                with writer.as_default(step=step):
                    for key, value in rec["eval"].items():
                        tf.summary.scalar(f"eval/{key}", value)
            self._progress(rec, start_step, total_steps, t_start)
            if history_path:
                _append_jsonl(history_path, rec)
        writer.flush()
        return {"step": step}

    def _progress(self, rec, start_step, total_steps, t_start):
        done = rec["step"] - start_step
        elapsed = time.perf_counter() - t_start
        eta = elapsed / max(done, 1) * (total_steps - rec["step"])
        line = (f"step {rec['step']}/{total_steps} epoch {rec['epoch']:.2f} loss {rec['loss']:.4f} "
                f"acc {rec['accuracy']:.4f} lr {rec['lr']:.5f} {rec['images_per_s']:.0f} img/s "
                f"eta {eta / 60:.1f} min")
        if "eval" in rec:
            line += f" | eval top1 {rec['eval']['top1']:.4f} (ema={rec['eval']['ema']})"
        self.log(line)

    def evaluate(self, use_ema: bool = True) -> dict:
        """Top-1/top-5/loss on the validation split (EMA weights when available)."""
        if self._eval_step is None:
            step_fn = tf.function(self._replica_eval_step)

            @tf.function
            def eval_step(batch):
                out = self.strategy.run(step_fn, args=batch)
                return [self.strategy.reduce("SUM", v, axis=None) for v in out]

            self._eval_step = eval_step
        use_ema = bool(use_ema and self.ema is not None)
        totals = np.zeros(4)
        with self.ema_weights() if use_ema else contextlib.nullcontext():
            for batch in self._eval_dataset():
                totals += np.array([float(v) for v in self._eval_step(batch)])
        n = max(totals[3], 1.0)
        return {"loss": totals[0] / n, "top1": totals[1] / n, "top5": totals[2] / n,
                "examples": int(totals[3]), "ema": use_ema}


def _pad_batch(images, labels, size, image_size):
    """Pads a short last batch to `size` rows (static shapes for TPU); padded labels are -1."""
    n = size - tf.shape(labels)[0]
    images = tf.pad(images, [[0, n], [0, 0], [0, 0], [0, 0]])
    labels = tf.pad(labels, [[0, n]], constant_values=-1)
    return (tf.ensure_shape(images, [size, image_size, image_size, 3]),
            tf.ensure_shape(labels, [size]))


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief


def _append_jsonl(path, record):
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")
