"""tpu/: the commands built for Cloud TPU VMs, the shell wrappers, and the training flags they pass.

Nothing here needs TensorFlow or gcloud: a fake `gcloud` first on PATH records its argv.
"""
from __future__ import annotations

import ast
import importlib.util
import json
import os
import pathlib
import re
import select
import shlex
import stat
import subprocess
import sys
import tarfile
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
TPU = ROOT / "tpu"
MAIN = ROOT / "efficientnet_tf" / "train" / "main.py"


def _load_commands():
    spec = importlib.util.spec_from_file_location("tpu_commands", TPU / "commands.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules["tpu_commands"] = mod
    spec.loader.exec_module(mod)
    return mod


C = _load_commands()


def defined_flags() -> set[str]:
    """Flag names from the DEFINE_* calls inside efficientnet_tf/train/main.py's define_flags()
    and define_strategy_flags() (which define_flags calls)."""
    tree = ast.parse(MAIN.read_text())
    fns = [n for n in tree.body if isinstance(n, ast.FunctionDef)
           and n.name in ("define_flags", "define_strategy_flags")]
    assert len(fns) == 2
    names = set()
    for node in (n for fn in fns for n in ast.walk(fn)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                and node.func.attr.startswith("DEFINE_") and node.args
                and isinstance(node.args[0], ast.Constant)):
            names.add(node.args[0].value)
    return names


def train_flags(argv: list[str]) -> dict[str, str | None]:
    """{flag: value} of the `python3 -m efficientnet_tf.train` part of argv."""
    i = argv.index("-m")
    assert argv[i + 1] == "efficientnet_tf.train"
    out = {}
    for tok in argv[i + 2:]:
        assert tok.startswith("--"), tok
        key, _, value = tok[2:].partition("=")
        out[key] = value if "=" in tok else None
    return out


def _flag_name(key: str, known: set[str]) -> str:
    # absl accepts --noFLAG for booleans
    return key[2:] if key.startswith("no") and key[2:] in known else key


# ------------------------------------------------------------------ pure command building

def test_main_py_defines_the_flags_we_expect():
    flags = defined_flags()
    assert {"tpu", "strategy", "model_name", "data_dir", "model_dir", "mode",
            "train_batch_size", "steps_per_execution", "use_bfloat16", "eval_timeout"} <= flags


@pytest.mark.parametrize("acc,zone,replicas", [("v3-8", "us-central1-a", 8),
                                               ("v4-8", "us-central2-b", 4)])
def test_create_picks_zone_and_runtime_per_generation(acc, zone, replicas):
    [cmd] = C.create_commands("efn-test", acc)
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "create", "efn-test"]
    assert f"--zone={zone}" in cmd
    assert f"--accelerator-type={acc}" in cmd
    assert "--version=tpu-vm-tf-2.16.1-pjrt" in cmd
    assert "--spot" not in cmd
    assert C.parse_accelerator(acc).replicas == replicas


def test_create_queued_spot_and_explicit_runtime():
    [cmd] = C.create_commands("efn-q", "v4-8", project="my-proj", spot=True, queued=True,
                              runtime="tpu-vm-tf-2.18.0-pjrt-v5p-and-below")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "queued-resources", "create", "efn-q-qr"]
    assert "--node-id=efn-q" in cmd and "--zone=us-central2-b" in cmd
    assert "--runtime-version=tpu-vm-tf-2.18.0-pjrt-v5p-and-below" in cmd
    assert "--spot" in cmd and "--project=my-proj" in cmd


def test_runtime_version_rules_from_the_docs():
    v3, v4, v3pod = (C.parse_accelerator(a) for a in ("v3-8", "v4-8", "v3-32"))
    assert C.runtime_version(v3, "2.16.1") == "tpu-vm-tf-2.16.1-pjrt"
    assert C.runtime_version(v3, "2.16.1", "se") == "tpu-vm-tf-2.16.1-se"
    assert C.runtime_version(v3pod, "2.16.1") == "tpu-vm-tf-2.16.1-pod-pjrt"
    assert C.runtime_version(v3, "2.14.1") == "tpu-vm-tf-2.14.1"
    assert C.runtime_version(v4, "2.10.0") == "tpu-vm-tf-2.10.0-v4"
    assert C.runtime_version(v4, "2.10.1") == "tpu-vm-tf-2.10.1"
    with pytest.raises(ValueError, match="PJRT"):
        C.runtime_version(C.parse_accelerator("v5litepod-8"), "2.16.1", "se")
    with pytest.raises(ValueError, match=r"2\.21\.0.*--tf_version=2\.16\.1"):
        C.runtime_version(v3, "2.21.0")
    with pytest.raises(ValueError, match="major.minor.patch"):
        C.runtime_version(v3, "2.16")


def test_bad_inputs_give_clear_errors():
    with pytest.raises(ValueError, match="Unknown TPU accelerator type 'v9-8'"):
        C.create_commands("efn", "v9-8")
    with pytest.raises(ValueError, match="multi-host"):
        C.create_commands("efn", "v4-16")
    with pytest.raises(ValueError, match="not a valid TPU name"):
        C.create_commands("Bad_Name", "v3-8")
    with pytest.raises(ValueError, match="multiple of the 4 TPU replicas of a v4-8"):
        C.train_argv("v4-8", bucket="gs://bkt", train_batch_size=1022)
    with pytest.raises(ValueError, match="Unknown --model"):
        C.train_argv("v3-8", bucket="gs://bkt", model="efficientnet-b9")


