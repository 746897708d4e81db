"""EfficientNet-B0 throughput on one GPU: ours and keras.applications' on Keras 3 + JAX, and
timm's tf_efficientnet_b0 in PyTorch; writes JSON and prints a table. Never imports TensorFlow.

What it measures (224 px, synthetic in-memory batches, images/s):
  * training step at batch 256, float32 and mixed bfloat16 (Keras policy "mixed_bfloat16" set
    only while the model is built), SGD (momentum 0.9), softmax cross-entropy on random labels;
  * inference at batch 1, 32 and 256, float32 and mixed bfloat16;
  * for models ours (efficientnet_tf.EfficientNetB0) and keras (keras.applications.EfficientNetB0),
    both with classifier_activation=None, on the JAX backend: one jax.jit'ed stateless train
    step (model.stateless_call + jax.value_and_grad + SGD.stateless_apply, state buffers
    donated), and jax.jit(model.stateless_call) for inference; everything runs under XLA;
  * for timm (where torch and timm import; run in a child process, after the JAX rows, so
    the two frameworks never share a process): channels_last, torch.autocast(bfloat16) for the
    bf16 rows, torch.compile (a failed compile is recorded and the row runs eagerly, labelled
    so), SGD step / torch.inference_mode, torch.cuda.synchronize around each timed repeat.
    float32 rows allow TF32 in PyTorch, as XLA does by default on the GPU.
Each row: warm-up steps first (compilation happens there; its time is reported as warmup_s,
not counted), then the median of --repeats timed runs of --steps steps each. A row that fails
(OOM, missing package, time budget) is recorded with its error and the run goes on. The JSON
(--output_dir/accelerator.json) is rewritten atomically after every row ("finished": false
until the end). Initial weights come from NumPy's generator during the build (keras' jax
random ops compile once per weight shape, ~170 compiles per model); values do not change
the measured speed.

On the GPU machine (JAX with CUDA, PyTorch and timm installed; no TensorFlow). Carry wheels
for keras and its dependencies that the machine lacks (absl-py, h5py, ml-dtypes, namex,
optree, rich, packaging); our `from efficientnet_tf import EfficientNetB0` needs only keras
and numpy at import (pyyaml, matplotlib and tensorflow are not imported on this path), so
install this package without its dependencies (setup.py would pull in tensorflow):

    pip install --no-index --find-links wheels/ \
        keras absl-py h5py ml-dtypes namex optree rich packaging
    pip install --no-deps -e .            # or: export PYTHONPATH=$PWD
    JAX_PLATFORMS=cuda KERAS_BACKEND=jax python bench/accelerator.py --output_dir bench_out

JAX_PLATFORMS=cuda makes JAX fail instead of falling back to the CPU when it cannot see the
GPU; the script itself refuses a full run on a CPU backend (--allow_cpu overrides). It sets
KERAS_BACKEND=jax itself and XLA_PYTHON_CLIENT_PREALLOCATE=false (unless set), so the PyTorch
child can use the memory JAX did not.

Expected run time on one H100 (an estimate: no GPU run yet). JAX: 16 rows = 4 training steps
(2 models x fp32/bf16 at batch 256; XLA compiles a B0 train step in ~30-90 s) + 12 forward
passes (2 models x 2 dtypes x 3 batches, ~5-15 s each) + 4 builds (~3 s each) + ~20 s start-up
+ ~40 s of timed steps (5 x 10 steps per row; a bf16/fp32 train step at 256 is ~0.1-0.2 s)
= ~4 min (fast compiles) to ~7 min (slow). timm: 2 training + 6 inference torch.compile runs
(~40-60 s and ~20-30 s) = ~3-4 min. So the whole set takes ~7-11 min; --time_budget_s
(default 390) starts no new row after 6.5 min and stops the timm child 60 s after its budget,
so one run ends within ~8 min (a JAX row started at 390 s may take ~90 s). Rows not reached
are marked "skipped: time budget": run them with `--models timm` (~4 min) afterwards.

Smoke test (CPU; 2-3 min on a shared 2-core host, mostly XLA compiling 4 train steps):
    KERAS_BACKEND=jax JAX_PLATFORMS=cpu python bench/accelerator.py --smoke --output_dir /tmp/acc
"""
from __future__ import annotations

