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

from conftest import tiny_config as base_tiny_config
from efficientnet_tf import config as cfglib

ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}
SIZE = 16


def tiny_config(*extra):
    return base_tiny_config(
        f"data.image_size={SIZE}", "data.synthetic=true", "train_batch_size=4",
        "eval_batch_size=4", "seed=2", "optimizer.warmup_epochs=0", *extra)


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


CALL = 200  # steps per compiled call of the signalled runs


def signal_mid_loop(model_dir, signum):
    """Starts a 3 * CALL-step CLI run (CALL steps per compiled call) and sends `signum` inside
    its second call; returns (the command, the finished process, its output)."""
    cmd = train_command(model_dir, f"--train_steps={3 * CALL}", f"--steps_per_execution={CALL}",
                        "--override=checkpoint_every_steps=100000")
    proc = subprocess.Popen(cmd, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline = time.time() + 300
    while CALL not in history_steps(model_dir):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "the first loop never finished"
        time.sleep(0.1)
    time.sleep(0.3)  # inside the second compiled call (1.6-4.6 s long here, 8-23 ms a step)
    proc.send_signal(signum)
    out, _ = proc.communicate(timeout=120)
    return cmd, proc, out


def test_sigterm_saves_at_the_current_step_and_the_same_command_resumes(tmp_path):
    """A real SIGTERM mid-loop (CALL steps per compiled call): the loop stops at the next step,
    saves there, exits 143; rerunning the same command restores that step and finishes."""
    model_dir = str(tmp_path / "m")
    cmd, proc, out = signal_mid_loop(model_dir, signal.SIGTERM)
    assert proc.returncode == 143, out[-3000:]
    saved = tf.train.latest_checkpoint(model_dir)
    step = int(saved.rsplit("-", 1)[1])
    assert CALL < step < 2 * CALL, out[-2000:]  # not at a loop boundary: stopped in the call
    assert f"SIGTERM at step {step}: saved {saved}" in out
    assert "Traceback" not in out
    assert history_steps(model_dir) == [CALL, step]

    again = subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, again.stderr[-3000:]
    assert f"Restored {saved} (step {step})" in again.stderr
    assert history_steps(model_dir) == [CALL, step, step + CALL, 3 * CALL]


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


# ---------------------------------------------------------------- bad records
sys.path.insert(0, os.path.dirname(__file__))
import tiny_records  # noqa: E402

BAD = {1: b"not an image at all", 6: b"", 9: tiny_records.jpeg(9)[:150]}  # junk, empty, truncated


def records_config(data_dir, *extra):
    return cfglib.apply_overrides(cfglib.load_config("fashion_mnist"),
                                  tiny_records.overrides(data_dir) + list(extra))


def test_undecodable_images_are_dropped_before_batching_and_counted_exactly(tmp_path):
    from efficientnet_tf.data.pipeline import build_dataset

    tiny_records.write_records(str(tmp_path), n_train=16, bad=BAD)
    config = records_config(str(tmp_path)).data
    counts = tf.Variable([0, 0], dtype=tf.int64)
    ds = build_dataset(config, "train", 4, repeat=False, counts=counts)
    assert ds.element_spec[0].shape.as_list() == [4, SIZE, SIZE, 3]  # static, full batches
    labels = np.concatenate([labels.numpy() for _, labels in ds])
    assert len(labels) == 12  # 13 good images -> 3 full batches
    assert counts.numpy().tolist() == [16, 3]  # read, skipped: exactly the 3 bad records


def test_a_jpeg_corrupt_inside_is_dropped_named_and_counted(tmp_path, capfd):
    from efficientnet_tf.data.pipeline import build_dataset

    broken = tiny_records.jpeg_corrupt_inside(3)
    with pytest.raises(tf.errors.InvalidArgumentError):  # what used to stop the job
        tf.io.decode_jpeg(broken)
    tiny_records.write_records(str(tmp_path), n_train=16, bad={3: broken},
                               val_bad={2: tiny_records.jpeg_corrupt_inside(1002)})
    config = records_config(str(tmp_path)).data
    counts = tf.Variable([0, 0], dtype=tf.int64)
    train = build_dataset(config, "train", 4, repeat=False, counts=counts)
    assert train.element_spec[0].shape.as_list() == [4, SIZE, SIZE, 3]  # static, full batches
    labels = np.concatenate([labels.numpy() for _, labels in train])
    # The batch holding the broken record is left out whole (batches stay full).
    assert len(labels) == 12 and counts.numpy().tolist() == [16, 1]
    err = capfd.readouterr().err
    assert f"skipped record 1 of {tmp_path / 'train-00001-of-00002'}: the image decoder" in err

    # Records parsed once and cached (data.cache, as here): counted once, however many epochs.
    assert config.cache
    counts.assign([0, 0])
    epochs = iter(build_dataset(config, "train", 4, counts=counts))
    for _ in range(3 * 3):  # three epochs of 3 full batches
        next(epochs)
    assert counts.numpy().tolist() == [16, 1]

    counts.assign([0, 0])
    evaluated = build_dataset(config, "validation", 4, counts=counts)
    labels = np.concatenate([labels.numpy() for _, labels in evaluated])
    assert len(labels) == 7 and counts.numpy().tolist() == [8, 1]  # the 7 others evaluated
    assert f"skipped record 2 of {tmp_path / 'validation-00000-of-00001'}" in capfd.readouterr().err


def test_training_skips_bad_images_reports_them_and_stops_above_the_fraction(tmp_path):
    from efficientnet_tf.train.loop import BadDataError, Trainer

    data = str(tmp_path / "data")
    tiny_records.write_records(data, n_train=16, bad=BAD, val_bad={
        0: b"", 3: b"junk", 5: tiny_records.jpeg_corrupt_inside(5)})
    logs = []
    config = records_config(data, "data.max_bad_fraction=0.25")
    trainer = Trainer(config, str(tmp_path / "ok"), log=logs.append)
    assert trainer.train()["step"] == 4
    with open(tmp_path / "ok" / "history.jsonl") as f:
        counts = [json.loads(line)["skipped_records"] for line in f]
    assert counts[-1] >= 3, counts  # a pass over the 16 records at least (the input reads ahead)
    assert any("skipped" in line and "bad images" in line for line in logs)
    events = tf.io.gfile.glob(str(tmp_path / "ok" / "train" / "events.out.tfevents.*"))
    tags = {v.tag for e in tf.compat.v1.train.summary_iterator(events[0]) for v in e.summary.value}
    assert "data/skipped_records" in tags
    result = trainer.evaluate()
    assert result["examples"] == 5 and result["skipped"] == 3  # accuracy over the 5 good ones

    strict = Trainer(records_config(data, "data.max_bad_fraction=0.1"), str(tmp_path / "strict"),
                     log=lambda *_: None)
    with pytest.raises(BadDataError, match=r"undecodable .* more than data.max_bad_fraction=0.1"):
        strict.train()


def test_a_truncated_tfrecord_file_loses_only_its_rest_with_a_warning_naming_it(tmp_path, capfd):
    from efficientnet_tf.data.pipeline import build_dataset

    tiny_records.write_records(str(tmp_path), n_train=16)
    shard = tmp_path / "train-00001-of-00002"  # records 1, 3, ..., 15
    data = shard.read_bytes()
    shard.write_bytes(data[:len(data) * 5 // 8])  # cuts the 5th record
    ds = build_dataset(records_config(str(tmp_path)).data, "train", 1, repeat=False)
    n = sum(1 for _ in ds)
    assert n == 8 + 4  # all of the intact file, the 4 whole records of the cut one
    err = capfd.readouterr().err
    assert f'TFRecord file "{shard}" is truncated or corrupt' in err
    assert "train-00000-of-00002" not in err


@pytest.mark.slow
def test_sigterm_to_one_of_two_multi_worker_processes_stops_both_at_the_same_step(tmp_path):
    """MultiWorkerMirroredStrategy, 2 processes: SIGTERM to the non-chief only; both stop at the
    same step, both save there (collectives would hang otherwise), both exit 143; a restart of
    both restores that step."""
    from test_train import WORKER, _free_ports

    workers = [f"127.0.0.1:{p}" for p in _free_ports(2)]
    model_dir = tmp_path / "mwms"

    def start(steps):
        procs = []
        for index in range(2):
            tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
            env = {**ENV, "TF_CONFIG": json.dumps(tf_config)}
            procs.append(subprocess.Popen(
                [sys.executable, WORKER, str(model_dir), str(steps), "multi_worker_mirrored",
                 "--ckpt_every=100000", "--log"], env=env, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True))
        return procs

    procs = start(100000)
    deadline = time.time() + 300
    while len(history_steps(str(model_dir))) < 20:
        assert all(p.poll() is None for p in procs), procs[0].stdout.read()[-3000:]
        assert time.time() < deadline
        time.sleep(0.1)
    procs[1].send_signal(signal.SIGTERM)
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [143, 143], outs[0][-2000:] + outs[1][-2000:]
    chief = tf.train.latest_checkpoint(str(model_dir))
    step = int(chief.rsplit("-", 1)[1])
    other = tf.train.latest_checkpoint(str(model_dir / ".worker-1"))
    assert other.endswith(f"ckpt-{step}")
    assert all(f"SIGTERM at step {step}" in out for out in outs)

    procs = start(step + 3)
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:]
    assert f"Restored {chief} (step {step})" in outs[0]
    assert history_steps(str(model_dir))[-3:] == [step + 1, step + 2, step + 3]
