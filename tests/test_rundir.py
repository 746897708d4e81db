"""A run directory is never corrupted, mixed or silently replaced: the config is the run's
identity, one trainer writes it, data belongs to its source, a resume holds each step once."""
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf

from efficientnet_tf import config as cfglib
from efficientnet_tf.rundir import RunDir, RunDirError

sys.path.insert(0, os.path.dirname(__file__))
from test_faults import (CALL, ENV, history_steps, signal_mid_loop, tiny_config,  # noqa: E402
                         train_command)


def run(cmd, timeout=300):
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=timeout)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A 4-step CLI run (checkpoints at 2 and 4)."""
    model_dir = str(tmp_path_factory.mktemp("run") / "m")
    proc = run(train_command(model_dir, "--train_steps=4", "--steps_per_execution=2",
                             "--override=checkpoint_every_steps=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    return model_dir


def test_a_restart_with_another_architecture_is_refused_and_changes_nothing(finished_run,
                                                                            tmp_path):
    config_before = read_bytes(os.path.join(finished_run, "config.yaml"))
    files_before = sorted(os.listdir(finished_run))
    proc = run(train_command(finished_run, "--train_steps=4", "--steps_per_execution=2",
                             "--override=checkpoint_every_steps=2",
                             "--override=model.width_coefficient=0.2",
                             "--override=optimizer.lr=0.3", "--precision=float16"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    assert "model.width_coefficient: 0.1 -> 0.2" in proc.stderr
    assert "optimizer.lr: 0.2 -> 0.3" in proc.stderr and "use a new --model_dir" in proc.stderr
    assert "precision: 'float32' -> 'float16'" in proc.stderr
    assert read_bytes(os.path.join(finished_run, "config.yaml")) == config_before
    assert sorted(os.listdir(finished_run)) == files_before  # no lock, no data, nothing
    export = run([sys.executable, "-m", "efficientnet_tf.export", f"--model_dir={finished_run}",
                  f"--export_dir={tmp_path / 'export'}"])
    assert export.returncode == 0, export.stderr[-3000:]
    assert tf.io.gfile.glob(str(tmp_path / "export" / "*" / "saved_model.pb"))


def test_a_restart_may_change_its_length_cadence_and_memory_savers_recorded(finished_run,
                                                                            tmp_path):
    model_dir = str(tmp_path / "m")
    shutil.copytree(finished_run, model_dir)  # a finished 4-step run, steps_per_execution 2
    config_before = read_bytes(os.path.join(model_dir, "config.yaml"))
    # Out of memory at step 4: go on with micro-batches and recomputed blocks (same updates).
    longer = run(train_command(model_dir, "--train_steps=6", "--steps_per_execution=1",
                               "--override=checkpoint_every_steps=2",
                               "--override=accumulate_steps=2", "--override=model.recompute=blocks"))
    assert longer.returncode == 0, longer.stderr[-3000:]
    assert "train_steps: 4 -> 6" in longer.stderr
    assert read_bytes(os.path.join(model_dir, "config.yaml")) == config_before  # never rewritten
    with open(os.path.join(model_dir, "restarts.jsonl")) as f:
        (record,) = [json.loads(line) for line in f]
    assert record["changes"] == {"steps_per_execution": [2, 1], "train_steps": [4, 6],
                                 "accumulate_steps": [1, 2], "model.recompute": ["none", "blocks"]}
    assert "2 micro-batches of" in longer.stderr and "recompute=blocks" in longer.stderr
    assert history_steps(model_dir) == [2, 4, 5, 6]
    assert not os.path.exists(os.path.join(model_dir, "run.lock"))  # released at the end


def test_an_eval_job_never_writes_the_run_config_and_says_when_no_checkpoint_came(
        finished_run, tmp_path):
    config_before = read_bytes(os.path.join(finished_run, "config.yaml"))
    proc = run([*train_command(finished_run, "--train_steps=4"), "--mode=eval",
                "--eval_batch_size=256"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "eval step 4" in proc.stderr
    assert read_bytes(os.path.join(finished_run, "config.yaml")) == config_before
    empty = run([*train_command(str(tmp_path / "none"), "--train_steps=4"), "--mode=eval",
                 "--eval_timeout=1"])
    assert empty.returncode == 1, empty.stderr[-3000:]
    assert "no checkpoint appeared" in empty.stderr and "Traceback" not in empty.stderr
    assert not os.path.exists(tmp_path / "none" / "config.yaml")


def test_a_second_trainer_is_refused_naming_the_holder_and_a_dead_holder_is_taken_over(
        tmp_path):
    model_dir = tmp_path / "m"
    model_dir.mkdir()
    lock = model_dir / "run.lock"
    alive = {"host": socket.gethostname(), "pid": os.getpid(), "started": "then",
             "heartbeat": time.time()}
    lock.write_text(json.dumps(alive))
    proc = run(train_command(str(model_dir), "--train_steps=2", "--steps_per_execution=2"))
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"is being trained by {socket.gethostname()} pid {os.getpid()}" in proc.stderr
    assert "Traceback" not in proc.stderr and not os.path.exists(model_dir / "config.yaml")

    dead = subprocess.Popen(["true"])
    dead.wait()
    lock.write_text(json.dumps({**alive, "pid": dead.pid}))
    proc = run(train_command(str(model_dir), "--train_steps=2", "--steps_per_execution=2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"pid {dead.pid}: its process is gone" in proc.stderr
    assert not lock.exists()


def test_the_lock_of_another_host_is_taken_over_only_when_its_heartbeat_is_old(tmp_path):
    path = tmp_path / "run.lock"
    other = {"host": "another-host", "pid": 1, "started": "then"}
    path.write_text(json.dumps({**other, "heartbeat": time.time() - 60}))
    with pytest.raises(RunDirError, match="another-host pid 1"):
        RunDir(str(tmp_path)).acquire(log=lambda *_: None)
    path.write_text(json.dumps({**other, "heartbeat": time.time() - 3600}))
    logs = []
    rundir = RunDir(str(tmp_path))
    with rundir.locked(log=logs.append):
        assert json.loads(path.read_text())["pid"] == os.getpid()
        with rundir.locked(log=logs.append):  # re-entrant in one process
            pass
        assert path.exists()
    assert not path.exists()
    assert "last heartbeat was 3600 s ago" in logs[0]


def test_a_resume_drops_history_past_the_restored_checkpoint(tmp_path):
    """kill -9 after history.jsonl got steps 3 and 4 but before ckpt-4 was complete: the
    resumed run records steps 3 and 4 once, from their second training."""
    from efficientnet_tf.train.loop import Trainer

    config = tiny_config("train_steps=4", "steps_per_execution=1", "checkpoint_every_steps=2")
    Trainer(config, str(tmp_path), log=lambda *_: None).train()
    assert history_steps(str(tmp_path)) == [1, 2, 3, 4]
    for path in tf.io.gfile.glob(str(tmp_path / "ckpt-4*")):  # ckpt-4 lost
        tf.io.gfile.remove(path)
    tf.compat.v1.train.update_checkpoint_state(str(tmp_path), str(tmp_path / "ckpt-2"))
    logs = []
    Trainer(cfglib.apply_overrides(config, ["train_steps=5"]), str(tmp_path),
            log=logs.append).train()
    assert history_steps(str(tmp_path)) == [1, 2, 3, 4, 5]
    assert any("Dropped 2 history record(s) past step 2" in line for line in logs)
    # The first call's img/s counts tracing: it says so, and later ETAs start after it.
    steps = [line for line in logs if line.startswith("step ")]
    assert [line.startswith("step 3/5") for line in steps] == [True, False, False]
    said = "(first call: includes tracing; ETA from the next line)"
    assert [said in line for line in steps] == [True, False, False]
    assert [" eta " in line for line in steps] == [False, True, True]


def test_ctrl_c_is_caught_like_sigterm_with_its_own_exit_code_and_the_handler_put_back():
    from efficientnet_tf.train.preemption import SigtermWatcher

    previous = signal.getsignal(signal.SIGINT)
    watcher = SigtermWatcher()
    with watcher:
        os.kill(os.getpid(), signal.SIGINT)  # no KeyboardInterrupt: the watcher takes it
        assert watcher.received.wait(5) and int(watcher.flag.numpy()) == 1
        assert (watcher.name, watcher.exit_code) == ("SIGINT (Ctrl-C)", 130)
    assert signal.getsignal(signal.SIGINT) is previous


@pytest.mark.slow
def test_ctrl_c_saves_at_the_current_step_exits_130_and_the_same_command_resumes(tmp_path):
    model_dir = str(tmp_path / "m")
    cmd, proc, out = signal_mid_loop(model_dir, signal.SIGINT)
    assert proc.returncode == 130, out[-3000:]
    saved = tf.train.latest_checkpoint(model_dir)
    step = int(saved.rsplit("-", 1)[1])
    assert CALL < step < 2 * CALL, out[-2000:]
    assert f"SIGINT (Ctrl-C) at step {step}: saved {saved}" in out
    assert "Traceback" not in out and "KeyboardInterrupt" not in out
    again = run(cmd)
    assert again.returncode == 0, again.stderr[-3000:]
    assert history_steps(model_dir) == [CALL, step, step + CALL, 3 * CALL]


def test_a_model_dir_or_export_dir_that_is_a_file_is_refused_before_training(tmp_path):
    (tmp_path / "file").write_text("x")
    for flag in ("--model_dir", "--export_dir"):
        args = [f"--model_dir={tmp_path / 'm'}", f"--export_dir={tmp_path / 'e'}"]
        args = [a for a in args if not a.startswith(flag)] + [f"{flag}={tmp_path / 'file'}"]
        proc = run([*train_command(str(tmp_path / "m"), "--train_steps=2"), *args])
        assert proc.returncode == 2, proc.stderr[-3000:]
        assert f"{flag}={tmp_path / 'file'} is a file, not a folder" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "m" / "config.yaml")  # nothing trained


def test_a_failed_checkpoint_write_is_a_message_naming_the_step_and_what_was_kept(tmp_path):
    from efficientnet_tf.train.loop import Trainer

    trainer = Trainer(tiny_config("train_steps=4", "steps_per_execution=2",
                                  "checkpoint_every_steps=2"), str(tmp_path), log=lambda *_: None)

    def disk_full(*args, **kwargs):
        raise tf.errors.ResourceExhaustedError(None, None, "No space left on device")

    trainer.train(total_steps=2)
    trainer.manager.save = disk_full
    with pytest.raises(RuntimeError, match=r"Could not save the checkpoint of step 4 .*No space "
                       r"left on device.*latest complete checkpoint stays .*ckpt-2"):
        trainer.train()