@pytest.mark.parametrize("path", ["/data/imagenet", "./runs", "bucket/path", "s3://bkt/x"])
def test_local_or_foreign_paths_are_rejected(path):
    with pytest.raises(ValueError, match="must be a Cloud Storage URL like gs://"):
        C.train_argv("v3-8", bucket=path)
    with pytest.raises(ValueError, match="--model_dir must be a Cloud Storage URL"):
        C.train_argv("v3-8", data_dir="gs://bkt/imagenet", model_dir=path)
    with pytest.raises(ValueError, match="--data_dir must be a Cloud Storage URL"):
        C.train_argv("v3-8", data_dir=path, model_dir="gs://bkt/run")


def test_missing_locations():
    with pytest.raises(ValueError, match="Give --bucket=gs://BUCKET"):
        C.train_argv("v3-8")


def test_local_path_error_says_what_to_do():
    with pytest.raises(ValueError) as e:
        C.check_gcs("/home/me/imagenet", "--data_dir")
    msg = str(e.value)
    assert "--data_dir" in msg and "local path" in msg and "commands.py upload" in msg
    with pytest.raises(ValueError, match="not a valid bucket name"):
        C.check_gcs("gs://UPPER/x")
    assert C.check_gcs("gs://my-bkt/runs/") == "gs://my-bkt/runs"


@pytest.mark.parametrize("acc,batch", [("v3-8", 2048), ("v4-8", 2048)])
def test_b0_training_command_has_the_recipe(acc, batch):
    argv = C.train_argv(acc, bucket="gs://my-bkt")
    f = train_flags(argv)
    assert f["tpu"] == "local" and f["strategy"] == "tpu"
    assert f["model_name"] == "efficientnet-b0"
    assert f["data_dir"] == "gs://my-bkt/imagenet"
    assert f["model_dir"] == f"gs://my-bkt/runs/efficientnet-b0-{acc}"
    assert int(f["train_batch_size"]) == batch
    assert int(f["train_batch_size"]) % C.parse_accelerator(acc).replicas == 0
    assert f["steps_per_execution"] == "1251" and f["epochs"] == "350"
    assert "use_bfloat16" in f and f["mode"] == "train_and_eval"


def test_every_training_flag_built_exists_in_main_py():
    known = defined_flags()
    argvs = [C.train_argv("v3-8", bucket="gs://bkt", overrides=["optimizer.lr=0.1"]),
             C.train_argv("v4-8", model_dir="gs://bkt/r", synthetic=True, train_steps=300,
                          mode="train"),
             C.eval_argv("gs://bkt/r", "gs://bkt/imagenet"),
             C.eval_argv("gs://bkt/r", "gs://bkt/imagenet", tpu="local")]
    for argv in argvs:
        for key in train_flags(argv):
            assert _flag_name(key, known) in known, f"--{key} is not defined in {MAIN}"


def job_words(remote: str) -> list[str]:
    """argv of the job inside remote_job's `nohup sh -c 'JOB; echo $? > EXIT'`."""
    toks = shlex.split(remote)
    i = toks.index("nohup")
    assert toks[i + 1:i + 3] == ["sh", "-c"], toks
    job, _, code = toks[i + 3].rpartition("; echo $? > ")
    assert code.endswith(".exit")
    return shlex.split(job)


def test_remote_training_runs_in_background_with_pjrt_env():
    [cmd] = C.train_commands("efn-v4", None, accelerator_type="v4-8", bucket="gs://bkt")
    assert cmd[:6] == ["gcloud", "compute", "tpus", "tpu-vm", "ssh", "efn-v4"]
    assert "--zone=us-central2-b" in cmd
    remote = next(c for c in cmd if c.startswith("--command="))[len("--command="):]
    assert remote.startswith("cd ~/efficientnet_tf && ")
    assert "< /dev/null >> ~/train.log 2>&1 & echo $! > ~/train.pid" in remote
    words = job_words(remote)
    assert words[:3] == ["env", "NEXT_PLUGGABLE_DEVICE_USE_C_API=true",
                         "TF_PLUGGABLE_DEVICE_LIBRARY_PATH=/lib/libtpu.so"]
    assert train_flags(words[3:])["model_dir"] == "gs://bkt/runs/efficientnet-b0-v4-8"
    # a stream-executor image gets no PJRT variables
    assert C.pjrt_env("tpu-vm-tf-2.16.1-se") == [] and C.pjrt_env("tpu-vm-tf-2.14.1") == []


def test_pypi_venv_job_uses_the_venv_libtpu_not_the_images():
    [cmd] = C.train_commands("efn-v4", None, accelerator_type="v4-8", bucket="gs://bkt",
                             tf_source="pypi")
    remote = cmd[-1][len("--command="):]
    assert "/lib/libtpu.so" not in remote
    assert ". ~/efn-venv/bin/activate && " in remote
    assert job_words(remote)[:2] == ["env", "NEXT_PLUGGABLE_DEVICE_USE_C_API=true"]
    # setup_vm.sh checks the same library the launch command looks up
    assert C.VENV_LIBTPU in (TPU / "setup_vm.sh").read_text()
    with pytest.raises(ValueError, match="--tf_source must be image or pypi"):
        C.remote_job(["true"], tf_source="conda")


