"""Tasks: what is trained, on which inputs, against which loss and metrics.

The loop (loop.py) owns the strategy, the compiled steps, checkpoints, summaries and the eval
cadence, and asks the task for the rest through the contract `Task` declares. Built in:
ClassificationTask (the paper's recipe) and FinetuneTask (the same, starting from pretrained
weights with frozen stages, two phases and per-stage learning rates); `task_for(config)` picks
the one the config asks for.
"""
from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from efficientnet_tf import factory, recompute
from efficientnet_tf.config import TrainConfig, check_for_training
from efficientnet_tf.data import pipeline
from efficientnet_tf.train import finetune, optim
from efficientnet_tf.train.seeds import seed_scope


class Task:
    """The contract between a task and the loop (the shape of the Model Garden's Task).

    Required: build_model, num_train_examples, create_optimizer, train_dataset, eval_dataset,
    loss, train_metrics, eval_metrics. The hooks below them have working defaults, and the loop
    calls every one of them: a task overrides what it changes.

    Metrics are per-replica sums the loop adds up over replicas and steps and divides by the
    images seen: train_metrics returns one sum per name in TRAIN_METRICS (a "loss" is required:
    the loop stops or restores on a non-finite one), eval_metrics one per name in EVAL_METRICS
    and then the number of real (not padding) examples.
    """

    TRAIN_METRICS: tuple[str, ...] = ("loss", "accuracy")
    EVAL_METRICS: tuple[str, ...] = ("loss", "top1", "top5")

    config: TrainConfig

    # ---------------------------------------------------------------- required
    def build_model(self, num_replicas: int = 1) -> keras.Model:
        raise NotImplementedError

    def num_train_examples(self) -> int:
        raise NotImplementedError

    def create_optimizer(self, global_batch: int, steps_per_epoch: float, total_steps: int):
        """(optimizer, learning-rate schedule)."""
        raise NotImplementedError

    def train_dataset(self, ctx, global_batch: int, start_step: int = 0, counts=None):
        """Per-replica batches of global_batch images (a micro-batch with accumulate_steps),
        resuming after start_step batches (the loop counts the batches drawn)."""
        raise NotImplementedError

    def eval_dataset(self, ctx, global_batch: int, counts=None):
        raise NotImplementedError

    def loss(self, model, images, labels, global_batch: int, num_replicas: int):
        """(replica loss to differentiate, per-example loss, model outputs). global_batch: the
        images of one optimizer step; num_replicas: how many such losses are summed into one
        update (replicas x accumulate_steps): a per-step term (L2) is divided by it."""
        raise NotImplementedError

    def train_metrics(self, labels, outputs, per_example_loss) -> tuple:
        raise NotImplementedError

    def eval_metrics(self, model, images, labels) -> tuple:
        raise NotImplementedError

    # ---------------------------------------------------------------- hooks
    def initialize(self, model, log=print):
        """Called once on a fresh run (never on a restart), before the EMA copies the weights:
        load starting weights. Returns a report or None."""
        return None

    def phase_switch_step(self, steps_per_epoch: float) -> int | None:
        """The step at which a second training phase starts; None: one phase."""
        return None

    def set_phase(self, model, step: int, steps_per_epoch: float) -> str | None:
        """Sets up the phase `step` is in (e.g. what is trainable); returns its description,
        None with one phase."""
        return None

    def apply_gradients(self, optimizer, grads, variables) -> None:
        optimizer.apply_gradients(zip(grads, variables))


