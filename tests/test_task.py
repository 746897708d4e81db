"""train/task.py: the Task contract the loop calls, the two built-in tasks, declared metrics."""
import json

import pytest
import tensorflow as tf

from conftest import tiny_config
from efficientnet_tf.train import task as tasklib

RUN = ["data.synthetic=true", "data.synthetic_examples=16", "train_batch_size=8",
       "eval_batch_size=8", "train_steps=2", "steps_per_execution=2", "seed=3"]


def _config(*extra):
    return tiny_config(*RUN, *extra)


def test_task_for_picks_fine_tuning_only_when_the_config_asks():
    plain = tasklib.task_for(_config())
    assert type(plain) is tasklib.ClassificationTask
    # The hooks are declared on Task with working defaults: nothing is looked up by getattr.
    assert plain.initialize(None) is None and plain.phase_switch_step(10.0) is None
    assert plain.set_phase(None, 0, 10.0) is None
    tuned = tasklib.task_for(_config("finetune.freeze=block3", "finetune.unfreeze_at_epoch=1"))
    assert type(tuned) is tasklib.FinetuneTask and tuned.phase_switch_step(10.0) == 10
    assert type(tasklib.task_for(_config("finetune.freeze_bn=true"))) is tasklib.FinetuneTask
    with pytest.raises(NotImplementedError):
        tasklib.Task().loss(None, None, None, 1, 1)


class CountingTask(tasklib.ClassificationTask):
    """Declares one more metric in training and in evaluation: images seen, per image."""

    TRAIN_METRICS = (*tasklib.ClassificationTask.TRAIN_METRICS, "seen")
    EVAL_METRICS = (*tasklib.ClassificationTask.EVAL_METRICS, "seen")

    def train_metrics(self, labels, logits, ce):
        return (*super().train_metrics(labels, logits, ce), tf.cast(tf.size(labels), tf.float32))

    def eval_metrics(self, model, images, labels):
        *sums, examples = super().eval_metrics(model, images, labels)
        return (*sums, examples, examples)


def test_a_task_declares_its_metrics_and_the_loop_reports_them(tmp_path):
    from efficientnet_tf.train.loop import Trainer

    config = _config()
    trainer = Trainer(config, str(tmp_path), log=lambda *_: None,
                      task=CountingTask(config))
    trainer.train()
    with open(tmp_path / "history.jsonl") as f:
        rec = json.loads(f.readline())
    assert rec["seen"] == 1.0 and rec["loss"] > 0 and 0 <= rec["accuracy"] <= 1
    result = trainer.evaluate()
    assert result["seen"] == 1.0 and result["examples"] == 16
    assert set(result) == {"loss", "top1", "top5", "seen", "examples", "skipped", "ema"}