def test_eval_runs_on_cpu_unless_a_tpu_is_named():
    f = train_flags(C.eval_argv("gs://bkt/r", "gs://bkt/imagenet"))
    assert f["mode"] == "eval" and f["strategy"] == "default" and "tpu" not in f
    f = train_flags(C.eval_argv("gs://bkt/r", "gs://bkt/imagenet", tpu="local"))
    assert f["tpu"] == "local" and f["strategy"] == "tpu"


def test_storage_commands():
    [mk] = C.bucket_commands("gs://my-bkt/imagenet", "us-central2-b", "proj")
    assert mk[:5] == ["gcloud", "storage", "buckets", "create", "gs://my-bkt"]
    assert "--location=us-central2" in mk
    [up] = C.upload_commands("/data/tfrecords", "gs://my-bkt/imagenet")
    assert up == ["gcloud", "storage", "rsync", "/data/tfrecords", "gs://my-bkt/imagenet",
                  "--recursive"]
    with pytest.raises(ValueError, match="--dest must be a Cloud Storage URL"):
        C.upload_commands("/data", "/elsewhere")


def test_estimate_hours():
    assert C.estimate_hours(C.IMAGENET_TRAIN_IMAGES * 350 / 3600) == pytest.approx(1.0)
    assert C.steps_for_epochs(350, 2048) == 218949  # the TPU reference's default train_steps


# ------------------------------------------------------------------ the shell scripts

SCRIPTS = sorted(TPU.glob("*.sh"))


def test_there_are_scripts():
    names = {p.name for p in SCRIPTS}
    assert {"create_vm.sh", "launch_b0.sh", "launch_eval.sh", "recover.sh", "setup_vm.sh"} <= names


@pytest.mark.parametrize("script", SCRIPTS, ids=lambda p: p.name)
def test_bash_syntax(script):
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


@pytest.fixture
def fake_gcloud(tmp_path):
    """A `gcloud` first on PATH that appends its argv (JSON, one call a line) to a log."""
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "gcloud_calls.jsonl"
    exe = bindir / "gcloud"
    exe.write_text("#!/usr/bin/env python3\nimport json, sys\n"
                   f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return env, calls


def _run(script, *args, env):
    return subprocess.run(["bash", str(TPU / script), *args], capture_output=True, text=True,
                          env=env, cwd=ROOT, timeout=60)


@pytest.fixture(autouse=True)
def _private_tmpdir(tmp_path, monkeypatch):
    # the install step writes its git archive under $TMPDIR (scripts) or tempfile.gettempdir()
    # (this process: its cached value, not $TMPDIR, so it is set too)
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))


def test_dry_run_prints_and_never_calls_gcloud(fake_gcloud):
    env, calls = fake_gcloud
    r = _run("create_vm.sh", "--name=efn-v3", "--accelerator_type=v3-8", "--dry_run", env=env)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert shlex.split(lines[0]) == ["gcloud", "compute", "tpus", "tpu-vm", "create", "efn-v3",
                                     "--zone=us-central1-a", "--accelerator-type=v3-8",
                                     "--version=tpu-vm-tf-2.16.1-pjrt"]
    assert "tpu/setup_vm.sh image" in lines[-1]
    r = _run("launch_b0.sh", "--name=efn-v4", "--accelerator_type=v4-8",
             "--bucket=gs://my-bkt", "--dry_run", env=env)
    assert r.returncode == 0, r.stderr
    assert "--zone=us-central2-b" in r.stdout and "--train_batch_size=2048" in r.stdout
    assert calls() == []


def test_create_script_calls_gcloud_with_the_right_arguments(fake_gcloud):
    env, calls = fake_gcloud
    r = _run("create_vm.sh", "--name=efn-v4", "--accelerator_type=v4-8", "--project=proj",
             "--spot", "--tf_source=pypi", env=env)
    # the fake gcloud succeeds, so all three steps ran: create, scp, ssh setup
    assert r.returncode == 0, r.stderr
    create, scp, ssh = calls()
    assert create == ["compute", "tpus", "tpu-vm", "create", "efn-v4", "--zone=us-central2-b",
                      "--accelerator-type=v4-8", "--version=tpu-vm-tf-2.16.1-pjrt",
                      "--project=proj", "--spot"]
    assert scp[:4] == ["compute", "tpus", "tpu-vm", "scp"]
    assert scp[5] == "efn-v4:~/efficientnet_tf.tar.gz"
    # the archive it copies is a real snapshot of the checkout with the setup script in it
    archive = pathlib.Path(scp[4])
    assert archive.parent == pathlib.Path(env["TMPDIR"])
    with tarfile.open(archive) as tar:
        members = set(tar.getnames())
    assert {"setup.py", "tpu/setup_vm.sh", "tpu/requirements-tpu.txt",
            "efficientnet_tf/train/main.py"} <= members
    assert ssh[:5] == ["compute", "tpus", "tpu-vm", "ssh", "efn-v4"]
    assert ssh[-1].endswith("bash tpu/setup_vm.sh pypi")