import argparse
import contextlib
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODELS = ("ours", "keras", "timm")
DTYPES = ("float32", "bfloat16")
RESULT = "accelerator.json"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--output_dir", required=True)
    p.add_argument("--smoke", action="store_true",
                   help="tiny run on any backend: 32 px, batch 2, 1 warm-up + 2 steps")
    p.add_argument("--models", default="ours,keras,timm", help="subset of ours,keras,timm")
    p.add_argument("--dtypes", default="float32,bfloat16", help="subset of float32,bfloat16")
    p.add_argument("--batch_sizes", default=None, help="inference batches (default 1,32,256)")
    p.add_argument("--train_batch", type=int, default=None, help="default 256")
    p.add_argument("--image_size", type=int, default=None, help="default 224")
    p.add_argument("--steps", type=int, default=None, help="steps per timed repeat (default 10)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats (default 5)")
    p.add_argument("--warmup", type=int, default=None, help="warm-up steps (default 2)")
    p.add_argument("--time_budget_s", type=float, default=None,
                   help="start no new row after this many seconds (default 390; 0: none; smoke: 0)")
    p.add_argument("--allow_cpu", action="store_true", help="allow a full run on a CPU backend")
    p.add_argument("--torch_worker", default=None, help=argparse.SUPPRESS)  # child: rows file
    args = p.parse_args(argv)
    smoke = args.smoke
    defaults = dict(batch_sizes="2" if smoke else "1,32,256", train_batch=2 if smoke else 256,
                    image_size=32 if smoke else 224, steps=2 if smoke else 10,
                    repeats=1 if smoke else 5, warmup=1 if smoke else 2,
                    time_budget_s=0 if smoke else 390)
    for k, v in defaults.items():
        if getattr(args, k) is None:
            setattr(args, k, v)
    args.models = [m.strip() for m in args.models.split(",") if m.strip()]
    args.dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    try:
        args.batch_sizes = [int(b) for b in str(args.batch_sizes).split(",") if b.strip()]
    except ValueError:
        p.error(f"--batch_sizes takes integers separated by commas, e.g. 1,32,256; got "
                f"{args.batch_sizes!r}")
    for flag, given, known in (("--models", args.models, MODELS),
                               ("--dtypes", args.dtypes, DTYPES)):
        if not given or set(given) - set(known):
            p.error(f"{flag} takes a subset of {','.join(known)}; got "
                    f"{','.join(given) or 'nothing'}")
    if min(args.steps, args.repeats, args.warmup, args.train_batch, args.image_size,
           *args.batch_sizes) < 1 or not args.batch_sizes:
        p.error("--steps, --repeats, --warmup, --train_batch, --image_size and every "
                "--batch_sizes value must be >= 1")
    return args


def configs(args):
    """(mode, dtype, batch) in priority order: training first, then the large batches."""
    out = [("train", d, args.train_batch) for d in args.dtypes]
    for b in sorted(args.batch_sizes, reverse=True):
        out += [("infer", d, b) for d in args.dtypes]
    return out


def timed_repeats(run, steps, repeats, sync=lambda: None):
    """Seconds of each of `repeats` calls of run(steps); run must block on its results."""
    times = []
    for _ in range(repeats):
        sync()
        t = time.perf_counter()
        run(steps)
        sync()
        times.append(time.perf_counter() - t)
    return times


def finish_row(row, batch, steps, times):
    rates = [batch * steps / t for t in times]
    row.update(status="ok", images_per_s=round(statistics.median(rates), 2),
               step_ms=round(1000 * statistics.median(times) / steps, 3),
               repeats_images_per_s=[round(r, 2) for r in rates])
    return row


def short_error(e: BaseException) -> str:
    text = f"{type(e).__name__}: {e}".strip()
    return text if len(text) <= 400 else text[:400] + " ..."


# ---------------------------------------------------------------- JAX / Keras side

