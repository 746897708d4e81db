"""Precision: float16 with dynamic loss scaling in the training loop, bfloat16, the setting."""
import glob
import json
import os

import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from efficientnet_tf.train.loop import Trainer

# 2^24: the scaled loss's gradients overflow float16 at first, so steps are skipped and the
# scale halves until it fits.
HIGH_SCALE = 2 ** 24


def _float16_config(steps, *more):
    return tiny_config("data.synthetic=true", "data.image_size=32", "train_batch_size=4",
                       "eval_batch_size=4", f"train_steps={steps}", "precision=float16",
                       "steps_per_execution=4", "seed=1", f"loss_scale_initial={HIGH_SCALE}",
                       *more)


def _summaries(model_dir):
    tags = {}
    for path in glob.glob(os.path.join(model_dir, "**", "events.out.tfevents.*"), recursive=True):
        for event in tf.compat.v1.train.summary_iterator(path):
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(
                    float(tf.make_ndarray(value.tensor)))
    return tags


def test_float16_skips_an_overflowing_step_counts_it_and_resumes_with_its_loss_scale(tmp_path):
    model_dir = str(tmp_path / "run")
    lines = []
    trainer = Trainer(_float16_config(8), model_dir, num_train_examples=64, log=lines.append)
    assert trainer.model.get_layer("stem_conv").compute_dtype == "float16"
    assert trainer.model.get_layer("stem_conv").kernel.dtype == "float32"
    trainer.train(eval_every_steps=4)
    skipped = int(trainer.loss_scale.skipped.numpy())
    assert skipped >= 1  # the forced overflow
    # Halved once per skipped step, never raised (far fewer than 2000 good steps).
    assert trainer.loss_scale.scale.numpy() == HIGH_SCALE / 2 ** skipped
    assert int(trainer.optimizer.iterations.numpy()) == 8  # skipped steps are not steps
    assert int(trainer.ema.num_updates.numpy()) == 8  # nor EMA updates
    assert trainer.batches_drawn() == 8 + skipped
    assert all(np.isfinite(w.numpy()).all() for w in trainer.model.weights)
    said = f"({skipped} step{'s' * (skipped != 1)} skipped on overflow)"
    assert any(said in line for line in lines), lines
    history = [json.loads(line) for line in open(os.path.join(model_dir, "history.jsonl"))]
    assert history[-1]["skipped_steps"] == skipped and history[-1]["step"] == 8
    assert history[-1]["loss_scale"] == HIGH_SCALE / 2 ** skipped
    assert np.isfinite(history[-1]["loss"])
    # Evaluated where the updates crossed step 4 and at the end, not after the first call,
    # whose skipped steps left it short of 4.
    assert history[0]["step"] < 4 and "eval" not in history[0]
    evaluated = [rec["step"] for rec in history if "eval" in rec]
    assert len(evaluated) == 2 and 4 <= evaluated[0] < 8 and evaluated[1] == 8, evaluated
    tags = _summaries(model_dir)
    assert tags["train/skipped_steps"][-1] == skipped and "train/loss_scale" in tags

    # Resume: the scale and the skipped count come back from the checkpoint.
    resumed = Trainer(_float16_config(10), model_dir, num_train_examples=64, log=lines.append)
    assert float(resumed.loss_scale.scale.numpy()) == HIGH_SCALE  # before the restore
    assert resumed.restore() == 8
    assert resumed.loss_scale.scale.numpy() == HIGH_SCALE / 2 ** skipped
    assert int(resumed.loss_scale.skipped.numpy()) == skipped
    assert resumed.batches_drawn() == 8 + skipped  # the input stream goes on from here
    resumed.train()
    assert int(resumed.optimizer.iterations.numpy()) == 10


def test_the_loss_scale_doubles_after_its_growth_steps_and_halves_on_overflow():
    from efficientnet_tf.train.loss_scale import DynamicLossScale

    scale = DynamicLossScale(initial=8.0, growth_steps=3)
    var = tf.Variable(1.0)
    updates = []

    def update(grads):
        var.assign_sub(grads[0])
        updates.append(1)

    for g in [1.0, 1.0, 1.0, np.inf, 1.0, np.nan]:
        scale.apply_if_finite([tf.constant(g)], update)
    # 3 good steps: x2 (16); inf: /2 (8); one good; nan: /2 (4). Two steps skipped.
    assert float(scale.scale.numpy()) == 4.0 and int(scale.skipped.numpy()) == 2
    assert float(var.numpy()) == 1.0 - 4.0  # only the four finite updates ran
    assert int(scale.good_steps.numpy()) == 0
    assert [float(g) for g in scale.unscale([tf.constant(8.0)])] == [2.0]
    assert float(scale.scale_loss(tf.constant(0.5))) == 2.0


def test_a_float16_run_that_overflows_at_every_scale_stops_with_a_message(tmp_path):
    # lr=1e30: the first update sends the weights to inf, every later step overflows.
    config = _float16_config(40, "optimizer.lr=1e30", "optimizer.warmup_epochs=0",
                             "loss_scale_initial=4")
    trainer = Trainer(config, str(tmp_path / "run"), num_train_examples=64, log=lambda *_: None)
    with pytest.raises(FloatingPointError, match="overflow at every loss scale"):
        trainer.train()


@pytest.mark.slow  # ~70 s: XLA compiles the tiny network twice over (recompute) on CPU
def test_float16_with_recompute_and_accumulation_compiles_under_xla_and_matches_the_plain_step(
        tmp_path):
    """jit_compile (XLA, as on GPUs and TPUs): the loss-scale cond, recompute_grad and the
    micro-batch accumulators compile, skip the same overflowing steps and train the same."""
    runs = {}
    for jit in (True, False):
        config = _float16_config(2, "model.recompute=blocks", "accumulate_steps=2")
        trainer = Trainer(config, str(tmp_path / f"jit_{jit}"), jit_compile=jit,
                          num_train_examples=64, log=lambda *_: None)
        trainer.train()
        history = [json.loads(line) for line in open(tmp_path / f"jit_{jit}" / "history.jsonl")]
        runs[jit] = (int(trainer.loss_scale.skipped.numpy()), int(trainer.optimizer.iterations),
                     [r["loss"] for r in history if r["loss"] is not None],
                     [w.numpy() for w in trainer.model.trainable_weights])
    (skipped, steps, losses, weights), plain = runs[True], runs[False]
    assert skipped >= 1 and (skipped, steps) == plain[:2] and steps == 2
    np.testing.assert_allclose(losses, plain[2], rtol=5e-3)  # float16 rounding differs in XLA
    for a, b in zip(weights, plain[3]):
        np.testing.assert_allclose(a, b, atol=2e-3)