def test_launch_script_calls_gcloud_ssh_with_the_training_job(fake_gcloud):
    env, calls = fake_gcloud
    r = _run("launch_b0.sh", "--name=efn-v3", "--bucket=gs://my-bkt",
             "--override=optimizer.lr=0.02", env=env)
    assert r.returncode == 0, r.stderr
    [ssh] = calls()
    assert ssh[:6] == ["compute", "tpus", "tpu-vm", "ssh", "efn-v3", "--zone=us-central1-a"]
    job = job_words(ssh[-1][len("--command="):])
    f = train_flags(job[job.index("python3"):])
    assert f["model_name"] == "efficientnet-b0" and f["override"] == "optimizer.lr=0.02"
    known = defined_flags()
    assert all(_flag_name(k, known) in known for k in f)


def test_eval_script_and_errors(fake_gcloud):
    env, calls = fake_gcloud
    r = _run("launch_eval.sh", "--bucket=gs://my-bkt", "--dry_run", env=env)
    assert r.returncode == 0, r.stderr
    f = train_flags(shlex.split(r.stdout.strip()))
    assert f["mode"] == "eval" and f["model_dir"] == "gs://my-bkt/runs/efficientnet-b0-v3-8"
    r = _run("launch_b0.sh", "--bucket=/data/imagenet", "--dry_run", env=env)
    assert r.returncode == 2
    assert "must be a Cloud Storage URL like gs://" in r.stderr
    r = _run("create_vm.sh", "--name=efn", "--tf_version=2.21.0", env=env)
    assert r.returncode == 2 and "2.21.0" in r.stderr
    assert calls() == []


def test_gcloud_failure_stops_the_sequence(tmp_path):
    bindir = tmp_path / "bin"
    bindir.mkdir()
    log = tmp_path / "calls"
    exe = bindir / "gcloud"
    exe.write_text(f"#!/bin/sh\necho \"$@\" >> {log}\nexit 7\n")
    exe.chmod(0o755)
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}")
    r = _run("create_vm.sh", "--name=efn-v3", env=env)
    assert r.returncode == 7
    assert len(log.read_text().splitlines()) == 1  # no scp/ssh after a failed create
    assert "gcloud exited with 7" in r.stderr


def _req_name(req: str) -> str:
    return re.split(r"[<>=!~;\[ ]", req.strip(), maxsplit=1)[0].lower()


def install_requires() -> list[str]:
    tree = ast.parse((ROOT / "setup.py").read_text())
    call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                and getattr(n.func, "id", "") == "setup")
    [kw] = [k for k in call.keywords if k.arg == "install_requires"]
    return [ast.literal_eval(e) for e in kw.value.elts]


def test_requirements_match_setup_py_except_tensorflow():
    reqs = [line.split("#")[0].strip() for line in (TPU / "requirements-tpu.txt").read_text()
            .splitlines()]
    names = {_req_name(r) for r in reqs if r}
    assert not names & {"tensorflow", "tensorflow-cpu", "tensorflow-tpu"}
    wanted = {_req_name(r) for r in install_requires()} - {"tensorflow"}
    assert wanted == names, f"tpu/requirements-tpu.txt is out of step with setup.py: {wanted ^ names}"


def test_setup_vm_pins_a_libtpu_that_tensorflow_tpu_can_load():
    # Measured: with tensorflow-tpu 2.20.0, libtpu >= 0.0.32 makes `import tensorflow` abort.
    text = (TPU / "setup_vm.sh").read_text()
    [line] = [ln for ln in text.splitlines() if "pip install" in ln and "tensorflow-tpu" in ln]
    assert '"tensorflow-tpu==2.20.0"' in line and '"libtpu<=0.0.31"' in line
    r = subprocess.run(["bash", str(TPU / "setup_vm.sh"), "conda"], capture_output=True,
                       text=True, timeout=30)
    assert r.returncode == 2 and "usage: bash tpu/setup_vm.sh [image|pypi]" in r.stderr


def test_unconfirmed_image_names_warn(capsys):
    v3 = C.parse_accelerator("v3-8")
    assert C.runtime_version(v3, "2.18.0") == "tpu-vm-tf-2.18.0-pjrt"
    assert "not its image name" in capsys.readouterr().err
    assert C.runtime_version(v3, "2.16.2") == "tpu-vm-tf-2.16.2-pjrt"
    assert "not its image name" in capsys.readouterr().err
    C.runtime_version(v3, "2.16.1")
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("tf", ["2.17.0", "2.17.1"])
def test_tf_2_17_images_are_documented_so_no_warning(tf, capsys):
    # tpu-vm-tf-2.17.1-pjrt is the image of the docs' preemptible-TPU example
    assert C.runtime_version(C.parse_accelerator("v3-8"), tf) == f"tpu-vm-tf-{tf}-pjrt"
    assert C.runtime_version(C.parse_accelerator("v4-8"), tf, "se") == f"tpu-vm-tf-{tf}-se"
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("tf", ["2.9.0", "2.8.4", "2.7.3"])
def test_v4_with_tensorflow_older_than_2_9_1_is_refused(tf):
    v4 = C.parse_accelerator("v4-8")
    with pytest.raises(ValueError) as e:
        C.runtime_version(v4, tf)
    msg = str(e.value)
    assert f"TensorFlow {tf} on TPU v4" in msg and "--tf_version=2.9.1 or newer" in msg
    # v3 has images for these versions
    assert C.runtime_version(C.parse_accelerator("v3-8"), tf) == f"tpu-vm-tf-{tf}"