@contextlib.contextmanager
def numpy_initializers(seed=0):
    """Keras' jax random normal/uniform/truncated_normal from NumPy while models are built."""
    import numpy as np
    from keras.src.backend.jax import random as jr

    rng = np.random.default_rng(seed)

    def cast(a, dtype):
        import jax.numpy as jnp
        from keras import config
        return jnp.asarray(a.astype(np.float32), dtype=dtype or config.floatx())

    def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        return cast(rng.standard_normal(shape) * stddev + mean, dtype)

    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        return cast(rng.uniform(minval, maxval, shape), dtype)

    def truncated_normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        s = rng.standard_normal(shape)
        bad = np.abs(s) > 2
        while bad.any():
            s[bad] = rng.standard_normal(int(bad.sum()))
            bad = np.abs(s) > 2
        return cast(s * stddev + mean, dtype)

    saved = {n: getattr(jr, n) for n in ("normal", "uniform", "truncated_normal")}
    jr.normal, jr.uniform, jr.truncated_normal = normal, uniform, truncated_normal
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(jr, n, f)


def build_keras_model(which, dtype, size):
    import keras
    policy = "mixed_bfloat16" if dtype == "bfloat16" else "float32"
    from efficientnet_tf.builder import dtype_policy_scope
    with dtype_policy_scope(policy), numpy_initializers():
        if which == "ours":
            from efficientnet_tf import EfficientNetB0
            return EfficientNetB0(weights=None, classes=1000, classifier_activation=None,
                                  input_shape=(size, size, 3))
        return keras.applications.EfficientNetB0(weights=None, classifier_activation=None,
                                                  input_shape=(size, size, 3))


def fresh(arrays):
    """Copies (via the host) so that donated buffers never alias the model's own variables."""
    import jax
    import numpy as np
    return [jax.device_put(np.asarray(a)) for a in arrays]


def jax_train_row(model, row, args):
    import jax
    import jax.numpy as jnp
    import keras

    b, s = row["batch"], args.image_size
    opt = keras.optimizers.SGD(learning_rate=0.01, momentum=0.9)
    opt.build(model.trainable_variables)
    tv = fresh([v.value for v in model.trainable_variables])
    ntv = fresh([v.value for v in model.non_trainable_variables])
    ov = fresh([v.value for v in opt.variables])

    def loss_fn(tv, ntv, x, y):
        logits, ntv = model.stateless_call(tv, ntv, x, training=True)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32))
        return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1)), ntv

    grad_fn = jax.value_and_grad(loss_fn, has_aux=True)

    def step(tv, ntv, ov, x, y):
        (loss, ntv), grads = grad_fn(tv, ntv, x, y)
        tv, ov = opt.stateless_apply(ov, grads, tv)
        return tv, ntv, ov, loss

    donate = () if jax.default_backend() == "cpu" else (0, 1, 2)
    step = jax.jit(step, donate_argnums=donate)
    kx, ky = jax.random.split(jax.random.PRNGKey(0))
    x = jax.random.uniform(kx, (b, s, s, 3), jnp.float32, 0.0, 255.0)
    y = jax.random.randint(ky, (b,), 0, 1000)
    state = [tv, ntv, ov]

    def run(n):
        loss = None
        for _ in range(n):
            *new, loss = step(*state, x, y)
            state[:] = new
        jax.block_until_ready((state, loss))
        if not math.isfinite(float(loss)):
            raise FloatingPointError(f"loss is {float(loss)}")

    t = time.perf_counter()
    run(args.warmup)
    row["warmup_s"] = round(time.perf_counter() - t, 2)
    return finish_row(row, b, args.steps, timed_repeats(run, args.steps, args.repeats))


def jax_infer_row(model, row, args):
    import jax
    import jax.numpy as jnp

    b, s = row["batch"], args.image_size
    tv = [v.value for v in model.trainable_variables]
    ntv = [v.value for v in model.non_trainable_variables]
    predict = jax.jit(lambda tv, ntv, x: model.stateless_call(tv, ntv, x, training=False)[0])
    x = jax.random.uniform(jax.random.PRNGKey(1), (b, s, s, 3), jnp.float32, 0.0, 255.0)

    def run(n):
        out = None
        for _ in range(n):
            out = predict(tv, ntv, x)
        out.block_until_ready()

    t = time.perf_counter()
    run(args.warmup)
    row["warmup_s"] = round(time.perf_counter() - t, 2)
    return finish_row(row, b, args.steps, timed_repeats(run, args.steps, args.repeats))


