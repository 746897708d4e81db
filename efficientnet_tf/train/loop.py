"""The training loop: a custom tf.function loop under any tf.distribute strategy.

The loop owns the strategy, the compiled steps, the EMA, checkpoints, summaries and the eval
cadence; the task (task.py) owns the model, inputs, loss and metrics.

Why a custom loop and not model.fit: the recipe needs an EMA that also averages BN statistics
and is swapped in for evaluation and export, TF1-semantics RMSProp, L2 that skips BN, and exact
resume from a step; all of that is a few lines here and would be callbacks fighting fit() there.
Each call of the compiled `train_loop` runs `steps_per_execution` steps on the device (the TPU
reference's iterations_per_loop), so the host is out of the inner loop.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import time

import tensorflow as tf

from efficientnet_tf import fileio
from efficientnet_tf.rundir import RunDir
from efficientnet_tf.ema import ExponentialMovingAverage
from efficientnet_tf.train import preemption
from efficientnet_tf.train.loss_scale import DynamicLossScale
from efficientnet_tf.train.strategy import per_replica_batch_size
from efficientnet_tf.train.evaluation import EvalPass
from efficientnet_tf.train.task import Task, task_for


class Trainer:
    """The loop around a task: strategy, compiled steps, EMA, checkpoints, summaries, eval cadence.

    Trainer(config, model_dir) trains the task config asks for (task.task_for: classification,
    or fine-tuning); pass task= for another (a task.Task). train_dataset_fn /
    num_train_examples go to the default task (see ClassificationTask).
    """

    def __init__(self, config, model_dir: str, strategy: tf.distribute.Strategy | None = None,
                 jit_compile: bool = False, log=print, train_dataset_fn=None,
                 num_train_examples: int | None = None, task=None, rundir=None):
        self.config = config
        self.task: Task = task or task_for(config, train_dataset_fn, num_train_examples)
        self.model_dir = model_dir
        self.rundir = rundir or RunDir(model_dir)
        self.strategy = strategy or tf.distribute.get_strategy()
        self.log = log
        self.jit_compile = jit_compile
        self.global_batch = config.train_batch_size  # per optimizer step
        # Gradient accumulation: each optimizer step sums the gradients of k micro-batches.
        self.accumulate_steps = k = config.accumulate_steps
        self.micro_batch = self.global_batch // k
        self.per_replica = per_replica_batch_size(
            self.micro_batch, self.strategy,
            "global batch size" if k == 1 else "micro-batch (train_batch_size / accumulate_steps)")
        per_replica_batch_size(config.eval_batch_size, self.strategy)
        tf.io.gfile.makedirs(model_dir)  # after the checks above: a refused run writes nothing
        self.num_train_examples = n_train = self.task.num_train_examples()
        self.steps_per_epoch = max(1, n_train // self.global_batch)
        # The reference's warm-up and decay boundaries use the unfloored steps per epoch.
        self._exact_steps_per_epoch = max(1.0, n_train / self.global_batch)
        self.total_steps = (config.train_steps if config.train_steps
                            else int(math.ceil(config.epochs * self.steps_per_epoch)))
        with self.strategy.scope():
            self.model = self.task.build_model(self.strategy.num_replicas_in_sync)
            # Fine-tuning's source weights: loaded once, into a fresh run only (a restart
            # resumes from its own checkpoint), before the EMA copies the weights.
            fresh = not tf.train.latest_checkpoint(model_dir)
            self.init_report = self.task.initialize(self.model, self.log) if fresh else None
            self.optimizer, self.lr_schedule = self.task.create_optimizer(
                self.global_batch, self._exact_steps_per_epoch, self.total_steps)
            self.optimizer.build(self.model.trainable_variables)
            decay = config.optimizer.ema_decay
            self.ema = ExponentialMovingAverage(self.model, decay) if decay else None
            self.loss_scale = (DynamicLossScale(config.loss_scale_initial)
                               if config.precision == "float16" else None)
            # Summed micro-batch gradients, each replica its own (summed on read).
            self._accumulated = {id(v): tf.Variable(
                tf.zeros(v.shape, v.dtype), trainable=False, name="accumulated_grad",
                synchronization=tf.VariableSynchronization.ON_READ,
                aggregation=tf.VariableAggregation.SUM)
                for v in self.model.trainable_variables} if k > 1 else None
        # Keras keeps the dropout / drop-connect RNG states outside model.weights: checkpoint
        # them too, so a resumed run draws the same masks as an uninterrupted one.
        rng = [layer.seed_generator.state for layer in self.model.layers
               if getattr(layer, "seed_generator", None) is not None]
        extra = {**({"ema": self.ema} if self.ema else {}),
                 **({"loss_scale": self.loss_scale} if self.loss_scale else {})}
        self.checkpoint = tf.train.Checkpoint(model=self.model, optimizer=self.optimizer,
                                              rng=rng, **extra)
        # Multi-worker: every worker must take part in a save, but only the chief's survives.
        self.is_chief = _is_chief(self.strategy)
        ckpt_dir = model_dir if self.is_chief else os.path.join(
            model_dir, f".worker-{self.strategy.cluster_resolver.task_id}")
        self.manager = tf.train.CheckpointManager(
            self.checkpoint, ckpt_dir, max_to_keep=config.keep_checkpoints if self.is_chief else 1,
            step_counter=self.optimizer.iterations)
        self._sigterm = preemption.SigtermWatcher()
        with tf.device("/cpu:0"):  # written by the input pipelines (pipeline.build_dataset)
            self._counts = {k: tf.Variable([0, 0], dtype=tf.int64, trainable=False,
                                           name=f"records_{k}") for k in ("train", "eval")}
        self._sum_over_workers = None
        if preemption.num_workers(self.strategy) > 1:
            per_worker = (self.strategy.num_replicas_in_sync
                          // preemption.num_workers(self.strategy))

            @tf.function
            def sum_over_workers(var):
                local = self.strategy.run(lambda: tf.identity(var.read_value()))
                return self.strategy.reduce("SUM", local, axis=None) // per_worker

            self._sum_over_workers = sum_over_workers
        self._train_loop = None
        self._eval_pass = None

    # ---------------------------------------------------------------- data
    def _train_dataset(self, start_batch: int):
        return self.strategy.distribute_datasets_from_function(
            lambda ctx: self.task.train_dataset(ctx, self.micro_batch, start_batch,
                                                counts=self._counter("train")))

    def batches_drawn(self) -> int:
        """Batches the optimizer steps so far consumed: (steps + skipped float16 steps) x
        accumulate_steps (where a resumed run's input stream goes on from)."""
        skipped = int(self.loss_scale.skipped.numpy()) if self.loss_scale else 0
        return (int(self.optimizer.iterations.numpy()) + skipped) * self.accumulate_steps

    def _counter(self, split):
        """The CPU variable counting this split's (read, skipped) images, None where the input
        pipelines run on other hosts (a TPU pod slice), which cannot write to it: there bad
        images are skipped but not counted."""
        if getattr(self.strategy.extended, "num_hosts", 1) > 1:
            return None
        return self._counts[split]

    def record_counts(self, split: str = "train") -> tuple[int, int]:
        """(images read, undecodable images skipped) of the split so far, over all workers; the
        input pipeline reads ahead of training, so `read` runs ahead of the trained images."""
        counts = self._counts[split]
        if self._sum_over_workers is not None:
            counts = self._sum_over_workers(counts)
        read, skipped = (int(v) for v in counts.numpy())
        return read, skipped

    def _check_bad_fraction(self) -> int:
        """The skipped count; stops the job once it is more than data.max_bad_fraction of the
        images read (at least one epoch counts as read, so an early bad shard is no alarm)."""
        read, skipped = self.record_counts("train")
        limit = self.config.data.max_bad_fraction
        if skipped > limit * max(read, self.num_train_examples):
            raise BadDataError(
                f"{skipped} of the {read} training images read so far were undecodable (empty, "
                f"not an image, truncated, or refused by the decoder): more than data.max_bad_fraction={limit} (counting "
                f"at least one epoch, {self.num_train_examples} images). Rewrite the TFRecords "
                "(python -m efficientnet_tf.data.convert skips and lists bad images) or raise "
                "data.max_bad_fraction.")
        return skipped

    # ---------------------------------------------------------------- steps
    def _gradients(self, images, labels):
        """(variables, gradients, metric sums) of one (micro-)batch on this replica."""
        # The L2 term is added once per update: split over the replicas and micro-batches.
        terms = self.strategy.num_replicas_in_sync * self.accumulate_steps
        with tf.GradientTape() as tape:
            loss, ce, logits = self.task.loss(self.model, images, labels, self.global_batch,
                                              terms)
            if self.loss_scale is not None:
                loss = self.loss_scale.scale_loss(loss)
        variables = self.model.trainable_variables
        grads = tape.gradient(loss, variables)
        if self.loss_scale is not None:
            grads = self.loss_scale.unscale(grads)
        return variables, grads, self.task.train_metrics(labels, logits, ce)

    def _replica_accumulate(self, images, labels):
        variables, grads, metrics = self._gradients(images, labels)
        for v, g in zip(variables, grads):
            if g is not None:
                self._accumulated[id(v)].assign_add(g)
        return metrics

    def _replica_train_step(self, images, labels):
        variables, grads, metrics = self._gradients(images, labels)
        if self._accumulated is not None:
            held = [self._accumulated[id(v)] for v in variables]
            grads = [a.read_value() if g is None else a.read_value() + g
                     for a, g in zip(held, grads)]
        if self.loss_scale is None:
            self._update(grads)
        else:  # float16: skipped (and the scale lowered) when a gradient overflowed
            self.loss_scale.apply_if_finite(grads, self._update)
        if self._accumulated is not None:
            with tf.control_dependencies(grads):
                for a in held:
                    a.assign(tf.zeros_like(a))
        return metrics

    def _update(self, grads):
        self.task.apply_gradients(self.optimizer, grads, self.model.trainable_variables)
        if self.ema is not None:
            self.ema.update(self.optimizer.iterations)

    def _make_train_loop(self):
        step_fn = tf.function(self._replica_train_step, jit_compile=self.jit_compile)
        accumulate_fn = tf.function(self._replica_accumulate, jit_compile=self.jit_compile)
        micro_steps = self.accumulate_steps - 1
        loss_scale = self.loss_scale

        multi_worker = preemption.num_workers(self.strategy) > 1
        flag = self._sigterm.flag

        def stop_requested():  # the same answer on every worker
            if not multi_worker:
                return flag.read_value() > 0
            local = self.strategy.run(lambda: tf.identity(flag.read_value()))
            return self.strategy.reduce("SUM", local, axis=None) > 0

        loss_at = self.task.TRAIN_METRICS.index("loss")

        @tf.function
        def train_loop(iterator, steps):
            totals = [tf.constant(0.0) for _ in self.task.TRAIN_METRICS]
            done = tf.constant(0)
            go = tf.logical_not(stop_requested())
            # No `break`: it would put the step (and its collectives) inside a tf.cond.
            while tf.logical_and(go, done < steps):
                skipped = loss_scale.skipped.read_value() if loss_scale else None
                sums = [tf.constant(0.0) for _ in self.task.TRAIN_METRICS]
                if micro_steps:
                    for _ in tf.range(micro_steps):
                        part = self.strategy.run(accumulate_fn, args=next(iterator))
                        sums = [s + self.strategy.reduce("SUM", v, axis=None)
                                for s, v in zip(sums, part)]
                part = self.strategy.run(step_fn, args=next(iterator))
                sums = [s + self.strategy.reduce("SUM", v, axis=None) for s, v in zip(sums, part)]
                if loss_scale:  # a skipped step's metrics do not count (nor can its loss fail)
                    applied = tf.equal(loss_scale.skipped.read_value(), skipped)
                    sums = [tf.where(applied, v, tf.zeros_like(v)) for v in sums]
                totals = [t + v for t, v in zip(totals, sums)]
                done += 1
                # Stop at a non-finite loss (the same on every replica) or after SIGTERM.
                go = tf.logical_and(tf.math.is_finite(sums[loss_at]),
                                    tf.logical_not(stop_requested()))
            return totals, done

        return train_loop

    # ---------------------------------------------------------------- public
    def _bn_description(self) -> str:
        n = self.strategy.num_replicas_in_sync
        k = self.config.model.resolved_bn_group_size(n)
        if k == 1:
            return "BN statistics per replica"
        return f"BN statistics over {'all' if k == n else f'groups of {k}'} replicas"

    def _memory_description(self) -> str:
        cfg = self.config
        parts = [cfg.precision if cfg.precision == "float32" else f"mixed {cfg.precision}"]
        if self.loss_scale is not None:
            parts[0] += f" with loss scale {float(self.loss_scale.scale.numpy()):g}"
        if self.accumulate_steps > 1:
            parts.append(f"{self.accumulate_steps} micro-batches of {self.micro_batch} per step")
        if cfg.model.recompute != "none":
            parts.append(f"recompute={cfg.model.recompute}")
        return ", ".join(parts)

    def ema_weights(self):
        """Context in which the model holds the EMA weights (no-op without EMA)."""
        return self.ema.swapped(self.model) if self.ema is not None else contextlib.nullcontext()

    def _set_phase(self, step: int) -> int | None:
        """Fine-tuning's two phases: applies the freeze spec of `step`'s phase (the train step is
        traced again when it changes); returns the switch step, None with one phase."""
        before = [id(v) for v in self.model.trainable_variables]
        spec = self.task.set_phase(self.model, step, self._exact_steps_per_epoch)
        if spec is None:
            return None
        if [id(v) for v in self.model.trainable_variables] != before:
            self._train_loop = None
            self.log(f"Fine-tuning phase from step {step}: freeze={spec}, "
                     f"{len(self.model.trainable_variables)} trainable variables.")
        return self.task.phase_switch_step(self._exact_steps_per_epoch)

    def restore(self) -> int:
        """Restores the latest checkpoint in model_dir (if any); returns its step."""
        latest = tf.train.latest_checkpoint(self.model_dir)
        if latest:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            self.log(f"Restored {latest} (step {int(self.optimizer.iterations.numpy())}).")
        return int(self.optimizer.iterations.numpy())

    def train(self, total_steps: int | None = None, eval_every_steps: int | None = None) -> dict:
        """Trains to total_steps (default: the config's) from the latest checkpoint. The chief
        holds model_dir's lock meanwhile (a second trainer is refused). Returns {"step"}, plus
        "preempted" and "exit_code" when SIGTERM or Ctrl-C stopped it (after a save)."""
        with self.rundir.locked(self.log) if self.is_chief else contextlib.nullcontext():
            return self._train(total_steps, eval_every_steps)

    def _train(self, total_steps, eval_every_steps) -> dict:
        cfg = self.config
        total_steps = total_steps or self.total_steps
        step = self.restore()
        if self.is_chief:
            dropped = self.rundir.trim_history(step)
            if dropped:
                self.log(f"Dropped {dropped} history record(s) past step {step} (trained after "
                         "the checkpoint that was restored).")
        switch = self._set_phase(step)
        if switch is not None and step < switch < total_steps:  # two phases: the first, then on
            first = self.train(switch, eval_every_steps)
            return first if first.get("preempted") else self.train(total_steps, eval_every_steps)
        if step >= total_steps:
            self.log(f"Already trained {step} >= {total_steps} steps.")
            return {"step": step}
        iterator = iter(self._train_dataset(self.batches_drawn()))
        traces = self._train_loop is None  # the first call traces the step: slower
        if traces:
            self._train_loop = self._make_train_loop()
        writer = (tf.summary.create_file_writer(self.rundir.summaries_dir)
                  if self.is_chief else tf.summary.create_noop_writer())
        history_path = self.rundir.history_path if self.is_chief else None
        last_ckpt = step
        if cfg.on_nonfinite == "restore" and not self.manager.latest_checkpoint:
            self._save(step)  # something to go back to
        start_step, t_start = step, time.perf_counter()
        self.log(f"Training {self.model.name}: steps {step} -> {total_steps} "
                 f"({self.steps_per_epoch} per epoch), global batch {self.global_batch} on "
                 f"{self.strategy.num_replicas_in_sync} replica(s); {self._bn_description()}; "
                 f"{self._memory_description()}.")
        with self._sigterm:
            result = self._loop(iterator, step, total_steps, eval_every_steps, writer,
                                history_path, start_step, t_start, last_ckpt, traces)
        writer.flush()
        return result

    def _loop(self, iterator, step, total_steps, eval_every_steps, writer, history_path,
              start_step, t_start, last_ckpt, first):
        cfg, spe, restores = self.config, max(1, self.config.steps_per_execution), 0
        ckpt_every = cfg.checkpoint_every_steps or self.steps_per_epoch
        while step < total_steps:
            want = min(spe, total_steps - step)
            t0 = time.perf_counter()
            totals, n = self._train_loop(iterator, tf.constant(want))
            n = int(n)
            if n == 0:  # SIGTERM before the first step of this call
                return self._preempted(step, last_ckpt)
            dt = time.perf_counter() - t0
            before, step = step, int(self.optimizer.iterations.numpy())
            images = (step - before) * self.global_batch  # the updates (float16 may skip some)
            rec = {"step": step, "epoch": round(step / self.steps_per_epoch, 3),
                   # None: no update in this call (float16 skipped every step)
                   **{k: float(v) / images if images else None
                      for k, v in zip(self.task.TRAIN_METRICS, totals)},
                   "lr": float(self.lr_schedule(step)),
                   "images_per_s": n * self.global_batch / dt}
            if self.loss_scale is not None:
                rec.update(self._loss_scale_record())
            if images and not math.isfinite(rec["loss"]):
                restores += 1
                step = last_ckpt = self._after_nonfinite(rec, restores)
                continue
            rec["skipped_records"] = self._check_bad_fraction()
            with writer.as_default(step=step):
                for key in (*self.task.TRAIN_METRICS, "lr", "images_per_s", "loss_scale",
                            "skipped_steps"):
                    if rec.get(key) is not None:
                        tf.summary.scalar(f"train/{key}", rec[key])
                tf.summary.scalar("data/skipped_records", rec["skipped_records"])
            if step - last_ckpt >= ckpt_every or step >= total_steps:
                self._save(step)
                last_ckpt = step
            # A multiple of eval_every_steps crossed by the updates of this call (skipped
            # float16 steps are not updates), or the end.
            if eval_every_steps and (step // eval_every_steps > before // eval_every_steps
                                     or step >= total_steps):
                rec["eval"] = self.evaluate()
                with writer.as_default(step=step):
                    for key, value in rec["eval"].items():
                        tf.summary.scalar(f"eval/{key}", value)
            self._progress(rec, start_step, total_steps, t_start, first=first)
            if first:  # later ETAs count from here: the first call traced the step
                first, start_step, t_start = False, step, time.perf_counter()
            if history_path:
                fileio.append_line(history_path, json.dumps(rec))
                self.rundir.heartbeat()
            if n < want:  # stopped early, with a finite loss: SIGTERM or Ctrl-C
                return self._preempted(step, last_ckpt)
        return {"step": step}

    def _loss_scale_record(self) -> dict:
        """float16's loss scale and skipped steps so far; stops when even a scale below 1
        overflows (the gradients themselves are out of float16's range)."""
        scale = float(self.loss_scale.scale.numpy())
        skipped = int(self.loss_scale.skipped.numpy())
        if scale < 1.0:
            raise FloatingPointError(
                f"float16: the gradients overflow at every loss scale (it fell to {scale:g} after "
                f"{skipped} skipped steps); stopped without saving, the latest checkpoint stays "
                f"{self.manager.latest_checkpoint}. Train in bfloat16 or float32 "
                "(--precision), or lower the learning rate.")
        return {"loss_scale": scale, "skipped_steps": skipped}

    def _preempted(self, step: int, last_ckpt: int) -> dict:
        """After SIGTERM or Ctrl-C: a checkpoint at this step (every worker takes part)."""
        if step != last_ckpt:
            self._save(step)
        self.log(f"{self._sigterm.name} at step {step}: saved {self.manager.latest_checkpoint}; "
                 "run the same command again to resume.")
        return {"step": step, "preempted": True, "exit_code": self._sigterm.exit_code}

    def _save(self, step: int) -> None:
        """Saves a checkpoint, unless the weights hold NaN/Inf (which the next loss would show)."""
        if not bool(self._weights_are_finite()):
            raise FloatingPointError(
                f"Non-finite weights at step {step} (the last update overflowed); not saved. "
                f"The latest checkpoint stays {self.manager.latest_checkpoint}.")
        try:
            self.manager.save(checkpoint_number=step)
        except (tf.errors.OpError, OSError) as e:  # disk full, permissions, a vanished bucket
            raise RuntimeError(
                f"Could not save the checkpoint of step {step} in {self.model_dir} "
                f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). The latest complete "
                f"checkpoint stays {self.manager.latest_checkpoint}; free space (or fix the "
                "permissions) and run the same command again to resume.") from None

    @tf.function
    def _weights_are_finite(self):
        return tf.reduce_all([tf.reduce_all(tf.math.is_finite(v)) for v in self.model.weights
                              if tf.as_dtype(v.dtype).is_floating])

    def _after_nonfinite(self, rec, restores: int) -> int:
        """Stops (on_nonfinite=stop, or too many restores) or restores the last good checkpoint
        and returns its step; the batches already drawn are not replayed."""
        cfg, latest = self.config, self.manager.latest_checkpoint
        lr = float(self.lr_schedule(rec["step"] - 1))  # the rate the bad step used
        what = f"Loss is {rec['loss']} at step {rec['step']} (learning rate {lr:.6g})"
        if cfg.on_nonfinite == "restore" and latest and restores <= cfg.max_nonfinite_restores:
            self.checkpoint.restore(latest).assert_existing_objects_matched()
            step = int(self.optimizer.iterations.numpy())
            self.log(f"{what}: restored {latest} (step {step}), restore {restores} of "
                     f"{cfg.max_nonfinite_restores}; continuing with the next batches.")
            return step
        kept = f"the latest checkpoint stays {latest}" if latest else "no checkpoint was saved"
        tried = (f" after {restores - 1} restore(s) (max_nonfinite_restores="
                 f"{cfg.max_nonfinite_restores})" if cfg.on_nonfinite == "restore" else "")
        raise FloatingPointError(
            f"{what}{tried}; stopped without saving, {kept}. Lower the learning rate or check "
            "the input data; on_nonfinite=restore goes back to the last good checkpoint instead.")

    def _progress(self, rec, start_step, total_steps, t_start, first=False):
        done = rec["step"] - start_step
        elapsed = time.perf_counter() - t_start
        eta = elapsed / max(done, 1) * (total_steps - rec["step"])
        metrics = (f"loss {rec['loss']:.4f} acc {rec['accuracy']:.4f}" if rec["loss"] is not None
                   else "no update")
        line = (f"step {rec['step']}/{total_steps} epoch {rec['epoch']:.2f} {metrics} "
                f"lr {rec['lr']:.5f} {rec['images_per_s']:.0f} img/s "
                + ("(first call: includes tracing; ETA from the next line)" if first else
                   f"eta {eta / 60:.1f} min"))
        if "loss_scale" in rec:
            line += f" loss scale {rec['loss_scale']:g}"
            if rec["skipped_steps"]:
                n = rec["skipped_steps"]
                line += f" ({n} step{'s' * (n != 1)} skipped on overflow)"
        if rec.get("skipped_records"):
            line += f" skipped {rec['skipped_records']} bad images"
        if "eval" in rec:
            line += f" | eval top1 {rec['eval']['top1']:.4f} (ema={rec['eval']['ema']})"
        self.log(line)

    def evaluate(self, use_ema: bool = True) -> dict:
        """Top-1/top-5/loss on the validation split (EMA weights when available)."""
        if self._eval_pass is None:
            self._eval_pass = EvalPass(self.task, self.model, self.strategy,
                                       self.config.eval_batch_size, counts=self._counter("eval"))
        use_ema = bool(use_ema and self.ema is not None)
        with self.ema_weights() if use_ema else contextlib.nullcontext():
            result = self._eval_pass()
        # skipped: over all workers (each worker's pipeline counts its own share).
        return {**result, "skipped": self.record_counts("eval")[1], "ema": use_ema}


class BadDataError(ValueError):
    """Too many undecodable training images (see DataConfig.max_bad_fraction)."""


def _is_chief(strategy) -> bool:
    resolver = getattr(strategy, "cluster_resolver", None)
    if resolver is None or not resolver.task_type or isinstance(strategy, tf.distribute.TPUStrategy):
        return True
    if resolver.task_type == "chief":
        return True
    has_chief = "chief" in resolver.cluster_spec().as_dict()
    return resolver.task_type == "worker" and resolver.task_id == 0 and not has_chief
