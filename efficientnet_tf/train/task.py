"""The image-classification task: what is trained, on which inputs, against which loss and metrics.

The loop (loop.py) owns the strategy, the compiled steps, checkpoints, summaries and the eval
cadence, and asks the task for the rest. Another task (fine-tuning, a scaling study) is another
class with the same methods: build_model, num_train_examples, create_optimizer, train_dataset,
eval_dataset, loss, train_metrics, eval_metrics.
"""
from __future__ import annotations

import dataclasses

import keras
import tensorflow as tf

from efficientnet_tf import factory
from efficientnet_tf.config import TrainConfig, check_for_training
from efficientnet_tf.data import pipeline
from efficientnet_tf.train import finetune, optim
from efficientnet_tf.train.seeds import seed_scope


class ClassificationTask:
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
        policy = "mixed_bfloat16" if self.config.use_bfloat16 else None
        # The seed and the policy hold only while the model is built: nothing global survives.
        with seed_scope(self.config.seed):
            model = factory.build_model_from_config(self.config, num_replicas,
                                                    dtype_policy=policy)
        ft = self.config.finetune
        # Two phases: the optimizer is built for the second (wider) phase's variables;
        # set_phase narrows what trains before the first step.
        self.frozen = finetune.apply_freeze(
            model, ft.unfreeze_to if ft.unfreeze_at_epoch else ft.freeze, ft.freeze_bn)
        self._lr_scales = finetune.layer_lr_scales(model, ft.layer_decay)
        return model

    def initialize(self, model, log=print):
        """Loads finetune.init_weights into a freshly built model (before the first step; never
        on a restart). Returns the LoadReport, or None without init_weights."""
        ft = self.config.finetune
        if not ft.init_weights:
            return None
        report, head = finetune.initialize(model, ft.init_weights,
                                           self.config.model.to_spec().variant, ft.init_use_ema,
                                           ft.new_head)
        log(finetune.describe_load(report, ft.init_weights, head))
        return report

    def phase_switch_step(self, steps_per_epoch: float) -> int | None:
        """The step at which the second fine-tuning phase starts (None: one phase)."""
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

    def apply_gradients(self, optimizer, grads, variables):
        """optimizer.apply_gradients, with finetune.layer_decay's per-stage scale applied to each
        variable's update (every optimizer here updates linearly in the learning rate, so
        scaling the update is exactly a per-variable learning rate)."""
        scaled = [(v, self._lr_scales[id(v)]) for v in variables
                  if self._lr_scales.get(id(v), 1.0) != 1.0] if self._lr_scales else []
        before = [tf.identity(v) for v, _ in scaled]
        optimizer.apply_gradients(zip(grads, variables))
        for (v, scale), old in zip(scaled, before):
            v.assign(old + scale * (tf.convert_to_tensor(v) - old))

    def create_optimizer(self, global_batch: int, steps_per_epoch: float, total_steps: int):
        """(optimizer, learning-rate schedule). steps_per_epoch unfloored, as the reference's
        warm-up and decay boundaries use it."""
        o = self.config.optimizer
        schedule = optim.learning_rate_schedule(
            o.lr, global_batch, steps_per_epoch, warmup_epochs=o.warmup_epochs,
            decay_epochs=o.decay_epochs, decay_rate=o.decay_rate, kind=o.schedule,
            total_steps=total_steps)
        switch = self.phase_switch_step(steps_per_epoch)
        if switch is not None and self.config.finetune.unfreeze_lr_scale != 1.0:
            schedule = optim.ScaledAfter(schedule, switch, self.config.finetune.unfreeze_lr_scale)
        return optim.make_optimizer(o, schedule), schedule

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


def _pad_batch(images, labels, size, image_size):
    """Pads a short last batch to `size` rows (static shapes for TPU); padded labels are -1."""
    n = size - tf.shape(labels)[0]
    images = tf.pad(images, [[0, n], [0, 0], [0, 0], [0, 0]])
    labels = tf.pad(labels, [[0, n]], constant_values=-1)
    return (tf.ensure_shape(images, [size, image_size, image_size, 3]),
            tf.ensure_shape(labels, [size]))