# ---------------------------------------------------------------- PyTorch side (child process)

def torch_rows(args, rows_path):
    """Child: appends one JSON line per row (the first line: versions / device or an error)."""
    def emit(obj):
        with open(rows_path, "a") as f:
            f.write(json.dumps(obj) + "\n")

    try:
        import torch
        import timm
    except Exception as e:  # noqa: BLE001 -- any import failure skips the timm rows
        emit({"info": {"error": f"torch/timm not importable: {short_error(e)}"}})
        return
    cuda = torch.cuda.is_available()
    dev = torch.device("cuda" if cuda else "cpu")
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    emit({"info": {"torch": torch.__version__, "timm": timm.__version__,
                   "torch_cuda": torch.version.cuda,
                   "torch_device": torch.cuda.get_device_name(0) if cuda else "cpu"}})
    sync = torch.cuda.synchronize if cuda else (lambda: None)
    start = time.monotonic()
    s = args.image_size
    for mode, dtype, b in configs(args):
        row = dict(model="timm", framework="torch", mode=mode, dtype=dtype, batch=b)
        if args.time_budget_s and time.monotonic() - start > args.time_budget_s:
            emit({**row, "status": "skipped", "error": "skipped: time budget"})
            continue
        try:
            torch._dynamo.reset()
            model = timm.create_model("tf_efficientnet_b0", pretrained=False)
            model = model.to(dev, memory_format=torch.channels_last)
            model.train(mode == "train")
            x = torch.randn(b, 3, s, s, device=dev).contiguous(memory_format=torch.channels_last)
            y = torch.randint(0, 1000, (b,), device=dev)
            opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
            autocast = lambda: torch.autocast(dev.type, dtype=torch.bfloat16,  # noqa: E731
                                              enabled=dtype == "bfloat16")

            def make_run(net):
                def run(n):
                    for _ in range(n):
                        if mode == "train":
                            with autocast():
                                loss = torch.nn.functional.cross_entropy(net(x).float(), y)
                            opt.zero_grad(set_to_none=True)
                            loss.backward()
                            opt.step()
                        else:
                            with torch.inference_mode(), autocast():
                                net(x)
                    sync()
                return run

            row["compile"] = "torch.compile"
            run = make_run(torch.compile(model))
            t = time.perf_counter()
            try:
                run(args.warmup)
            except Exception as e:  # noqa: BLE001 -- record and fall back to eager
                row["compile"] = f"eager (torch.compile failed: {short_error(e)})"
                torch._dynamo.reset()
                run = make_run(model)
                run(args.warmup)
            row["warmup_s"] = round(time.perf_counter() - t, 2)
            emit(finish_row(row, b, args.steps, timed_repeats(run, args.steps, args.repeats, sync)))
        except Exception as e:  # noqa: BLE001 -- one row's failure (OOM, ...) ends only that row
            emit({**row, "status": "error", "error": short_error(e)})
        finally:
            model = opt = x = y = run = None
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()


# ---------------------------------------------------------------- driver

class Report:
    def __init__(self, args):
        self.path = os.path.join(args.output_dir, RESULT)
        self.data = {
            "benchmark": "bench/accelerator.py",
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "host": platform.node(), "python": platform.python_version(), "smoke": args.smoke,
            "settings": {k: getattr(args, k) for k in (
                "models", "dtypes", "batch_sizes", "train_batch", "image_size", "steps",
                "repeats", "warmup", "time_budget_s")},
            "method": {
                "jax_train": "jax.jit(model.stateless_call + jax.value_and_grad + "
                             "SGD(momentum=0.9).stateless_apply), state buffers donated "
                             "(not on CPU); synthetic batch, random labels, softmax CE",
                "jax_infer": "jax.jit(model.stateless_call(training=False))",
                "bfloat16": "Keras dtype policy mixed_bfloat16 while building (float32 "
                            "variables, bfloat16 compute); torch: torch.autocast(bfloat16)",
                "timing": "warm-up steps (with compilation) excluded; median over repeats of "
                          "N steps, blocking at the end of each repeat; images/s",
                "init": "initial weights drawn with NumPy during the build",
                "torch": "channels_last, torch.compile (eager fallback labelled), "
                         "TF32 allowed for float32, cudnn.benchmark",
            },
            "versions": {}, "devices": {}, "rows": [], "finished": False,
        }

    def add(self, row):
        self.data["rows"].append(row)
        self.write()

    def write(self):
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(self.path), prefix=".accelerator.",
                                   suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(self.data, f, indent=1)
        os.replace(tmp, self.path)


