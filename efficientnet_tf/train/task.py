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
from efficientnet_tf.train import optim
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
            return factory.build_model_from_config(self.config, num_replicas, dtype_policy=policy)

    def create_optimizer(self, global_batch: int, steps_per_epoch: float, total_steps: int):
        """(optimizer, learning-rate schedule). steps_per_epoch unfloored, as the reference's
        warm-up and decay boundaries use it."""
        o = self.config.optimizer
        schedule = optim.learning_rate_schedule(
            o.lr, global_batch, steps_per_epoch, warmup_epochs=o.warmup_epochs,
            decay_epochs=o.decay_epochs, decay_rate=o.decay_rate, kind=o.schedule,
            total_steps=total_steps)
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