def test_v4_image_names_from_2_9_1_on():
    v4, v4pod = C.parse_accelerator("v4-8"), C.parse_accelerator("v4-16")
    assert C.runtime_version(v4, "2.9.1") == "tpu-vm-tf-2.9.1-v4"
    assert C.runtime_version(v4pod, "2.9.3") == "tpu-vm-tf-2.9.3-pod-v4"
    assert C.runtime_version(v4, "2.11.0") == "tpu-vm-tf-2.11.0"
    assert C.runtime_version(v4, "2.16.1") == "tpu-vm-tf-2.16.1-pjrt"


def test_create_script_refuses_v4_with_old_tensorflow(fake_gcloud):
    env, calls = fake_gcloud
    r = _run("create_vm.sh", "--name=efn", "--accelerator_type=v4-8", "--tf_version=2.8.4",
             env=env)
    assert r.returncode == 2 and "--tf_version=2.9.1 or newer" in r.stderr
    assert calls() == []


# ------------------------------------------------------------------ setup_vm.sh on a fake VM

def _load_image_constraints():
    spec = importlib.util.spec_from_file_location("image_constraints",
                                                  TPU / "image_constraints.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


IMAGE_FREEZE = """tensorflow==2.16.1
numpy==1.26.4
protobuf==4.25.3
keras==3.3.3
PyYAML==5.4.1
ml_dtypes==0.3.2
distro-info==1.1build1
tensorboard==2.16.2
"""


def test_image_constraints_pin_the_image_but_free_what_our_requirements_must_change():
    ic = _load_image_constraints()
    reqs = (TPU / "requirements-tpu.txt").read_text()
    lines, notes = ic.constraints(IMAGE_FREEZE, reqs)
    # TensorFlow and what it was built against stay; so do requirements the image satisfies
    assert lines == ["tensorflow==2.16.1", "numpy==1.26.4", "protobuf==4.25.3", "ml_dtypes==0.3.2",
                     "tensorboard==2.16.2"]
    # keras>=3.10 and pyyaml>=6 must change (pinning them would make pip fail); distro-info's
    # Ubuntu version is not PEP 440, so it cannot be a constraint
    assert any("keras==3.3.3" in n and "keras<4,>=3.10" in n for n in notes)
    assert any("PyYAML==5.4.1" in n for n in notes) and any("distro-info" in n for n in notes)


def test_image_constraints_cli(tmp_path):
    freeze, req = tmp_path / "freeze.txt", tmp_path / "req.txt"
    freeze.write_text("numpy==2.1.0\ntensorflow==2.16.1\n")
    req.write_text("numpy>=1.26,<2  # comment\n")
    r = subprocess.run([sys.executable, str(TPU / "image_constraints.py"), str(freeze), str(req)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["tensorflow==2.16.1"] and "numpy==2.1.0" in r.stderr
    req.write_text("numpy>>1\n")
    r = subprocess.run([sys.executable, str(TPU / "image_constraints.py"), str(freeze), str(req)],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 2 and "bad requirement line 'numpy>>1'" in r.stderr


FAKE_PYTHON = r'''#!{python}
"""A TPU VM's python3 for setup_vm.sh: records argv, fakes pip and venv, runs our scripts."""
import json, os, subprocess, sys
args = sys.argv[1:]
with open(os.environ["FAKE_VM_LOG"], "a") as f:
    f.write(json.dumps(["python3", *args]) + "\n")
if args[:1] == ["-c"]:
    if "import libtpu" in args[1]:
        print(os.environ["FAKE_LIBTPU"])
    sys.exit(0)
if args[:3] == ["-m", "pip", "list"]:
    print(os.environ["FAKE_FREEZE"], end="")
    sys.exit(0)
if args[:2] == ["-m", "venv"]:
    bindir = os.path.join(args[2], "bin")
    os.makedirs(bindir)
    os.symlink(sys.argv[0], os.path.join(bindir, "python3"))
    with open(os.path.join(bindir, "activate"), "w") as f:
        f.write(f"PATH={{bindir}}:$PATH\n")
    sys.exit(0)
if args[:1] and args[0].endswith(".py"):
    sys.exit(subprocess.run([{python!r}, *args]).returncode)
sys.exit(0)
'''


@pytest.fixture
def fake_vm(tmp_path):
    """PATH with a fake python3 and sudo that log their argv; HOME in tmp_path."""
    bindir = tmp_path / "vmbin"
    bindir.mkdir()
    log = tmp_path / "vm_calls.jsonl"
    (bindir / "python3").write_text(FAKE_PYTHON.format(python=sys.executable))
    (bindir / "sudo").write_text(f"#!/bin/sh\necho \"[\\\"sudo\\\", \\\"$*\\\"]\" >> {log}\n")
    for exe in bindir.iterdir():
        exe.chmod(0o755)
    libtpu = tmp_path / "site" / "libtpu" / "libtpu.so"
    libtpu.parent.mkdir(parents=True)
    libtpu.write_bytes(b"")
    home = tmp_path / "home"
    home.mkdir()
    env = dict(os.environ, PATH=f"{bindir}{os.pathsep}{os.environ['PATH']}", HOME=str(home),
               FAKE_VM_LOG=str(log), FAKE_FREEZE=IMAGE_FREEZE, FAKE_LIBTPU=str(libtpu))

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()]
    return env, calls, home


def test_setup_vm_image_installs_with_constraints_from_the_image(fake_vm, tmp_path):
    env, calls, _ = fake_vm
    r = subprocess.run(["bash", str(TPU / "setup_vm.sh"), "image"], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    pip = [c[4:] for c in calls() if c[1:4] == ["-m", "pip", "install"]]
    constraints = tmp_path / "efn-image-constraints.txt"  # $TMPDIR is tmp_path
    assert pip == [["-c", str(constraints), "-r", "tpu/requirements-tpu.txt"], ["--no-deps", "."]]
    pinned = constraints.read_text().split()
    assert "tensorflow==2.16.1" in pinned and "numpy==1.26.4" in pinned
    assert not any(p.startswith("keras==") for p in pinned)
    assert not any(c[0] == "sudo" for c in calls())


def test_setup_vm_pypi_installs_python3_venv_first_and_checks_the_venv_libtpu(fake_vm):
    env, calls, home = fake_vm
    r = subprocess.run(["bash", str(TPU / "setup_vm.sh"), "pypi"], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 0, r.stderr
    seq = calls()
    apt = [i for i, c in enumerate(seq) if c[0] == "sudo" and "install -y -q python3-venv" in c[1]]
    venv = [i for i, c in enumerate(seq) if c[1:3] == ["-m", "venv"]]
    assert apt and venv and apt[0] < venv[0] and seq[venv[0]][3] == str(home / "efn-venv")
    assert f"libtpu of the venv: {env['FAKE_LIBTPU']}" in r.stdout
    # a libtpu package without libtpu.so stops the setup
    env["FAKE_LIBTPU"] = str(home / "nowhere" / "libtpu.so")
    subprocess.run(["rm", "-rf", str(home / "efn-venv")], check=True)
    r = subprocess.run(["bash", str(TPU / "setup_vm.sh"), "pypi"], capture_output=True,
                       text=True, env=env, cwd=ROOT, timeout=60)
    assert r.returncode == 1 and "has no" in r.stderr and "nowhere" in r.stderr


# ------------------------------------------------------------------ the remote job line, run here

def _vm_shell(line: str, home, env=None, **kw):
    """Runs a remote line as the VM's ssh would: bash -c, HOME = a scratch directory."""
    return subprocess.run(["bash", "-c", line], capture_output=True, text=True, timeout=30,
                          env=dict(env or os.environ, HOME=str(home)), **kw)


def _wait_for(path: pathlib.Path, seconds: float = 10) -> str:
    import time
    deadline = time.monotonic() + seconds
    while not path.exists() or not path.read_text().strip():
        assert time.monotonic() < deadline, f"{path} did not appear"
        time.sleep(0.02)
    return path.read_text().strip()


def _wait_for_status(status: str, home, seconds: float = 10) -> str:
    """The status once the job's wrapper has exited (it writes the exit code just before)."""
    import time
    deadline = time.monotonic() + seconds
    while (out := _vm_shell(status, home).stdout.strip()) == "running":
        assert time.monotonic() < deadline, "the job did not end"
        time.sleep(0.02)
    return out


def test_remote_job_detaches_records_pid_and_exit_code_and_never_starts_twice(tmp_path):
    (tmp_path / "efficientnet_tf").mkdir()
    gate = tmp_path / "gate"
    # the job waits for `gate`, reads stdin (must be /dev/null: '' at once), then exits 3
    job = [sys.executable, "-c",
           "import os, sys, time\n"
           f"while not os.path.exists({str(gate)!r}): time.sleep(0.01)\n"
           "print('stdin', repr(sys.stdin.read()))\nsys.exit(3)"]
    line = C.remote_job(job, log="~/run.log")
    status = C.job_status_remote("~/run.log")
    assert _vm_shell(status, tmp_path).stdout.strip() == "gone"
    # as under ssh: stdin, stdout and stderr are pipes that ssh reads until every writer is
    # gone; the line must return, and its pipes close, while the job runs. `set -m` (job
    # control) stops bash from giving background jobs /dev/null as stdin by itself.
    p = subprocess.Popen(["bash", "-c", f"set -m; {line}"], stdin=subprocess.PIPE,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=dict(os.environ, HOME=str(tmp_path)))
    assert p.wait(timeout=10) == 0
    # Both pipes reach EOF while the job still waits for `gate`. select returns as soon as one
    # is ready (the job's redirections close stdout, then stderr), so wait for each in turn.
    for pipe in (p.stdout, p.stderr):
        ready, _, _ = select.select([pipe], [], [], 5)
        assert ready == [pipe] and pipe.read() == b""
    assert _wait_for(tmp_path / "run.pid").isdigit()
    assert _vm_shell(status, tmp_path).stdout.strip() == "running"
    again = _vm_shell(line, tmp_path)
    assert "already running" in again.stdout
    gate.write_text("go")  # p.stdin is still open: a job reading it would hang here
    assert _wait_for(tmp_path / "run.exit") == "3"
    p.stdin.close()
    assert _wait_for_status(status, tmp_path) == "exit 3"
    assert (tmp_path / "run.log").read_text().strip() == "stdin ''"


def test_remote_job_pypi_exports_the_venv_libtpu_path(tmp_path):
    (tmp_path / "efficientnet_tf").mkdir()
    site = tmp_path / "site" / "libtpu"
    site.mkdir(parents=True)
    (site / "__init__.py").write_text("def get_library_path():\n"
                                      "    return '/venv/site-packages/libtpu/libtpu.so'\n")
    bindir = tmp_path / "efn-venv" / "bin"
    bindir.mkdir(parents=True)
    (bindir / "python3").symlink_to(sys.executable)
    (bindir / "activate").write_text(f"PATH={bindir}:$PATH; export PYTHONPATH={site.parent}\n")
    job = [sys.executable, "-c", "import os; print(os.environ['TF_PLUGGABLE_DEVICE_LIBRARY_PATH'],"
           " os.environ['NEXT_PLUGGABLE_DEVICE_USE_C_API'])"]
    line = C.remote_job(job, runtime="tpu-vm-tf-2.16.1-pjrt", tf_source="pypi")
    r = _vm_shell(line, tmp_path)
    assert r.returncode == 0, r.stderr
    assert _wait_for(tmp_path / "train.exit") == "0"
    assert (tmp_path / "train.log").read_text().split() == [
        "/venv/site-packages/libtpu/libtpu.so", "true"]
    # the image's TensorFlow on a VM set up with the venv: refused, saying what to pass
    r = _vm_shell(C.remote_job(job, runtime="tpu-vm-tf-2.16.1-pjrt"), tmp_path)
    assert r.returncode == 2 and "pass --tf_source=pypi" in r.stderr


# ------------------------------------------------------------------ recover: the supervise loop

SCRIPTED_GCLOUD = r'''#!{python} -S
"""Fake gcloud: logs argv; answers describe, queued describe, delete and the job-status ssh
from a script (JSON {{kind: [{{"out", "err", "rc"}}, ...]}}, one answer a call, the last one repeating)."""
import json, os, sys
args = sys.argv[1:]
with open({log!r}, "a") as f:
    f.write(json.dumps(args) + "\n")
command = next((a for a in args if a.startswith("--command=")), "")
kind = ("qr-describe" if args[2:4] == ["queued-resources", "describe"] else
        "describe" if args[3:4] == ["describe"] else
        "delete" if args[3:4] == ["delete"] else
        "status" if "echo running" in command else "other")
path = os.environ.get("FAKE_GCLOUD_SCRIPT")
script = json.load(open(path)) if path else {{}}
answers = script.get(kind) or [{{}}]
state_file = {state!r}
state = json.load(open(state_file)) if os.path.exists(state_file) else {{}}
i = state.get(kind, 0)
state[kind] = i + 1
json.dump(state, open(state_file, "w"))
a = answers[min(i, len(answers) - 1)]
print(a.get("out", ""))
print(a.get("err", ""), file=sys.stderr)
sys.exit(a.get("rc", 0))
'''


@pytest.fixture
def scripted_gcloud(tmp_path, monkeypatch):
    """A fake gcloud first on PATH (here and for subprocesses) answering from a script."""
    bindir = tmp_path / "sbin"
    bindir.mkdir()
    log, state = tmp_path / "calls.jsonl", tmp_path / "state.json"
    exe = bindir / "gcloud"
    exe.write_text(SCRIPTED_GCLOUD.format(python=sys.executable, log=str(log), state=str(state)))
    exe.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ['PATH']}")

    def script(**answers):
        path = tmp_path / "script.json"
        path.write_text(json.dumps({k.replace("_", "-"): v for k, v in answers.items()}))
        monkeypatch.setenv("FAKE_GCLOUD_SCRIPT", str(path))

    def calls():
        return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return script, calls


def _say(*outs):
    return [{"out": o} for o in outs]


def _kind(call: list[str]) -> str:
    """A short name for one recorded gcloud call."""
    if call[2] == "queued-resources":
        return f"qr-{call[3]}"
    if call[3] == "ssh":
        cmd = call[-1]
        return ("status" if "echo running" in cmd else "launch" if "nohup" in cmd else
                "setup" if "setup_vm.sh" in cmd else "ssh?")
    return call[3]


PLAN_ARGS = dict(name="efn-v4", accelerator_type="v4-8", queued=True, spot=True,
                 bucket="gs://bkt", overrides=["optimizer.lr=0.02"])


def _loop(max_recoveries=3, **kw):
    logged, slept = [], []
    loop = C.Recover(C.recover_plan(**{**PLAN_ARGS, **kw}), max_recoveries=max_recoveries,
                     poll_seconds=60, sleep=slept.append, log=logged.append)
    return loop, logged, slept


def test_recover_recreates_a_preempted_queued_vm_and_relaunches_the_same_job(scripted_gcloud):
    script, calls = scripted_gcloud
    script(describe=_say("READY", "READY", "PREEMPTED", "READY"),
           status=_say("running", "running", "exit 0"))
    loop, logged, slept = _loop()
    assert loop.loop() == 0
    seq = calls()
    assert [_kind(c) for c in seq] == [
        "launch", "describe", "status", "describe", "status", "describe",
        "qr-delete", "qr-create", "describe", "scp", "setup", "launch", "describe", "status"]
    delete, create = seq[6], seq[7]
    assert delete == ["compute", "tpus", "queued-resources", "delete", "efn-v4-qr",
                      "--zone=us-central2-b", "--force", "--quiet"]
    assert create[:5] == ["compute", "tpus", "queued-resources", "create", "efn-v4-qr"]
    assert "--spot" in create and "--runtime-version=tpu-vm-tf-2.16.1-pjrt" in create
    assert seq[11] == seq[0]  # the same training command, flags and all
    assert "--override=optimizer.lr=0.02" in job_words(seq[0][-1][len("--command="):])
    assert slept == [60] * 5
    assert any("recovery 1/3: efn-v4 is PREEMPTED" in m for m in logged)
    assert logged[-1] == "done: the job on efn-v4 exited 0."


def test_recover_gives_up_after_max_recoveries(scripted_gcloud):
    script, calls = scripted_gcloud
    script(describe=_say("READY", "PREEMPTED", "READY", "PREEMPTED", "READY", "PREEMPTED"),
           status=_say("running"))
    loop, logged, _ = _loop(max_recoveries=2)
    assert loop.loop() == 1
    kinds = [_kind(c) for c in calls()]
    assert kinds.count("qr-create") == 2 and kinds.count("launch") == 3
    assert kinds[-1] == "describe"  # the third PREEMPTED: nothing deleted or created after it
    assert "all 2 recoveries (--max_recoveries) are used" in logged[-1]
    assert "run the same command again" in logged[-1]


def test_recover_relaunches_on_a_ready_vm_after_sigterm_and_stops_on_a_real_failure(
        scripted_gcloud):
    script, calls = scripted_gcloud
    script(describe=_say("READY"), status=_say("exit 143", "exit 1"))
    loop, logged, _ = _loop()
    assert loop.loop() == 1
    assert [_kind(c) for c in calls()] == ["launch", "describe", "status", "launch", "describe",
                                           "status"]
    assert any("READY but the job is exit 143: launch again" in m for m in logged)
    assert "ended with exit 1, which is no preemption" in logged[-1]


def test_recover_waits_for_a_queued_resource_and_installs_a_fresh_vm(scripted_gcloud):
    script, calls = scripted_gcloud
    # started right after `create --queued`: no node yet, then READY without our checkout
    script(describe=[{"rc": 1, "err": "ERROR: NOT_FOUND: Resource 'efn-v4' was not found"},
                     {"out": "READY"}],
           qr_describe=_say("WAITING_FOR_RESOURCES"), status=_say("not-installed", "exit 0"))
    loop, logged, _ = _loop()
    assert loop.loop() == 0
    assert [_kind(c) for c in calls()] == [
        "launch", "describe", "qr-describe", "describe", "status", "scp", "setup", "launch",
        "describe", "status"]
    assert "efn-v4-qr: WAITING_FOR_RESOURCES; waiting for the node" in logged


def test_recover_plain_vm_gone_is_created_again_even_if_delete_fails(scripted_gcloud):
    script, calls = scripted_gcloud
    gone = {"rc": 1, "err": "NOT_FOUND"}
    script(describe=[gone, {"out": "CREATING"}, {"out": "READY"}], delete=[gone],
           status=_say("exit 0"))
    loop, logged, _ = _loop(queued=False, spot=False)
    assert loop.loop() == 0
    assert [_kind(c) for c in calls()] == [
        "launch", "describe", "delete", "create", "describe", "describe", "scp", "setup",
        "launch", "describe", "status"]
    assert any("creating anyway" in m for m in logged)
    assert "efn-v4: CREATING; waiting for READY" in logged


def test_recover_gives_up_when_gcloud_keeps_failing(scripted_gcloud):
    script, calls = scripted_gcloud
    script(describe=[{"rc": 1, "err": "ERROR: (gcloud) You do not currently have an active "
                                      "account selected."}])
    loop, logged, _ = _loop()
    assert loop.loop() == 1
    assert [_kind(c) for c in calls()] == ["launch"] + ["describe"] * C.MAX_GCLOUD_ERRORS
    assert "gcloud calls in a row failed" in logged[-1]


def test_recover_script_end_to_end_and_bad_flags(scripted_gcloud):
    script, calls = scripted_gcloud
    script(describe=_say("READY"), status=_say("exit 0"))
    r = _run("recover.sh", "--name=efn-v4", "--accelerator_type=v4-8", "--bucket=gs://bkt",
             "--queued", "--poll_seconds=0", env=dict(os.environ))
    assert r.returncode == 0, r.stderr
    stamped = [line for line in r.stdout.splitlines() if line.strip()]  # fake gcloud: blanks
    assert all(re.match(r"\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\] ", line) for line in stamped)
    assert stamped[-1].endswith("done: the job on efn-v4 exited 0.")
    assert [_kind(c) for c in calls()] == ["launch", "describe", "status"]
    r = _run("recover.sh", "--name=efn-v4", "--bucket=gs://bkt", "--max_recoveries=-1",
             env=dict(os.environ))
    assert r.returncode == 2 and "--max_recoveries must be >= 0" in r.stderr
    r = _run("recover.sh", "--bucket=gs://bkt", env=dict(os.environ))
    assert r.returncode == 2 and "--name" in r.stderr
    assert len(calls()) == 3