class ClassificationTask(Task):
    """EfficientNet on (image, label) batches with the config's recipe: label-smoothed softmax
    cross-entropy, L2 on non-BN weights, top-1 / top-5 accuracy.

    train_dataset_fn(input_context) -> per-replica batches replaces the TFRecord pipeline (tests,
    custom data); then give num_train_examples too.
    """

    def __init__(self, config: TrainConfig, train_dataset_fn=None,
                 num_train_examples: int | None = None):
        check_for_training(config)
        self.config = config
        self._custom_dataset_fn = train_dataset_fn
        self._num_train_examples = num_train_examples

    @property
    def num_classes(self) -> int:
        return self.config.data.num_classes

    # ---------------------------------------------------------------- model and optimizer
    def build_model(self, num_replicas: int = 1) -> keras.Model:
        """The model (logits), under the config's precision; call inside strategy.scope()."""
        policy = self.config.dtype_policy
        # The seed and the policy hold only while the model is built: nothing global survives.
        with seed_scope(self.config.seed):
            return factory.build_model_from_config(self.config, num_replicas,
                                                   dtype_policy=policy)

    def create_optimizer(self, global_batch: int, steps_per_epoch: float, total_steps: int):
        """(optimizer, learning-rate schedule). steps_per_epoch unfloored, as the reference's
        warm-up and decay boundaries use it."""
        o = self.config.optimizer
        schedule = optim.learning_rate_schedule(
            o.lr, global_batch, steps_per_epoch, warmup_epochs=o.warmup_epochs,
            decay_epochs=o.decay_epochs, decay_rate=o.decay_rate, kind=o.schedule,
            total_steps=total_steps)
        schedule = self._schedule(schedule, steps_per_epoch)
        return optim.make_optimizer(o, schedule), schedule

    def _schedule(self, schedule, steps_per_epoch):
        """The schedule the optimizer uses (FinetuneTask scales its second phase)."""
        return schedule

    # ---------------------------------------------------------------- inputs
    def num_train_examples(self) -> int:
        if self._num_train_examples:
            return self._num_train_examples
        return pipeline.count_examples(self.config.data, "train")

    def train_dataset(self, ctx, global_batch: int, start_step: int = 0,
                      counts: tf.Variable | None = None) -> tf.data.Dataset:
        """Per-replica training batches for input pipeline ctx, resuming at start_step;
        undecodable images are dropped; `counts` adds (read, skipped) (see pipeline.build_dataset)."""
        dc = self.config.data
        resume = self.config.resume_data
        if resume == "reseed" and start_step:
            # A new shuffle order, not a replay: costs nothing, but not bit-exact.
            dc = dataclasses.replace(dc, seed=(dc.seed or 0) + start_step)
        if self._custom_dataset_fn is not None:
            ds = self._custom_dataset_fn(ctx)
        else:
            ds = pipeline.build_dataset(dc, "train", global_batch, input_context=ctx,
                                        counts=counts)
        if start_step and resume == "skip":
            # Exact resume: replay the deterministic stream up to where we stopped.
            ds = ds.skip(start_step * ctx.num_replicas_in_sync // ctx.num_input_pipelines)
        return ds

    def eval_dataset(self, ctx, global_batch: int,
                     counts: tf.Variable | None = None) -> tf.data.Dataset:
        """One pass over the validation split; the last batch padded to full size with label -1
        (static shapes for TPU; eval_metrics ignores the padding). Undecodable images are
        dropped; `counts` adds (read, skipped)."""
        per_replica = ctx.get_per_replica_batch_size(global_batch)
        size = self.config.data.image_size
        ds = pipeline.build_dataset(self.config.data, "validation", global_batch,
                                    input_context=ctx, repeat=False, counts=counts)
        return ds.map(lambda images, labels: _pad_batch(images, labels, per_replica, size))

    # ---------------------------------------------------------------- loss and metrics
    def loss(self, model, images, labels, global_batch: int, num_replicas: int):
        """(replica loss to differentiate, per-example cross-entropy, logits)."""
        o = self.config.optimizer
        if self.config.model.recompute == "blocks":
            logits = recompute.call(model, images, training=True)
        else:
            logits = model(images, training=True)
        ce = optim.classification_loss(labels, logits, self.num_classes, o.label_smoothing)
        loss = tf.reduce_sum(ce) / global_batch
        if o.weight_decay:
            loss += optim.l2_regularization_loss(model, o.weight_decay) / num_replicas
        return loss, ce, logits

    def train_metrics(self, labels, logits, ce):
        """Replica sums: (cross-entropy, correct top-1)."""
        correct = tf.reduce_sum(tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32),
                                                 tf.cast(labels, tf.int32)), tf.float32))
        return tf.reduce_sum(ce), correct

    def eval_metrics(self, model, images, labels):
        """Replica sums: (cross-entropy, top-1, top-5, examples); labels < 0 are padding."""
        logits = tf.cast(model(images, training=False), tf.float32)
        valid = labels >= 0
        safe = tf.where(valid, tf.cast(labels, tf.int32), 0)
        ce = optim.classification_loss(safe, logits, self.num_classes, 0.0)
        mask = tf.cast(valid, tf.float32)
        top1 = tf.cast(tf.equal(tf.argmax(logits, -1, output_type=tf.int32), safe), tf.float32)
        top5 = tf.cast(tf.nn.in_top_k(safe, logits, min(5, self.num_classes)), tf.float32)
        return (tf.reduce_sum(ce * mask), tf.reduce_sum(top1 * mask), tf.reduce_sum(top5 * mask),
                tf.reduce_sum(mask))


