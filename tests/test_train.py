"""The training job: XLA/bf16 step, exact resume after kill -9, distributed equivalence, errors.

Distributed runs and kills happen in subprocesses (tests/train_worker.py): logical CPU devices
and TF_CONFIG must be set before TensorFlow starts.
"""
import json
import os
import signal
import socket
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_config
from efficientnet_tf import config as cfglib
from efficientnet_tf.train.strategy import check_tf_config, per_replica_batch_size

WORKER = os.path.join(os.path.dirname(__file__), "train_worker.py")
ENV = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "CUDA_VISIBLE_DEVICES": ""}


def run_worker(model_dir, steps, strategy="default", *extra, env=None, wait=True):
    cmd = [sys.executable, WORKER, str(model_dir), str(steps), strategy, *extra]
    proc = subprocess.Popen(cmd, env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-3000:]
    with open(os.path.join(model_dir, "result.json")) as f:
        return json.load(f)


def assert_weights_close(a, b, atol):
    assert len(a) == len(b)
    for i, (x, y) in enumerate(zip(a, b)):
        np.testing.assert_allclose(np.array(x, dtype=np.float64), np.array(y, dtype=np.float64),
                                   atol=atol, err_msg=f"weight {i}")


@pytest.fixture(scope="module")
def single_run(tmp_path_factory):
    return run_worker(tmp_path_factory.mktemp("single"), 6, "default", "--sync_bn")


def test_one_training_step_under_xla_with_bfloat16(tmp_path):
    from efficientnet_tf.train.loop import Trainer

    config = tiny_config(
        "data.synthetic=true",
        "train_batch_size=4", "eval_batch_size=4", "train_steps=1", "use_bfloat16=true",
        "optimizer.warmup_epochs=0",  # the warm-up starts at lr 0: no change at step 1
        "steps_per_execution=1", "seed=1")
    try:
        trainer = Trainer(config, str(tmp_path), jit_compile=True, num_train_examples=64,
                          log=lambda *_: None)
        assert trainer.model.get_layer("stem_conv").compute_dtype == "bfloat16"
        # The bfloat16 policy was scoped to building the model: nothing leaks into export.
        assert keras.config.dtype_policy().name == "float32"
        before = [w.numpy().copy() for w in trainer.model.trainable_weights]
        trainer.train()
        assert int(trainer.optimizer.iterations.numpy()) == 1
        changed = sum(not np.array_equal(b, w.numpy())
                      for b, w in zip(before, trainer.model.trainable_weights))
        assert changed > len(before) // 2
        with open(tmp_path / "history.jsonl") as f:
            rec = json.loads(f.readline())
        assert np.isfinite(rec["loss"]) and rec["loss"] > 0
    finally:
        keras.mixed_precision.set_global_policy("float32")


def _lines(path):
    return path.read_text().splitlines() if path.exists() else []


def _wait_for(proc, done, what, timeout=300):
    deadline = time.time() + timeout
    while not done():
        assert proc.poll() is None, f"worker ended before {what}: " + proc.stdout.read()[-2000:]
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