def run_jax(args, report, start):
    import jax
    import keras

    import efficientnet_tf

    report.data["versions"].update(jax=jax.__version__, keras=keras.__version__,
                                   efficientnet_tf=efficientnet_tf.__version__)
    report.data["devices"].update(jax_backend=jax.default_backend(),
                                  jax_device=jax.devices()[0].device_kind,
                                  jax_device_count=jax.device_count())
    if keras.backend.backend() != "jax":
        raise RuntimeError(f"Keras backend is {keras.backend.backend()!r}, need 'jax'")
    cpu_refused = jax.default_backend() == "cpu" and not (args.smoke or args.allow_cpu)
    built = {}
    for which in ("ours", "keras"):
        if which not in args.models:
            continue
        for mode, dtype, b in configs(args):
            row = dict(model=which, framework="jax", mode=mode, dtype=dtype, batch=b,
                       compile="xla (jax.jit)")
            if cpu_refused:
                report.add({**row, "status": "error", "error": "JAX sees no GPU (backend "
                            "cpu); set JAX_PLATFORMS=cuda or pass --allow_cpu"})
                continue
            if args.time_budget_s and time.monotonic() - start > args.time_budget_s:
                report.add({**row, "status": "skipped", "error": "skipped: time budget"})
                continue
            print(f"[{time.monotonic() - start:6.1f}s] {which} {mode} {dtype} batch {b}",
                  file=sys.stderr, flush=True)
            try:
                key = (which, dtype)
                if key not in built:
                    t = time.perf_counter()
                    built[key] = build_keras_model(which, dtype, args.image_size)
                    row["build_s"] = round(time.perf_counter() - t, 2)
                model = built[key]
                conv = next(layer for layer in model.layers
                            if isinstance(layer, keras.layers.Conv2D))
                row["compute_dtype"] = conv.compute_dtype  # the first convolution's
                fn = jax_train_row if mode == "train" else jax_infer_row
                report.add(fn(model, row, args))
            except Exception as e:  # noqa: BLE001 -- recorded; the next row still runs
                report.add({**row, "status": "error", "error": short_error(e)})
            gc.collect()
    report.data["dtype_policy_after"] = keras.config.dtype_policy().name


def run_timm(args, report, start):
    rows_path = os.path.join(args.output_dir, ".timm_rows.jsonl")
    if os.path.exists(rows_path):
        os.remove(rows_path)
    cmd = [sys.executable, os.path.abspath(__file__), "--torch_worker", rows_path,
           "--output_dir", args.output_dir, "--dtypes", ",".join(args.dtypes),
           "--batch_sizes", ",".join(map(str, args.batch_sizes)),
           "--train_batch", str(args.train_batch), "--image_size", str(args.image_size),
           "--steps", str(args.steps), "--repeats", str(args.repeats),
           "--warmup", str(args.warmup), "--models", "timm"]
    left = args.time_budget_s - (time.monotonic() - start) if args.time_budget_s else 0
    if args.time_budget_s and left <= 0:
        failure = "skipped: time budget"
    else:
        cmd += ["--time_budget_s", str(max(left, 0))]  # 0: no budget
        env = {k: v for k, v in os.environ.items() if k not in ("KERAS_BACKEND",)}
        failure = None
        try:  # the child may overrun its budget by one row: give it 60 s more, then stop it
            proc = subprocess.run(cmd, env=env, timeout=left + 60 if left else None,
                                  stdout=sys.stderr, stderr=sys.stderr)
            if proc.returncode:
                failure = f"timm worker exited with code {proc.returncode}"
        except subprocess.TimeoutExpired:
            failure = "skipped: time budget (timm worker stopped)"
    done = set()
    if os.path.exists(rows_path):
        with open(rows_path) as f:
            lines = [json.loads(line) for line in f if line.strip()]
        os.remove(rows_path)
        for obj in lines:
            info = obj.get("info")
            if info is not None:
                if "error" in info:
                    failure = "skipped: " + info["error"]
                else:
                    report.data["versions"].update(
                        {k: info[k] for k in ("torch", "timm", "torch_cuda")})
                    report.data["devices"]["torch_device"] = info["torch_device"]
                continue
            done.add((obj["mode"], obj["dtype"], obj["batch"]))
            report.add(obj)
    for mode, dtype, b in configs(args):
        if (mode, dtype, b) not in done:
            report.add(dict(model="timm", framework="torch", mode=mode, dtype=dtype, batch=b,
                            status="skipped" if (failure or "").startswith("skipped")
                            else "error", error=failure or "no result from the timm worker"))


