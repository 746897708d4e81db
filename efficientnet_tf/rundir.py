"""The one owner of a training run's folder (model_dir), on any tf.io.gfile filesystem.

    config.yaml       the run's identity, written once when the run is created
    restarts.jsonl    each restart that changed a key allowed to change (old -> new)
    run.lock          the trainer that owns the run: host, pid, start, heartbeat
    history.jsonl     one record per training-loop call; steps past a restore are dropped
    ckpt-N.*, checkpoint   tf.train.CheckpointManager's files
    train/            TensorBoard summaries      eval/results.jsonl   continuous evaluation
    best/             the best checkpoint        data/                an image folder's TFRecords
    training_curves.png

A restart compares its config with config.yaml before anything is written or converted: keys
in RESTART_KEYS (length, cadence, input-pipeline speed, memory savers) may change and are recorded; any other
difference (architecture, classes, data, recipe, optimizer, normalization) is refused with the
keys and what to do. Eval jobs, export, evaluate and research re-evaluation only read.

The lock: a JSON file written through gfile and read back. On one host a holder whose process is
gone is taken over at once; otherwise a holder whose heartbeat (refreshed by the training loop)
is older than LOCK_TIMEOUT_S is taken over, with a log line. gs:// has no atomic create, so two
jobs that start within the same second may both read the lock as free; the read-back makes the
later writer win and the earlier one fail at its next heartbeat. TensorFlow is imported lazily.
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import time

from efficientnet_tf import config as cfglib
from efficientnet_tf import fileio

RESTART_KEYS = frozenset({
    "train_steps", "epochs", "eval_batch_size", "steps_per_execution", "checkpoint_every_steps",
    "keep_checkpoints", "resume_data", "on_nonfinite", "max_nonfinite_restores",
    "data.num_parallel_calls", "data.cycle_length", "data.cache", "data.max_bad_fraction",
    # Memory savers: the same updates in other pieces (the checkpoint does not change).
    "accumulate_steps", "model.recompute",
})
LOCK_TIMEOUT_S = 600.0
HEARTBEAT_EVERY_S = 30.0


class RunDirError(ValueError):
    """A model_dir that cannot be used as asked (the CLIs exit 2 with the message)."""


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out.update(_flat(v, f"{prefix}{k}."))
        else:
            out[prefix + k] = v
    return out


def config_changes(old: cfglib.TrainConfig, new: cfglib.TrainConfig) -> dict:
    """{dotted key: (old, new)} of every value that differs."""
    a, b = _flat(cfglib.config_to_dict(old)), _flat(cfglib.config_to_dict(new))
    return {k: (a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)}


class RunDir:
    def __init__(self, path: str):
        if not path:
            raise RunDirError("model_dir is empty: give a folder (local or gs://).")
        self.path = path
        self._lock_owned = 0
        self._last_beat = 0.0

    def join(self, *names: str) -> str:
        return os.path.join(self.path, *names)

    @property
    def config_path(self):
        return self.join("config.yaml")

    @property
    def history_path(self):
        return self.join("history.jsonl")

    @property
    def eval_results_path(self):
        return self.join("eval", "results.jsonl")

    @property
    def best_dir(self):
        return self.join("best")

    @property
    def data_dir(self):
        return self.join("data")

    @property
    def summaries_dir(self):
        return self.join("train")

    @property
    def lock_path(self):
        return self.join("run.lock")

    # ------------------------------------------------------------------ start-up checks
    def check_writable(self) -> None:
        """RunDirError when model_dir is a file or cannot be written (a probe file is made and
        removed), so a job fails at start-up rather than at its first checkpoint."""
        check_writable_dir(self.path, "--model_dir")

    def stored_config(self) -> cfglib.TrainConfig | None:
        import tensorflow as tf

        if not tf.io.gfile.exists(self.config_path):
            return None
        return cfglib.load_config(self.config_path)

    def check_config(self, config: cfglib.TrainConfig) -> dict:
        """The allowed changes against config.yaml ({} for a new run); RunDirError listing the
        others when a key that defines the run differs. Writes nothing."""
        return self._check_against(self.stored_config(), config)

    def _check_against(self, stored, config) -> dict:
        if stored is None:
            return {}
        changes = config_changes(stored, config)
        refused = {k: v for k, v in changes.items() if k not in RESTART_KEYS}
        if refused:
            lines = "; ".join(f"{k}: {old!r} -> {new!r}" for k, (old, new) in refused.items())
            raise RunDirError(
                f"{self.path} holds a run with another config ({self.config_path}): {lines}. "
                "These keys define a run and cannot change on a restart: use a new --model_dir, "
                "or give the run's own values again.")
        return changes

    def record_start(self, config: cfglib.TrainConfig) -> dict:
        """After every start-up check: writes config.yaml for a new run; for a restart,
        appends the allowed changes to restarts.jsonl (config.yaml is never rewritten).
        Returns the changes."""
        stored = self.stored_config()
        changes = self._check_against(stored, config)
        if stored is None:
            fileio.write_file(self.config_path, cfglib.dump_config(config))
        elif changes:
            fileio.append_line(self.join("restarts.jsonl"), json.dumps({
                "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                "changes": {k: [old, new] for k, (old, new) in changes.items()}}))
        return changes

    # ------------------------------------------------------------------ history
    def trim_history(self, step: int) -> int:
        """Drops history.jsonl records past `step` (the restored checkpoint's), so a resumed
        run holds each step once; returns how many were dropped."""
        records = fileio.read_jsonl(self.history_path)
        keep = [r for r in records if r.get("step", 0) <= step]
        if len(keep) != len(records):
            fileio.write_file(self.history_path, "".join(json.dumps(r) + "\n" for r in keep))
        return len(records) - len(keep)

    # ------------------------------------------------------------------ the lock
    def _read_lock(self) -> dict | None:
        return fileio.read_json(self.lock_path)

    def _me(self) -> dict:
        return {"host": socket.gethostname(), "pid": os.getpid()}

    def _is_mine(self, holder: dict | None) -> bool:
        return bool(holder) and {k: holder.get(k) for k in ("host", "pid")} == self._me()

    def _stale(self, holder: dict) -> str | None:
        """Why the lock may be taken over, or None while its holder looks alive."""
        if holder.get("host") == socket.gethostname():
            try:
                if not process_alive(int(holder.get("pid", -1))):
                    return "its process is gone"
            except (ValueError, OverflowError):
                pass
        age = time.time() - float(holder.get("heartbeat", 0))
        if age > LOCK_TIMEOUT_S:
            return f"its last heartbeat was {age:.0f} s ago (more than {LOCK_TIMEOUT_S:.0f} s)"
        return None

    def acquire(self, log=print) -> None:
        """Takes run.lock (re-entrant in one process); RunDirError naming the holder when
        another live trainer has it."""
        if self._lock_owned:
            self._lock_owned += 1
            return
        holder = self._read_lock()
        if holder and not self._is_mine(holder):
            why = self._stale(holder)
            if why is None:
                raise RunDirError(
                    f"{self.path} is being trained by {holder.get('host')} pid "
                    f"{holder.get('pid')} (started {holder.get('started')}, {self.lock_path}). "
                    "Two trainers would overwrite each other's checkpoints: wait for it, stop "
                    "it, or use another --model_dir. (Evaluation needs no lock: --mode=eval.)")
            log(f"Taking over {self.lock_path} from {holder.get('host')} pid "
                f"{holder.get('pid')}: {why}.")
        now = time.time()
        fileio.write_file(self.lock_path, json.dumps({
            **self._me(), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "heartbeat": now}))
        if not self._is_mine(self._read_lock()):
            raise RunDirError(f"{self.lock_path}: another trainer took the lock at the same "
                              "moment; use another --model_dir or retry.")
        self._lock_owned, self._last_beat = 1, now

    def heartbeat(self) -> None:
        """Refreshes the lock's heartbeat (at most every HEARTBEAT_EVERY_S)."""
        if not self._lock_owned or time.time() - self._last_beat < HEARTBEAT_EVERY_S:
            return
        holder = self._read_lock()
        if not self._is_mine(holder):
            raise RunDirError(f"{self.lock_path} was taken over by {(holder or {}).get('host')} "
                              f"pid {(holder or {}).get('pid')}: this trainer stops.")
        self._last_beat = holder["heartbeat"] = time.time()
        fileio.write_file(self.lock_path, json.dumps(holder))

    def release(self) -> None:
        import tensorflow as tf

        if not self._lock_owned:
            return
        self._lock_owned -= 1
        if self._lock_owned == 0 and self._is_mine(self._read_lock()):
            tf.io.gfile.remove(self.lock_path)

    @contextlib.contextmanager
    def locked(self, log=print):
        self.acquire(log)
        try:
            yield self
        finally:
            self.release()


def process_alive(pid: int) -> bool:
    """Whether process `pid` runs on this host (another user's process counts as running)."""
    if pid <= 0:  # os.kill would address a process group, not a process
        raise ValueError(f"not a process id: {pid}")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def check_writable_dir(path: str, what: str) -> None:
    """RunDirError when `path` is a file or cannot be created and written (a probe file). A
    folder the check had to create is removed again: a refused command leaves nothing."""
    import tensorflow as tf

    try:
        if tf.io.gfile.exists(path) and not tf.io.gfile.isdir(path):
            raise RunDirError(f"{what}={path} is a file, not a folder: give a folder path.")
        created = None  # the highest folder the check makes
        parent = path.rstrip("/")
        while parent and not tf.io.gfile.exists(parent):
            created, up = parent, os.path.dirname(parent)
            if up == parent or ("://" in parent and up.count("/") < 2):  # a scheme's root
                break
            parent = up
        tf.io.gfile.makedirs(path)
        probe = os.path.join(path, f".write-probe-{os.getpid()}")
        with tf.io.gfile.GFile(probe, "w") as f:
            f.write("probe")
        tf.io.gfile.remove(probe)
        if created:
            tf.io.gfile.rmtree(created)
    except (tf.errors.OpError, OSError) as e:
        raise RunDirError(f"{what}={path} cannot be written ({type(e).__name__}: "
                          f"{str(e).splitlines()[0][:200]}): give a folder you can write to."
                          ) from None
