"""bench/accelerator.py (the GPU benchmark) in its --smoke form on CPU JAX: throughput rows for
our B0 and keras.applications' B0, timm rows skipped with the reason when torch/timm are missing,
the table on stdout, the JSON written whole, and TensorFlow never imported."""
import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(REPO, "bench", "accelerator.py")
HAS_JAX = importlib.util.find_spec("jax") is not None
HAS_TORCH = all(importlib.util.find_spec(m) is not None for m in ("torch", "timm"))


@pytest.fixture
def needs_jax():
    """jax is in the test extras: its absence is an install problem, said as a failure."""
    if not HAS_JAX:
        pytest.fail('jax is not installed: pip install "jax[cpu]" (or pip install -e .[test])')


def run(out_dir, *flags, returncode=0):
    env = {**os.environ, "KERAS_BACKEND": "jax", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, SCRIPT, "--output_dir", str(out_dir), *flags],
                          env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == returncode, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert os.listdir(out_dir) == ["accelerator.json"]  # no temp or worker files left
    with open(os.path.join(out_dir, "accelerator.json")) as f:
        data = json.load(f)
    assert data["finished"] is True and data["tensorflow_imported"] is False
    return proc.stdout, data


def rows_of(data, model):
    return {(r["mode"], r["dtype"], r["batch"]): r for r in data["rows"] if r["model"] == model}


def assert_measured(data, model, dtypes=("float32", "bfloat16")):
    rows = rows_of(data, model)
    assert set(rows) == {(mode, d, 2) for mode in ("train", "infer") for d in dtypes}, rows
    for (mode, dtype, _), r in rows.items():
        assert r["status"] == "ok", r
        assert r["framework"] == "jax" and r["compile"] == "xla (jax.jit)"
        assert r["compute_dtype"] == dtype  # bf16 rows really ran under mixed_bfloat16
        assert math.isfinite(r["images_per_s"]) and r["images_per_s"] > 0, r
        assert len(r["repeats_images_per_s"]) == data["settings"]["repeats"] == 1
        # images/s agrees with the step time: batch 2 per step
        assert r["images_per_s"] == pytest.approx(2000 / r["step_ms"], rel=0.01)
        assert r["warmup_s"] > 0
    assert data["dtype_policy_after"] == "float32"  # the policy is restored after the builds


def assert_timm_skipped(data, reason):
    rows = rows_of(data, "timm")
    assert len(rows) == 2 * len(data["settings"]["dtypes"]), rows
    for r in rows.values():
        assert r["status"] == "skipped" and reason in r["error"], r
        assert "images_per_s" not in r


def table_lines(stdout, model):
    head = stdout.index("model  framework  mode")
    return [line.split() for line in stdout[head:].splitlines()[2:] if line.startswith(model)]


@pytest.mark.usefixtures("needs_jax")
@pytest.mark.slow  # 4 train-step compiles by XLA on the CPU: ~2-4 min on a shared 2-core host
def test_smoke_run(tmp_path):
    stdout, data = run(tmp_path, "--smoke")
    assert data["smoke"] and data["settings"]["image_size"] == 32
    assert data["devices"]["jax_backend"] == "cpu"
    assert {"jax", "keras", "efficientnet_tf"} <= set(data["versions"])
    for model in ("ours", "keras"):
        assert_measured(data, model)
        lines = table_lines(stdout, model)
        assert len(lines) == 4 and all(float(line[5]) > 0 for line in lines), stdout
    if not HAS_TORCH:
        assert_timm_skipped(data, "torch/timm not importable")
        assert "torch" not in data["versions"]
    assert len(table_lines(stdout, "timm")) == 4


@pytest.mark.usefixtures("needs_jax")
def test_smoke_ours_bfloat16(tmp_path):
    """The fast set's share of the smoke run: our B0 in mixed bfloat16 (one train compile)."""
    stdout, data = run(tmp_path, "--smoke", "--models", "ours,timm", "--dtypes", "bfloat16")
    assert_measured(data, "ours", dtypes=("bfloat16",))
    assert not rows_of(data, "keras")
    if not HAS_TORCH:
        assert_timm_skipped(data, "torch/timm not importable")
    lines = table_lines(stdout, "ours")
    assert len(lines) == 2 and all(float(line[5]) > 0 for line in lines), stdout


@pytest.mark.skipif(HAS_TORCH, reason="torch and timm are installed: the rows would run")
def test_timm_rows_say_why_they_are_skipped(tmp_path):
    stdout, data = run(tmp_path, "--smoke", "--models", "timm")
    assert_timm_skipped(data, "No module named")
    assert "jax" not in data["versions"]  # --models timm never touches the JAX side
    assert len(table_lines(stdout, "timm")) == 4 and "skipped: torch/timm" in stdout


@pytest.mark.usefixtures("needs_jax")
def test_time_budget_skips_rows_and_the_run_still_reports(tmp_path):
    stdout, data = run(tmp_path, "--smoke", "--models", "ours,timm", "--time_budget_s", "0.001")
    assert len(data["rows"]) == 8
    assert all(r["status"] == "skipped" and "time budget" in r["error"] for r in data["rows"])
    assert "skipped: time budget" in stdout


@pytest.mark.usefixtures("needs_jax")
def test_full_run_refuses_a_cpu_backend(tmp_path):
    # Every row refused: the table and JSON are still written, and the exit code says it failed.
    _, data = run(tmp_path, "--models", "ours", "--dtypes", "float32", "--batch_sizes", "1",
                  returncode=1)
    assert data["settings"]["image_size"] == 224 and data["settings"]["train_batch"] == 256
    rows = rows_of(data, "ours")
    assert set(rows) == {("train", "float32", 256), ("infer", "float32", 1)}
    assert all(r["status"] == "error" and "JAX sees no GPU" in r["error"]
               for r in rows.values()), rows


@pytest.mark.parametrize("flags, message", [
    (["--dtypes", "float16"], "--dtypes takes a subset of float32,bfloat16; got float16"),
    (["--models", "ours,foo"], "--models takes a subset of ours,keras,timm; got ours,foo"),
    (["--models", ","], "--models takes a subset of ours,keras,timm; got nothing"),
    (["--batch_sizes", "1,0"], "every --batch_sizes value must be >= 1"),
    (["--batch_sizes", "x"], "--batch_sizes takes integers separated by commas"),
    (["--train_batch", "0"], "--train_batch, --image_size and every"),
])
def test_bad_arguments_name_the_flag_and_what_it_takes(flags, message, capsys):
    spec = importlib.util.spec_from_file_location("accelerator_args", SCRIPT)
    accelerator = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(accelerator)  # argparse only: no JAX, Keras or torch at import
    with pytest.raises(SystemExit) as e:
        accelerator.parse_args(["--output_dir", "x", "--smoke", *flags])
    assert e.value.code == 2 and message in capsys.readouterr().err