class FinetuneTask(ClassificationTask):
    """ClassificationTask from pretrained weights (the config's `finetune:` section): frozen
    stages, an optional second phase that unfreezes more (with its own learning-rate scale),
    and per-stage learning rates (layer_decay). See finetune.py for the freeze specs."""

    def build_model(self, num_replicas: int = 1) -> keras.Model:
        model = super().build_model(num_replicas)
        ft = self.config.finetune
        # Two phases: the optimizer is built for the second (wider) phase's variables;
        # set_phase narrows what trains before the first step.
        self.frozen = finetune.apply_freeze(
            model, ft.unfreeze_to if ft.unfreeze_at_epoch else ft.freeze, ft.freeze_bn)
        self._lr_scales = finetune.layer_lr_scales(model, ft.layer_decay)
        return model

    def initialize(self, model, log=print):
        """Loads finetune.init_weights into a freshly built model. Returns the LoadReport, or
        None without init_weights."""
        ft = self.config.finetune
        if not ft.init_weights:
            return None
        report, head = finetune.initialize(model, ft.init_weights,
                                           self.config.model.to_spec().variant, ft.init_use_ema,
                                           ft.new_head)
        log(finetune.describe_load(report, ft.init_weights, head))
        return report

    def phase_switch_step(self, steps_per_epoch: float) -> int | None:
        epoch = self.config.finetune.unfreeze_at_epoch
        return max(1, int(round(epoch * steps_per_epoch))) if epoch else None

    def set_phase(self, model, step: int, steps_per_epoch: float) -> str | None:
        """Applies the freeze spec of the phase `step` is in; returns it (None: one phase)."""
        switch, ft = self.phase_switch_step(steps_per_epoch), self.config.finetune
        if switch is None:
            return None
        spec = ft.freeze if step < switch else ft.unfreeze_to
        self.frozen = finetune.apply_freeze(model, spec, ft.freeze_bn)
        return spec

    def apply_gradients(self, optimizer, grads, variables) -> None:
        """optimizer.apply_gradients, with finetune.layer_decay's per-stage scale applied to each
        variable's update (every optimizer here updates linearly in the learning rate, so
        scaling the update is exactly a per-variable learning rate)."""
        scaled = [(v, self._lr_scales[id(v)]) for v in variables
                  if self._lr_scales.get(id(v), 1.0) != 1.0] if self._lr_scales else []
        before = [tf.identity(v) for v, _ in scaled]
        optimizer.apply_gradients(zip(grads, variables))
        for (v, scale), old in zip(scaled, before):
            v.assign(old + scale * (tf.convert_to_tensor(v) - old))

    def _schedule(self, schedule, steps_per_epoch):
        switch = self.phase_switch_step(steps_per_epoch)
        if switch is not None and self.config.finetune.unfreeze_lr_scale != 1.0:
            return optim.ScaledAfter(schedule, switch, self.config.finetune.unfreeze_lr_scale)
        return schedule


def task_for(config: TrainConfig, train_dataset_fn=None,
             num_train_examples: int | None = None) -> ClassificationTask:
    """The task a config asks for: FinetuneTask when its finetune: section is in use."""
    cls = FinetuneTask if config.finetune.enabled else ClassificationTask
    return cls(config, train_dataset_fn, num_train_examples)


def _pad_batch(images, labels, size, image_size):
    """Pads a short last batch to `size` rows (static shapes for TPU); padded labels are -1."""
    n = size - tf.shape(labels)[0]
    images = tf.pad(images, [[0, n], [0, 0], [0, 0], [0, 0]])
    labels = tf.pad(labels, [[0, n]], constant_values=-1)
    return (tf.ensure_shape(images, [size, image_size, image_size, 3]),
            tf.ensure_shape(labels, [size]))
