"""What a long job survives: non-finite losses, SIGTERM, undecodable images, truncated files."""
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import config as cfglib

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
SIZE = 16


def tiny_config(*extra):
    return cfglib.apply_overrides(cfglib.load_config("fashion_mnist"), [
        "model.width_coefficient=0.1", "model.depth_coefficient=0.1", f"data.image_size={SIZE}",
        "data.synthetic=true", "train_batch_size=4", "eval_batch_size=4", "seed=2",
        "optimizer.warmup_epochs=0", *extra])


def nan_batches_fn(bad_batches):
    """Batches of 4 random images; the batches with these indices hold a NaN pixel."""
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 255, (64, 4, SIZE, SIZE, 3)).astype("float32")
    x[sorted(bad_batches), 0, 0, 0, 0] = np.nan
    y = rng.integers(0, 10, (64, 4)).astype("int32")
    return lambda ctx: tf.data.Dataset.from_tensor_slices((x, y))


def finite(trainer):
    return all(np.isfinite(w.numpy()).all() for w in trainer.model.weights)


def test_nan_loss_stops_at_the_step_and_keeps_the_last_good_checkpoint(tmp_path):
    from efficientnet_tf.train.loop import Trainer

    config = tiny_config("train_steps=12", "steps_per_execution=4", "checkpoint_every_steps=2")
    trainer = Trainer(config, str(tmp_path), train_dataset_fn=nan_batches_fn({5}),
                      num_train_examples=64, log=lambda *_: None)
    with pytest.raises(FloatingPointError, match=r"Loss is nan at step 6 \(learning rate "
                       r"[0-9.e-]+\).*latest checkpoint stays .*ckpt-4"):
        trainer.train()
    assert tf.train.latest_checkpoint(str(tmp_path)).endswith("ckpt-4")
    assert not tf.io.gfile.glob(str(tmp_path / "ckpt-6*"))
    with open(tmp_path / "history.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [4]  # nothing recorded for the bad loop
    assert not finite(trainer)  # the bad update happened in memory ...
    trainer.restore()
    assert finite(trainer)  # ... but never reached a checkpoint


def test_on_nonfinite_restore_goes_back_and_continues_at_most_k_times(tmp_path):
    from efficientnet_tf.train.loop import Trainer

    overrides = ("train_steps=10", "steps_per_execution=2", "checkpoint_every_steps=2",
                 "on_nonfinite=restore")
    logs = []
    trainer = Trainer(tiny_config(*overrides, "max_nonfinite_restores=2"), str(tmp_path / "a"),
                      train_dataset_fn=nan_batches_fn({4, 7}), num_train_examples=64,
                      log=logs.append)
    assert trainer.train()["step"] == 10
    restored = [line for line in logs if "restored" in line]
    assert len(restored) == 2 and "at step 5" in restored[0] and "(step 4)" in restored[0]
    assert finite(trainer)
    # Batches 0-3 -> steps 1-4; batch 4 is NaN at step 5 -> back to 4; batch 5 -> step 5,
    # batch 6 -> 6, batch 7 NaN at step 7 -> back to 6; batches 8-11 -> steps 7-10.
    with open(tmp_path / "a" / "history.jsonl") as f:
        assert [json.loads(line)["step"] for line in f] == [2, 4, 6, 8, 10]

    once = Trainer(tiny_config(*overrides, "max_nonfinite_restores=1"), str(tmp_path / "b"),
                   train_dataset_fn=nan_batches_fn({4, 7}), num_train_examples=64,
                   log=lambda *_: None)
    with pytest.raises(FloatingPointError, match=r"at step 7 .*after 1 restore\(s\)"):
        once.train()
    assert tf.train.latest_checkpoint(str(tmp_path / "b")).endswith("ckpt-6")


def train_command(model_dir, *extra):
    return [sys.executable, "-m", "efficientnet_tf.train", "--config=fashion_mnist",
            "--use_synthetic_data", f"--model_dir={model_dir}", "--mode=train", "--logtostderr",
            "--override=model.width_coefficient=0.1", "--override=model.depth_coefficient=0.1",
            f"--override=data.image_size={SIZE}", "--train_batch_size=4", *extra]


def history_steps(model_dir):
    path = os.path.join(model_dir, "history.jsonl")
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line)["step"] for line in f if line.endswith("\n")]


def test_sigterm_saves_at_the_current_step_and_the_same_command_resumes(tmp_path):
    """A real SIGTERM mid-loop (1000 steps per compiled call): the loop stops at the next step,
    saves there, exits 143; rerunning the same command restores that step and finishes."""
    model_dir = str(tmp_path / "m")
    cmd = train_command(model_dir, "--train_steps=3000", "--steps_per_execution=1000",
                        "--override=checkpoint_every_steps=100000")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 300
    while 1000 not in history_steps(model_dir):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "the first loop never finished"
        time.sleep(0.1)
    time.sleep(2)  # inside the second compiled call (about 8 s long here)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 143, out[-3000:]
    saved = tf.train.latest_checkpoint(model_dir)
    step = int(saved.rsplit("-", 1)[1])
    assert 1000 < step < 2000, out[-2000:]  # not at a loop boundary: stopped inside the call
    assert f"SIGTERM at step {step}: saved {saved}" in out
    assert "Traceback" not in out
    assert history_steps(model_dir) == [1000, step]

    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Restored {saved} (step {step})" in again.stderr
    assert history_steps(model_dir) == [1000, step, step + 1000, 3000]


def test_the_sigterm_watcher_puts_the_previous_handler_back():
    from efficientnet_tf.train.preemption import SigtermWatcher

    def mine(signum, frame):
        pass

    previous = signal.signal(signal.SIGTERM, mine)
    try:
        watcher = SigtermWatcher()
        with watcher:
            assert signal.getsignal(signal.SIGTERM) != mine
            os.kill(os.getpid(), signal.SIGTERM)
            assert watcher.received.wait(5) and int(watcher.flag.numpy()) == 1
        assert signal.getsignal(signal.SIGTERM) is mine
        assert signal.set_wakeup_fd(-1) == -1  # no wakeup fd left behind
    finally:
        signal.signal(signal.SIGTERM, previous)
