"""One pass of a task's eval metrics over its validation split: the one eval loop behind
Trainer.evaluate (and so continuous eval, the demo and research) and evaluate.py."""
from __future__ import annotations

import numpy as np
import tensorflow as tf


class EvalPass:
    """Calling it runs task.eval_dataset once through task.eval_metrics on model under strategy
    and returns {name: sum / examples for task.EVAL_METRICS, "examples": images the metrics
    are over, "skipped": undecodable images left out (None where not counted)}.

    The compiled step is made once and reused by every call. counts: a CPU int64 variable
    [read, skipped] the input pipeline adds to; None makes one unless the input pipelines run
    on other hosts (a TPU pod slice), which cannot write to it.
    """

    def __init__(self, task, model, strategy, batch_size: int, counts=None):
        self.task, self.model, self.strategy, self.batch_size = task, model, strategy, batch_size
        if counts is None and getattr(strategy.extended, "num_hosts", 1) <= 1:
            with tf.device("/cpu:0"):
                counts = tf.Variable([0, 0], dtype=tf.int64, trainable=False,
                                     name="records_eval")
        self.counts = counts
        replica_step = tf.function(lambda i, la: task.eval_metrics(model, i, la))

        @tf.function
        def step(images, labels):
            out = strategy.run(replica_step, args=(images, labels))
            return [strategy.reduce("SUM", v, axis=None) for v in out]

        self._step = step

    def __call__(self) -> dict:
        names = tuple(self.task.EVAL_METRICS)
        totals = np.zeros(len(names) + 1)
        if self.counts is not None:
            self.counts.assign([0, 0])
        ds = self.strategy.distribute_datasets_from_function(
            lambda ctx: self.task.eval_dataset(ctx, self.batch_size, counts=self.counts))
        for images, labels in ds:
            totals += np.array([float(v) for v in self._step(images, labels)])
        n = max(totals[-1], 1.0)
        return {**{k: totals[i] / n for i, k in enumerate(names)}, "examples": int(totals[-1]),
                "skipped": self.skipped()}

    def skipped(self) -> int | None:
        return int(self.counts.numpy()[1]) if self.counts is not None else None