def _kill_9_and_resume(tmp_path, kills):
    """kill -9 at each moment of `kills` ("save": inside a checkpoint save, widened by
    --slow_save; "step": between steps), restarting after each; the resumed run must end with
    an uninterrupted run's weights."""
    steps, slow = 14, 2.0
    full = run_worker(tmp_path / "full", steps, "default", "--drop=0.2")
    model_dir = tmp_path / "killed"
    history, saving = model_dir / "history.jsonl", model_dir / "saving"
    rng = np.random.default_rng(5)
    killed_at = []
    for kill, where in enumerate(kills):
        proc = run_worker(model_dir, steps, "default", "--drop=0.2", f"--slow_save={slow}",
                          wait=False)
        saves, trained = len(_lines(saving)), len(_lines(history))
        if where == "save":  # a save beyond step 2, so the first kill leaves a checkpoint behind
            _wait_for(proc, lambda: len(_lines(saving)) > saves
                      and int(_lines(saving)[-1].rsplit("-", 1)[1]) >= 4, "a checkpoint save")
            time.sleep(rng.uniform(0, 0.6))  # inside the save's 2 s window, 1.4 s left for delays
        else:
            _wait_for(proc, lambda: len(_lines(history)) > trained + 1, "a trained step")
            time.sleep(rng.uniform(0, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL, f"kill {kill}: the worker had already ended"
        assert not (model_dir / "result.json").exists()
        latest = tf.train.latest_checkpoint(str(model_dir))
        killed_at.append(int(latest.rsplit("-", 1)[1]))
        assert killed_at[-1] < steps
        if where == "save":  # the save in flight is not the latest: its state was not recorded
            assert latest != _lines(saving)[-1]
    assert killed_at[0] >= 2 and (len(kills) == 1 or killed_at[-1] > killed_at[0]), killed_at

    resumed = run_worker(model_dir, steps, "default", "--drop=0.2")
    assert resumed["step"] == steps
    seen = [json.loads(line)["step"] for line in _lines(history)]
    # Each restart continued after a checkpoint: step 1 was trained once, not again.
    assert seen.count(1) == 1 and killed_at[0] + 1 in seen
    # Same data stream (replayed), restored RNG, optimizer and EMA state: the same weights.
    # Tolerance: CPU kernels are deterministic here; 1e-6 leaves room for summation order.
    assert_weights_close(resumed["weights"], full["weights"], atol=1e-6)
    assert_weights_close(resumed["ema"], full["ema"], atol=1e-6)
    np.testing.assert_allclose(resumed["losses"][-1], full["losses"][-1], rtol=1e-5)


def test_kill_9_inside_a_checkpoint_save_then_the_run_matches_an_uninterrupted_one(tmp_path):
    """The fast set's kill -9: once, inside a save (the five-kill run below is slow)."""
    _kill_9_and_resume(tmp_path, ["save"])


@pytest.mark.slow
def test_kill_9_five_times_at_random_moments_then_the_run_matches_an_uninterrupted_one(tmp_path):
    """kill -9 at five moments (three inside checkpoint saves, two between steps)."""
    _kill_9_and_resume(tmp_path, ["save", "step", "save", "step", "save"])


def test_mirrored_two_replicas_match_single_replica(tmp_path, single_run):
    mirrored = run_worker(tmp_path / "mirrored", 6, "mirrored", "--cpus=2", "--sync_bn")
    # Same global batches, synchronized BN, no dropout: identical math up to float
    # reduction order; losses agree to 1e-4 relative over 6 steps.
    np.testing.assert_allclose(mirrored["losses"], single_run["losses"], rtol=1e-4)
    assert_weights_close(mirrored["weights"], single_run["weights"], atol=1e-4)


def test_float16_with_accumulation_on_two_replicas(tmp_path):
    """MirroredStrategy: float16 with accumulated micro-batches equals one replica (a scale
    that never overflows here); and a forced overflow is skipped on both replicas alike (the
    decision is all-reduced: a replica that went on alone would hang the next all-reduce)."""
    more = ["--sync_bn", "--override=precision=float16", "--override=accumulate_steps=2",
            "--override=loss_scale_initial=256"]
    one = run_worker(tmp_path / "one", 3, "default", *more)
    two = run_worker(tmp_path / "two", 3, "mirrored", "--cpus=2", *more, "--then_overflow=2")
    assert one["skipped_steps"] == two["skipped_steps"] == 0
    # float16 rounding differs with the per-replica batch: agreement to a few 1e-3.
    np.testing.assert_allclose(two["losses"], one["losses"], rtol=5e-3)
    assert_weights_close(two["weights"], one["weights"], atol=3e-3)
    # Then the scale is set to 2^24 and the same compiled step trains 2 more steps.
    forced = two["overflow"]
    assert forced["skipped_steps"] >= 1 and forced["step"] == 5 and forced["finite"]
    assert forced["loss_scale"] == 2 ** 24 / 2 ** forced["skipped_steps"]
    assert forced["losses"][0] is None  # the first call's only step was skipped


@pytest.mark.slow
def test_bn_groups_of_two_on_four_replicas_match_per_replica_bn_on_two(tmp_path):
    """Slow (three 4-CPU training processes); the fast set checks the same group statistics
    in one process: tests/test_batch_norm.py (BatchNorm groups under a 4-replica
    MirroredStrategy against BN over each group's concatenated batch).
    Global batch 8: on 4 replicas with BN groups {0,1}, {2,3} each group normalizes the same
    4 images as one replica of a 2-replica run with per-replica BN, so the runs must agree."""
    grouped = run_worker(tmp_path / "grouped", 4, "mirrored", "--cpus=4", "--bn_group=2")
    pairs = run_worker(tmp_path / "pairs", 4, "mirrored", "--cpus=2", "--bn_group=1")
    per_replica = run_worker(tmp_path / "per_replica", 4, "mirrored", "--cpus=4", "--bn_group=1")
    np.testing.assert_allclose(grouped["losses"], pairs["losses"], rtol=1e-4)
    assert_weights_close(grouped["weights"], pairs["weights"], atol=1e-4)
    # ... and differ from per-replica BN on 4 (2 images per BN batch), so the check has teeth.
    assert max(abs(a - b) for a, b in zip(grouped["losses"], per_replica["losses"])) > 1e-3


def _free_ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def test_the_chief_of_a_cluster_is_the_chief_task_else_worker_0():
    """The fast set's multi-worker check (the two-process runs are slow): which task holds the
    lock, writes the checkpoints that stay, the history and the export."""
    import types

    from efficientnet_tf.train.loop import _is_chief

    def task(cluster, task_type, task_id):
        resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(
            tf.train.ClusterSpec(cluster), task_type=task_type, task_id=task_id)
        return _is_chief(types.SimpleNamespace(cluster_resolver=resolver))

    workers = {"worker": ["h0:1", "h1:1"]}
    assert task(workers, "worker", 0) and not task(workers, "worker", 1)
    with_chief = {"chief": ["c:1"], **workers}
    assert task(with_chief, "chief", 0) and not task(with_chief, "worker", 0)
    assert _is_chief(types.SimpleNamespace()) and _is_chief(tf.distribute.get_strategy())


@pytest.mark.slow
def test_multi_worker_mirrored_two_processes_match_single_replica(tmp_path, single_run):
    """Slow (two training processes); the fast set has the same math on two replicas in one
    process (test_mirrored_two_replicas_match_single_replica) and the chief rule
    (test_the_chief_of_a_cluster_is_the_chief_task_else_worker_0)."""
    ports = _free_ports(2)
    workers = [f"127.0.0.1:{p}" for p in ports]
    model_dir = tmp_path / "mwms"
    procs = []
    for index in range(2):
        tf_config = {"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}}
        env = {**ENV, "TF_CONFIG": json.dumps(tf_config)}
        procs.append(run_worker(model_dir, 6, "multi_worker_mirrored", "--sync_bn", env=env,
                                wait=False))
    for p in procs:
        out, _ = p.communicate(timeout=600)
        assert p.returncode == 0, out[-3000:]
    with open(model_dir / "result.json") as f:
        mwms = json.load(f)
    np.testing.assert_allclose(mwms["losses"], single_run["losses"], rtol=1e-4)
    assert_weights_close(mwms["weights"], single_run["weights"], atol=1e-4)
    # Only the chief's checkpoints stay in model_dir.
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-6")


def test_continuous_eval_records_best_checkpoint(tmp_path):
    from efficientnet_tf.train.continuous_eval import continuous_eval
    from efficientnet_tf.train.loop import Trainer

    config = tiny_config(
        "data.synthetic=true",
        "data.synthetic_examples=32", "train_batch_size=8", "eval_batch_size=8",
        "train_steps=4", "steps_per_execution=2", "checkpoint_every_steps=2", "seed=3")
    trainer = Trainer(config, str(tmp_path), log=lambda *_: None)
    trainer.train()
    evaluator = Trainer(config, str(tmp_path), log=lambda *_: None)
    best = continuous_eval(evaluator, timeout=1)
    assert best["step"] == 4 and 0.0 <= best["top1"] <= 1.0 and best["ema"] is True
    with open(tmp_path / "eval" / "results.jsonl") as f:
        results = [json.loads(line) for line in f]
    assert results[-1]["examples"] == 32
    reader = tf.train.load_checkpoint(best["checkpoint"])
    assert reader.get_variable_to_shape_map()


def test_batch_and_tf_config_errors_say_what_to_change():
    class Fake:
        num_replicas_in_sync = 3

    with pytest.raises(ValueError, match="not divisible by the 3 replicas; use 126 or 129"):
        per_replica_batch_size(128, Fake())
    with pytest.raises(ValueError, match="TF_CONFIG"):
        check_tf_config(None)
    with pytest.raises(ValueError, match="not valid JSON"):
        check_tf_config("{nope")


@pytest.mark.parametrize("args, message", [
    (["--model_name=efficientnet-b9"], "Did you mean efficientnet-b8"),
    (["--config=efficientnet-b0", "--use_synthetic_data", "--override=model.model_name=efficientnet-b9"],
     "Unknown EfficientNet variant"),
    (["--config=fashion_mnist", "--data_dir={tmp}/empty"], "train-*"),
    (["--config=fashion_mnist", "--data_dir={tmp}/empty", "--mode=train"],
     "or synthetic data (data.synthetic=true; --use_synthetic_data on the command line)"),
    (["--config=fashion_mnist", "--use_synthetic_data", "--train_batch_size=0"], "batch"),
    (["--config=fashion_mnist", "--train_batch_size=6", "--override=accumulate_steps=4"],
     "(in fashion_mnist with --train_batch_size=6 --override=accumulate_steps=4)"),
    (["--config=fashion_mnist", "--use_synthetic_data", "--override=optimizer.lrr=1"], "optimizer.lr"),
])
def test_entry_point_stops_at_start_up_with_a_clear_message(tmp_path, args, message):
    (tmp_path / "empty").mkdir()
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    proc = subprocess.run([sys.executable, "-m", "efficientnet_tf.train",
                           f"--model_dir={tmp_path}/m", *args], env=ENV, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "error:" in proc.stderr and message in proc.stderr, proc.stderr[-2000:]
    assert not (tmp_path / "m").exists()  # refused before anything was written



def _nodes_in(graph_def, dtype):
    """Names of the nodes (functions included) that compute in or output `dtype`."""
    enum = dtype.as_datatype_enum
    nodes = list(graph_def.node) + [n for f in graph_def.library.function for n in f.node_def]
    return [n.name for n in nodes for a in n.attr.values()
            if a.type == enum or enum in a.list.type]


@pytest.mark.parametrize("precision", ["bfloat16", "float16"])
def test_export_after_a_mixed_precision_run_computes_in_float32_and_leaves_no_global_state(
        tmp_path, precision):
    import random

    from tensorflow.core.protobuf import saved_model_pb2

    from efficientnet_tf.export import export_saved_model, load_model_for_export
    from efficientnet_tf.train.loop import Trainer

    config = tiny_config(
        "data.synthetic=true",
        "data.image_size=16", "train_batch_size=4", "eval_batch_size=4", "train_steps=1",
        f"precision={precision}", "steps_per_execution=1", "seed=1")
    # Draws from every global generator, without and then with a seeded Trainer in between.
    def draws():
        return (random.random(), np.random.rand(), float(tf.random.uniform([])),
                float(keras.random.uniform([])))

    keras.utils.set_random_seed(5)
    expected = draws()
    keras.utils.set_random_seed(5)
    trainer = Trainer(config, str(tmp_path / "m"), num_train_examples=16, log=lambda *_: None)
    assert draws() == expected  # the trainer's seed=1 did not leak out
    assert keras.config.dtype_policy().name == "float32"
    trainer.train()
    cfglib.save_config(config, str(tmp_path / "m"))
    spec = tf.TensorSpec([1, 16, 16, 3], tf.float32)
    trained = tf.function(lambda x: trainer.model(x, training=False)).get_concrete_function(spec)
    dtype = tf.as_dtype(precision)
    assert _nodes_in(trained.graph.as_graph_def(), dtype)  # the check sees it when present

    loaded = load_model_for_export(str(tmp_path / "m"))
    path = export_saved_model(loaded.model, str(tmp_path / "export"), outputs_are_logits=True)
    proto = saved_model_pb2.SavedModel()
    with open(os.path.join(path, "saved_model.pb"), "rb") as f:
        proto.ParseFromString(f.read())
    graph = proto.meta_graphs[0].graph_def
    assert len(graph.library.function) > 3
    assert _nodes_in(graph, dtype) == []
    images = tf.random.stateless_uniform([1, 16, 16, 3], [1, 2], 0, 255)
    served = tf.saved_model.load(path).signatures["serving_float"](images=images)
    float32 = tf.nn.softmax(loaded.model(images, training=False))
    np.testing.assert_allclose(served["probabilities"].numpy(), float32.numpy(), atol=1e-6)


def test_every_file_of_a_run_goes_through_gfile_to_ram_and_none_is_written_locally(tmp_path):
    """ram:// stands in for gs://: a file opened with open()/os would land in a local 'ram:'."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    job = os.path.join(os.path.dirname(__file__), "ram_job.py")
    proc = subprocess.run([sys.executable, job], cwd=cwd, env=ENV, capture_output=True,
                          text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.split("RESULT", 1)[1])
    files = set(out["files"])
    model = "ram://job/model"
    for name in ("config.yaml", "history.jsonl", "training_curves.png", "checkpoint",
                 "ckpt-4.index", "eval/results.jsonl", "best/best.json", "best/ckpt-4.index"):
        assert f"{model}/{name}" in files, sorted(files)
    assert any(f.startswith(f"{model}/train/events.out.tfevents") for f in files)
    assert "ram://job/export/1/saved_model.pb" in files
    assert not [f for f in files if ".tmp" in f], sorted(files)  # temporaries renamed away
    assert out["best"]["checkpoint"] == f"{model}/best/ckpt-4"
    assert out["class_name"].startswith("class")  # labels.txt read from ram://job/data
    assert list(cwd.iterdir()) == []