def table(rows) -> str:
    head = ["model", "framework", "mode", "dtype", "batch", "images/s", "ms/step", "warm-up s",
            "note"]
    lines = [head]
    for r in rows:
        ok = r.get("status") == "ok"
        note = "" if ok else r.get("error", r.get("status", ""))
        if ok and r.get("compile", "").startswith("eager"):
            note = "eager (torch.compile failed)"
        lines.append([r["model"], r["framework"], r["mode"], r["dtype"], str(r["batch"]),
                      f"{r['images_per_s']:.1f}" if ok else "-",
                      f"{r['step_ms']:.2f}" if ok else "-",
                      f"{r['warmup_s']:.1f}" if ok else "-", note[:90]])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head) - 1)]
    out = []
    for n, line in enumerate(lines):
        out.append("  ".join(c.ljust(w) for c, w in zip(line, widths)) + "  " + line[-1])
        if n == 0:
            out.append("-" * len(out[0]))
    return "\n".join(out)


def main(argv=None):
    args = parse_args(argv)
    if args.torch_worker:
        torch_rows(args, args.torch_worker)
        return 0
    start = time.monotonic()
    os.environ["KERAS_BACKEND"] = "jax"  # before keras is imported; never the TF backend
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    if args.smoke:  # halves XLA's compile time of a train step on the CPU; speed is moot here
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                                   " --xla_backend_optimization_level=0"
                                   " --xla_llvm_disable_expensive_passes=true").strip()
    if REPO not in sys.path:
        sys.path.insert(0, REPO)  # efficientnet_tf from this checkout unless installed
    os.makedirs(args.output_dir, exist_ok=True)
    report = Report(args)
    report.write()
    if {"ours", "keras"} & set(args.models):
        try:
            run_jax(args, report, start)
        except Exception as e:  # noqa: BLE001 -- e.g. jax missing: the timm rows may still run
            report.data["jax_error"] = short_error(e)
            print(f"JAX side failed: {short_error(e)}", file=sys.stderr)
    if "timm" in args.models:
        run_timm(args, report, start)
    tf_loaded = "tensorflow" in sys.modules
    report.data.update(tensorflow_imported=tf_loaded, finished=True,
                       elapsed_s=round(time.monotonic() - start, 1))
    report.write()
    d, v = report.data["devices"], report.data["versions"]
    print(f"EfficientNet-B0, {args.image_size} px, {report.data['date']}; "
          f"jax device: {d.get('jax_device', '-')}; torch device: {d.get('torch_device', '-')}")
    print("versions: " + ", ".join(f"{k} {v[k]}" for k in sorted(v)))
    print(table(report.data["rows"]))
    print(f"elapsed {report.data['elapsed_s']} s; JSON: {report.path}")
    if tf_loaded:
        print("FAILED: tensorflow was imported", file=sys.stderr)
        return 1
    statuses = {r["status"] for r in report.data["rows"]}
    if "error" in statuses and "ok" not in statuses:
        print("FAILED: no row was measured (see each row's error)", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
