#!/usr/bin/env python3
"""Builds the gcloud and training command lines for EfficientNet on a Cloud TPU VM.

Pure Python (no TensorFlow, no gcloud needed to build; the variant list is the package's registry). Each subcommand prints the commands it
would run with --dry_run, and runs them (gcloud, gsutil-free `gcloud storage`) otherwise:

    python3 tpu/commands.py create --name=efn-v3 --accelerator_type=v3-8 --dry_run
    python3 tpu/commands.py train --name=efn-v3 --accelerator_type=v3-8 --bucket=gs://my-bucket

Facts used here (zones, software-version names) come from the Cloud TPU documentation; see
tpu/README.md for the pages and dates. The shell scripts in tpu/ are thin wrappers around this.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
import shlex
import subprocess
import sys
import tempfile
import time
from typing import Callable, Sequence

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:  # run as a script from a checkout
    sys.path.insert(0, REPO_ROOT)
from efficientnet_tf.spec import VARIANTS  # noqa: E402  (pure Python: no TensorFlow)

IMAGENET_TRAIN_IMAGES = 1_281_167
MODELS = tuple(v.full_name for v in VARIANTS.values())
TRAIN_MODULE = "efficientnet_tf.train"

# Newest TensorFlow with a documented TPU VM software version (cloud.google.com/tpu/docs/runtimes,
# libtpu table). TF 2.21 has none; see tpu/README.md.
NEWEST_DOCUMENTED_TF = (2, 18, 0)
# Newest TF whose exact image names the docs spell out (runtimes page list; v2 page example).
DEFAULT_TF_VERSION = "2.16.1"
# Newer minors whose image names the docs also show (2.17: tpu-vm-tf-2.17.1-pjrt on the
# preemptible-TPU page); other versions above DEFAULT_TF_VERSION print a warning.
DOCUMENTED_NEWER_MINORS = ((2, 17),)


@dataclasses.dataclass(frozen=True)
class Generation:
    name: str               # v2, v3, v4, v5litepod, v5p, v6e
    zones: tuple[str, ...]  # from cloud.google.com/tpu/docs/regions-zones (first = default)
    count_unit: str         # what the number in the accelerator type counts: cores or chips
    devices_per_chip: int   # TF replicas per chip (v4/v5p: one megacore device per chip)
    single_host_max: int    # largest single-host size, in count_unit
    min_tf: tuple[int, int, int]


GENERATIONS = {
    "v2": Generation("v2", ("us-central1-b", "us-central1-c"), "cores", 2, 8, (2, 0, 0)),
    "v3": Generation("v3", ("us-central1-a", "us-central1-b"), "cores", 2, 8, (2, 0, 0)),
    # v4: the -v4 images start at 2.9.1 (runtimes page); no v4 image for older TensorFlow
    "v4": Generation("v4", ("us-central2-b",), "cores", 1, 8, (2, 9, 1)),
    "v5litepod": Generation("v5litepod", ("us-central1-a", "us-south1-a", "us-west1-c",
                                          "us-west4-a"), "chips", 1, 8, (2, 15, 0)),
    "v5p": Generation("v5p", ("us-central1-a", "us-east5-a"), "cores", 1, 8, (2, 15, 0)),
    "v6e": Generation("v6e", ("us-central1-b", "us-east1-d", "us-east5-a", "us-east5-b",
                              "europe-west4-a"), "chips", 1, 8, (2, 15, 0)),
}

# Global batch per single-host TPU type: the TPU reference's default 2048 (its train_steps 218949
# = 350 epochs at 2048). The paper's 4096 (LR 0.256) is --train_batch_size=4096; whether it fits
# one host's HBM for B0 at 224 px was not measured.
DEFAULT_BATCH = {"v2": 2048, "v3": 2048, "v4": 2048, "v5litepod": 2048, "v5p": 2048,
                 "v6e": 2048}

NAME_RE = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
BUCKET_RE = re.compile(r"^[a-z0-9][a-z0-9._-]{1,61}[a-z0-9]$")


@dataclasses.dataclass(frozen=True)
class Accelerator:
    type: str
    generation: Generation
    count: int               # the number after the dash

    @property
    def chips(self) -> int:
        if self.generation.count_unit == "chips":
            return self.count
        return self.count // 2

    @property
    def replicas(self) -> int:
        """TPU devices TensorFlow sees = replicas of TPUStrategy."""
        if self.generation.count_unit == "chips":
            return self.count
        return self.chips * self.generation.devices_per_chip

    @property
    def multi_host(self) -> bool:
        return self.count > self.generation.single_host_max


def parse_accelerator(text: str) -> Accelerator:
    m = re.fullmatch(r"(v2|v3|v4|v5litepod|v5p|v6e)-(\d+)", text or "")
    if not m:
        raise ValueError(f"Unknown TPU accelerator type {text!r}; use e.g. v3-8, v4-8, "
                         f"v5litepod-8, v5p-8 or v6e-8 (generation-size as gcloud spells it).")
    return Accelerator(text, GENERATIONS[m.group(1)], int(m.group(2)))


def parse_tf_version(text: str) -> tuple[int, int, int]:
    m = re.fullmatch(r"(\d+)\.(\d+)\.(\d+)", text or "")
    if not m:
        raise ValueError(f"--tf_version must look like 2.16.1 (major.minor.patch); got {text!r}.")
    return tuple(int(x) for x in m.groups())  # type: ignore[return-value]


def runtime_version(acc: Accelerator, tf_version: str = DEFAULT_TF_VERSION,
                    device_api: str = "pjrt") -> str:
    """The TPU VM software version for `tf_version` on `acc`, by the rules of
    cloud.google.com/tpu/docs/runtimes: tpu-vm-tf-x.y.z[-pod][-{pjrt|se}] for TF >= 2.15
    (v5e/v5p/v6e: PJRT only), tpu-vm-tf-x.y.z[-pod] before 2.15, and the -v4 images for
    TPU v4 with TF 2.9.1 ... 2.10.0 (none older)."""
    v = parse_tf_version(tf_version)
    gen = acc.generation
    if device_api not in ("pjrt", "se"):
        raise ValueError(f"--device_api must be pjrt or se; got {device_api!r}.")
    if v > NEWEST_DOCUMENTED_TF:
        newest = ".".join(map(str, NEWEST_DOCUMENTED_TF))
        raise ValueError(
            f"No TPU VM software version for TensorFlow {tf_version} is documented (the newest in "
            f"cloud.google.com/tpu/docs/runtimes is {newest}). Use "
            f"--tf_version={DEFAULT_TF_VERSION} and install our package with --no-deps "
            f"(tpu/README.md), or pick an image from "
            f"`gcloud compute tpus tpu-vm versions list --zone=ZONE` and pass --runtime_version.")
    if v < gen.min_tf:
        oldest = ".".join(map(str, gen.min_tf))
        why = (" (the v4 images tpu-vm-tf-2.9.1-v4 ... tpu-vm-tf-2.10.0-v4 are the oldest; from "
               "2.10.1 on the regular images serve v4)" if gen.name == "v4" else "")
        raise ValueError(f"No TPU VM image runs TensorFlow {tf_version} on TPU {gen.name}: the "
                         f"oldest is {oldest}{why}. Pass --tf_version={oldest} or newer (default "
                         f"{DEFAULT_TF_VERSION}), or pick a TPU type whose images have your "
                         f"TensorFlow.")
    pod = "-pod" if acc.multi_host else ""
    if v > parse_tf_version(DEFAULT_TF_VERSION) and v[:2] not in DOCUMENTED_NEWER_MINORS:
        print(f"warning: the docs list TensorFlow {tf_version} for TPUs but not its image name; "
              f"built by their naming rule. Check `gcloud compute tpus tpu-vm versions list "
              f"--zone=ZONE` and pass --runtime_version if it differs.", file=sys.stderr)
    if v >= (2, 15, 0):
        if device_api == "se" and gen.name in ("v5litepod", "v5p", "v6e"):
            raise ValueError(f"TPU {gen.name} supports only the PJRT runtime; drop "
                             f"--device_api=se.")
        return f"tpu-vm-tf-{tf_version}{pod}-{device_api}"
    if gen.name == "v4" and v <= (2, 10, 0):
        return f"tpu-vm-tf-{tf_version}{pod}-v4"
    return f"tpu-vm-tf-{tf_version}{pod}"


def check_name(name: str, what: str = "--name") -> str:
    if not name or not NAME_RE.match(name):
        raise ValueError(f"{what} {name!r} is not a valid TPU name: use lowercase letters, digits "
                         f"and hyphens, starting with a letter, at most 63 characters.")
    return name


def check_gcs(url: str, what: str = "--bucket") -> str:
    """Returns url without a trailing slash; raises ValueError unless it is gs://bucket[/path]."""
    if not url or not url.startswith("gs://"):
        hint = " (that is a local path)" if url and ("/" in url or url.startswith(".")) else ""
        raise ValueError(
            f"{what} must be a Cloud Storage URL like gs://my-bucket/path; got {url!r}{hint}. "
            f"TPU VMs read the data and write checkpoints through gs://. Copy local files first: "
            f"python3 tpu/commands.py upload --src=LOCAL_DIR --dest=gs://my-bucket/path")
    bucket = url[len("gs://"):].split("/", 1)[0]
    if not BUCKET_RE.match(bucket) or ".." in bucket:
        raise ValueError(f"{what}: {bucket!r} is not a valid bucket name (3-63 lowercase letters, "
                         f"digits, '-', '_' or '.').")
    return url.rstrip("/")


def zone_for(acc: Accelerator, zone: str | None) -> str:
    if not zone:
        return acc.generation.zones[0]
    if zone not in acc.generation.zones:
        print(f"warning: the docs list {acc.type} in {', '.join(acc.generation.zones)}; using "
              f"--zone={zone} anyway (check: gcloud compute tpus tpu-vm accelerator-types list "
              f"--zone={zone}).", file=sys.stderr)
    return zone


def region_of(zone: str) -> str:
    return zone.rsplit("-", 1)[0]


def _project(project: str | None) -> list[str]:
    return [f"--project={project}"] if project else []


def _single_host(acc: Accelerator) -> Accelerator:
    if acc.multi_host:
        raise ValueError(
            f"{acc.type} is a multi-host slice; these scripts launch single-host TPU VMs only "
            f"(v2-8, v3-8, v4-8, v5litepod-1/4/8, v5p-8, v6e-1/4/8). Multi-host training has not "
            f"been tested with efficientnet_tf.")
    return acc


# ---------------------------------------------------------------- gcloud commands

def create_commands(name: str, accelerator_type: str, zone: str | None = None,
                    project: str | None = None, tf_version: str = DEFAULT_TF_VERSION,
                    runtime: str | None = None, device_api: str = "pjrt", spot: bool = False,
                    queued: bool = False) -> list[list[str]]:
    acc = _single_host(parse_accelerator(accelerator_type))
    check_name(name)
    zone = zone_for(acc, zone)
    runtime = runtime or runtime_version(acc, tf_version, device_api)
    extra = ["--spot"] if spot else []
    if queued:
        return [["gcloud", "compute", "tpus", "queued-resources", "create", f"{name}-qr",
                 f"--node-id={name}", f"--zone={zone}", f"--accelerator-type={acc.type}",
                 f"--runtime-version={runtime}", *_project(project), *extra]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "create", name, f"--zone={zone}",
             f"--accelerator-type={acc.type}", f"--version={runtime}", *_project(project), *extra]]


def delete_commands(name: str, zone: str, project: str | None = None,
                    queued: bool = False) -> list[list[str]]:
    check_name(name)
    if queued:
        return [["gcloud", "compute", "tpus", "queued-resources", "delete", f"{name}-qr",
                 f"--zone={zone}", *_project(project), "--force", "--quiet"]]
    return [["gcloud", "compute", "tpus", "tpu-vm", "delete", name, f"--zone={zone}",
             *_project(project), "--quiet"]]


def ssh_command(name: str, zone: str, project: str | None = None,
                remote: str | None = None) -> list[str]:
    check_name(name)
    cmd = ["gcloud", "compute", "tpus", "tpu-vm", "ssh", name, f"--zone={zone}", *_project(project)]
    if remote:
        cmd.append(f"--command={remote}")
    return cmd


def bucket_commands(bucket: str, zone: str, project: str | None = None) -> list[list[str]]:
    url = check_gcs(bucket)
    root = "gs://" + url[len("gs://"):].split("/", 1)[0]
    return [["gcloud", "storage", "buckets", "create", root, f"--location={region_of(zone)}",
             "--uniform-bucket-level-access", *_project(project)]]


def upload_commands(src: str, dest: str) -> list[list[str]]:
    if src.startswith("gs://"):
        raise ValueError(f"--src must be a local directory of TFRecords; got {src!r}.")
    return [["gcloud", "storage", "rsync", src, check_gcs(dest, "--dest"), "--recursive"]]


def install_commands(name: str, zone: str, project: str | None = None,
                     archive: str | None = None, tf_source: str = "image") -> list[list[str]]:
    """Copies this checkout (git archive of HEAD: committed files only) to the VM and runs
    tpu/setup_vm.sh there."""
    archive = archive or os.path.join(tempfile.gettempdir(), f"efficientnet_tf-{name}.tar.gz")
    if tf_source not in ("image", "pypi"):
        raise ValueError(f"--tf_source must be image or pypi; got {tf_source!r}.")
    remote = ("mkdir -p ~/efficientnet_tf"
              " && tar -xzf ~/efficientnet_tf.tar.gz -C ~/efficientnet_tf"
              f" && cd ~/efficientnet_tf && bash tpu/setup_vm.sh {tf_source}")
    return [["git", "-C", REPO_ROOT, "archive", "--format=tar.gz", f"--output={archive}", "HEAD"],
            ["gcloud", "compute", "tpus", "tpu-vm", "scp", archive,
             f"{check_name(name)}:~/efficientnet_tf.tar.gz", f"--zone={zone}", *_project(project)],
            ssh_command(name, zone, project, remote)]


# ---------------------------------------------------------------- training commands

VENV = "~/efn-venv"  # made by tpu/setup_vm.sh pypi
VENV_LIBTPU = "import libtpu; print(libtpu.get_library_path())"  # as in tpu/setup_vm.sh


def pjrt_env(runtime: str | None, tf_source: str = "image") -> list[str]:
    """Environment for TF on a single-host -pjrt image (as Google's own TF-on-TPU test configs set
    it: GoogleCloudPlatform/ml-auto-solutions dags/solutions_team/configs/tensorflow/common.py).
    The library is the image's /lib/libtpu.so; with tf_source=pypi it is the venv's libtpu,
    whose path remote_job looks up on the VM."""
    if not runtime or not runtime.endswith("-pjrt"):
        return []
    if tf_source == "pypi":
        return ["NEXT_PLUGGABLE_DEVICE_USE_C_API=true"]
    return ["NEXT_PLUGGABLE_DEVICE_USE_C_API=true",
            "TF_PLUGGABLE_DEVICE_LIBRARY_PATH=/lib/libtpu.so"]


def steps_for_epochs(epochs: float, batch: int) -> int:
    """Rounded down, as the TPU reference counts them (218949 = 350 epochs at 2048)."""
    return int(epochs * IMAGENET_TRAIN_IMAGES / batch)


def train_argv(accelerator_type: str, bucket: str | None = None, model: str = "efficientnet-b0",
               run_name: str | None = None, data_dir: str | None = None,
               model_dir: str | None = None, mode: str = "train_and_eval",
               train_batch_size: int | None = None, eval_batch_size: int = 1024,
               steps_per_execution: int = 1251, epochs: float = 350,
               train_steps: int | None = None, synthetic: bool = False,
               overrides: Sequence[str] = (),
               tpu: str = "local", python: str = "python3") -> list[str]:
    """`python3 -m efficientnet_tf.train ...` with the paper's recipe for one TPU type."""
    acc = _single_host(parse_accelerator(accelerator_type))
    if model not in MODELS:
        raise ValueError(f"Unknown --model {model!r}; choose one of {', '.join(MODELS)}.")
    if mode not in ("train", "train_and_eval"):
        raise ValueError(f"--mode must be train or train_and_eval here (eval: use the eval "
                         f"subcommand); got {mode!r}.")
    if not (bucket or (model_dir and (data_dir or synthetic))):
        raise ValueError("Give --bucket=gs://BUCKET (data in gs://BUCKET/imagenet, runs in "
                         "gs://BUCKET/runs), or --data_dir and --model_dir.")
    run_name = run_name or f"{model}-{acc.type}"
    if bucket:
        bucket = check_gcs(bucket)
        data_dir = data_dir or f"{bucket}/imagenet"
        model_dir = model_dir or f"{bucket}/runs/{run_name}"
    model_dir = check_gcs(model_dir, "--model_dir")
    batch = train_batch_size or DEFAULT_BATCH[acc.generation.name]
    for what, b in (("--train_batch_size", batch), ("--eval_batch_size", eval_batch_size)):
        if b <= 0 or b % acc.replicas:
            raise ValueError(f"{what}={b} must be a positive multiple of the {acc.replicas} TPU "
                             f"replicas of a {acc.type}.")
    if steps_per_execution <= 0:
        raise ValueError(f"--steps_per_execution must be positive; got {steps_per_execution}.")
    argv = [python, "-m", TRAIN_MODULE, f"--tpu={tpu}", "--strategy=tpu", f"--model_name={model}",
            f"--model_dir={model_dir}", f"--mode={mode}", f"--train_batch_size={batch}",
            f"--eval_batch_size={eval_batch_size}", f"--steps_per_execution={steps_per_execution}",
            f"--train_steps={train_steps}" if train_steps else f"--epochs={epochs:g}",
            "--use_bfloat16"]
    if synthetic:
        argv.append("--use_synthetic_data")
    else:
        argv.append(f"--data_dir={check_gcs(data_dir, '--data_dir')}")
    argv += [f"--override={o}" for o in overrides]
    return argv


def eval_argv(model_dir: str, data_dir: str, model: str = "efficientnet-b0",
              eval_batch_size: int = 1024, eval_timeout: int = 7200, tpu: str | None = None,
              python: str = "python3") -> list[str]:
    """Continuous evaluation (`--mode=eval`) of every new checkpoint in model_dir. A TPU is held
    by one process, so run this on another machine: on CPU (tpu=None) or on a second TPU VM."""
    if model not in MODELS:
        raise ValueError(f"Unknown --model {model!r}; choose one of {', '.join(MODELS)}.")
    argv = [python, "-m", TRAIN_MODULE, f"--model_name={model}",
            f"--model_dir={check_gcs(model_dir, '--model_dir')}",
            f"--data_dir={check_gcs(data_dir, '--data_dir')}", "--mode=eval",
            f"--eval_batch_size={eval_batch_size}", f"--eval_timeout={eval_timeout}"]
    argv += [f"--tpu={tpu}", "--strategy=tpu"] if tpu else ["--strategy=default"]
    return argv


def job_files(log: str) -> tuple[str, str]:
    """The job's pid file and exit-code file on the VM, next to its log."""
    stem = log[:-len(".log")] if log.endswith(".log") else log
    return f"{stem}.pid", f"{stem}.exit"


def _running(pid: str) -> str:
    return f'[ -f {pid} ] && kill -0 "$(cat {pid})" 2>/dev/null'


def remote_job(argv: Sequence[str], log: str = "~/train.log", workdir: str = "~/efficientnet_tf",
               runtime: str | None = None, tf_source: str = "image") -> str:
    """The shell line run on the VM over ssh: cd, the venv for tf_source=pypi, then the job in the
    background (nohup, stdin from /dev/null so ssh does not wait for it, output appended to
    `log`) so it survives the ssh session. The job's pid and, when it ends, its exit code go to
    job_files(log); a job still running is not started twice."""
    if tf_source not in ("image", "pypi"):
        raise ValueError(f"--tf_source must be image or pypi; got {tf_source!r}.")
    env = pjrt_env(runtime, tf_source)
    job = shlex.join(["env", *env, *argv]) if env else shlex.join(argv)
    pid, code = job_files(log)
    if tf_source == "pypi":
        steps = [f". {VENV}/bin/activate"]
        if env:
            steps += [f'lib="$(python3 -c {shlex.quote(VENV_LIBTPU)})"',
                      'export TF_PLUGGABLE_DEVICE_LIBRARY_PATH="$lib"']
    else:
        steps = [f"if [ -d {VENV} ]; then echo 'error: {VENV} exists on the VM (set up with "
                 f"--tf_source=pypi): pass --tf_source=pypi' >&2; exit 2; fi"]
    start = (f"rm -f {code}; nohup sh -c {shlex.quote(f'{job}; echo $? > {code}')} "
             f"< /dev/null >> {log} 2>&1 & echo $! > {pid}")
    guard = (f'if {_running(pid)}; then echo "already running (pid $(cat {pid})), not started '
             f'again"; else {start}; fi')
    return " && ".join([f"cd {workdir}", *steps, guard])


def job_status_remote(log: str = "~/train.log", workdir: str = "~/efficientnet_tf") -> str:
    """Prints `running`, `exit N` (the job ended with code N), `not-installed` (no checkout on
    the VM) or `gone` (no such job: never started here, or killed with the VM before it could
    write its exit code)."""
    pid, code = job_files(log)
    return (f'if {_running(pid)}; then echo running; elif [ -f {code} ]; then echo "exit '
            f'$(cat {code})"; elif [ ! -d {workdir} ]; then echo not-installed; else echo gone; '
            f'fi')


def train_log(run_name: str | None) -> str:
    return f"~/{run_name or 'train'}.log"


def train_commands(name: str | None, zone: str | None, project: str | None = None,
                   runtime: str | None = None, tf_version: str = DEFAULT_TF_VERSION,
                   tf_source: str = "image", **kwargs) -> list[list[str]]:
    argv = train_argv(**kwargs)
    if not name:
        return [argv]
    acc = parse_accelerator(kwargs["accelerator_type"])
    runtime = runtime or runtime_version(acc, tf_version)
    return [ssh_command(name, zone_for(acc, zone), project,
                        remote_job(argv, train_log(kwargs.get("run_name")), runtime=runtime,
                                   tf_source=tf_source))]


def estimate_hours(images_per_sec: float, epochs: float = 350) -> float:
    if images_per_sec <= 0:
        raise ValueError("--images_per_sec must be positive.")
    return epochs * IMAGENET_TRAIN_IMAGES / images_per_sec / 3600


# ---------------------------------------------------------------- recover: the supervise loop

# Node states (gcloud compute tpus tpu-vm describe --format=value(state)) after which the VM must
# be deleted and created again; NOT_FOUND stands for "describe says it does not exist".
LOST_STATES = ("PREEMPTED", "TERMINATED", "NOT_FOUND")
# Queued-resource states (state.state) in which it will not give us the node any more.
QR_DEAD_STATES = ("FAILED", "SUSPENDING", "SUSPENDED")
SIGTERM_EXIT = 143  # the training job saved a checkpoint after SIGTERM (efficientnet_tf.train)
MAX_GCLOUD_ERRORS = 5  # failed describe/status calls in a row before giving up


@dataclasses.dataclass(frozen=True)
class RecoverPlan:
    name: str
    launch: list[str]                 # ssh: the training job in the background
    status: list[str]                 # ssh: prints running / exit N / gone
    describe: list[str]               # the node's state
    queued_describe: list[str] | None  # the queued resource's state (None: not queued)
    delete: list[list[str]]
    create: list[list[str]]
    install: list[list[str]]          # copy this checkout, setup_vm.sh


def recover_plan(name: str, accelerator_type: str, zone: str | None = None,
                 project: str | None = None, tf_version: str = DEFAULT_TF_VERSION,
                 runtime: str | None = None, device_api: str = "pjrt", spot: bool = False,
                 queued: bool = False, tf_source: str = "image", **train_kwargs) -> RecoverPlan:
    acc = _single_host(parse_accelerator(accelerator_type))
    check_name(name)
    zone = zone_for(acc, zone)
    runtime = runtime or runtime_version(acc, tf_version, device_api)
    log = train_log(train_kwargs.get("run_name"))
    argv = train_argv(accelerator_type, **train_kwargs)
    tpus = ["gcloud", "compute", "tpus"]
    return RecoverPlan(
        name=name,
        launch=ssh_command(name, zone, project, remote_job(argv, log, runtime=runtime,
                                                           tf_source=tf_source)),
        status=ssh_command(name, zone, project, job_status_remote(log)),
        describe=[*tpus, "tpu-vm", "describe", name, f"--zone={zone}", *_project(project),
                  "--format=value(state)"],
        queued_describe=([*tpus, "queued-resources", "describe", f"{name}-qr", f"--zone={zone}",
                          *_project(project), "--format=value(state.state)"] if queued else None),
        delete=delete_commands(name, zone, project, queued),
        create=create_commands(name, acc.type, zone, project, tf_version, runtime, device_api,
                               spot, queued),
        install=install_commands(name, zone, project, tf_source=tf_source))


def _stamp(message: str) -> None:
    print(f"[{time.strftime('%Y-%m-%d %H:%M:%S')}] {message}", flush=True)


def _run(cmd: list[str], capture: bool) -> tuple[int, str, str]:
    r = subprocess.run(cmd, capture_output=capture, text=True)
    return r.returncode, r.stdout or "", r.stderr or ""


class Recover:
    """Launch; every poll_seconds read the VM's state and the job's; after a preemption or a
    maintenance event delete, create, install and launch the same job again (it resumes from the
    latest checkpoint in model_dir), at most max_recoveries times; stop when the job exits 0.
    sleep, run and log are parameters so that tests run in milliseconds."""

    def __init__(self, plan: RecoverPlan, max_recoveries: int = 10, poll_seconds: float = 300,
                 sleep: Callable[[float], None] = time.sleep,
                 run: Callable[[list[str], bool], tuple[int, str, str]] = _run,
                 log: Callable[[str], None] = _stamp):
        if max_recoveries < 0:
            raise ValueError(f"--max_recoveries must be >= 0; got {max_recoveries}.")
        if poll_seconds < 0:
            raise ValueError(f"--poll_seconds must be >= 0; got {poll_seconds}.")
        self.plan, self.max_recoveries, self.poll_seconds = plan, max_recoveries, poll_seconds
        self.sleep, self.run, self.log = sleep, run, log
        self.recoveries = self.errors = 0

    def _call(self, cmd: list[str], capture: bool = False) -> tuple[int, str, str]:
        if not capture:
            self.log("+ " + shlex.join(cmd))
        return self.run(cmd, capture)

    def _steps(self, cmds: list[list[str]], what: str) -> bool:
        for cmd in cmds:
            rc = self._call(cmd)[0]
            if rc:
                self.log(f"{what}: {cmd[0]} exited with {rc}")
                return False
        return True

    def _error(self, what: str, rc: int, err: str) -> None:
        self.errors += 1
        self.log(f"{what} failed (exit {rc}, {self.errors}/{MAX_GCLOUD_ERRORS} in a row): "
                 f"{err.strip()[-300:]}")

    def _state(self, cmd, what: str) -> str | None:
        """The state a describe command prints, NOT_FOUND, or None when gcloud failed."""
        rc, out, err = self._call(cmd, capture=True)
        if rc == 0:
            return out.strip() or "UNKNOWN"
        if "NOT_FOUND" in err or "not found" in err.lower():
            return "NOT_FOUND"
        self._error(what, rc, err)
        return None

    def vm_state(self) -> str | None:
        return self._state(self.plan.describe, "describe")

    def job_state(self) -> str | None:
        rc, out, err = self._call(self.plan.status, capture=True)
        last = (out.strip().splitlines() or [""])[-1].strip()
        if rc == 0 and re.fullmatch(r"running|gone|not-installed|exit -?\d+", last):
            return last
        self._error("job status over ssh", rc, err or out)
        return None

    def queued_state(self) -> str | None:
        return self._state(self.plan.queued_describe, "queued-resources describe")

    def _queue_alive(self) -> bool | None:
        """For a queued resource whose node is not READY: True while the request can still be
        served, False when it cannot, None when gcloud failed."""
        q = self.queued_state()
        if q is None:
            return None
        alive = q not in QR_DEAD_STATES and q != "NOT_FOUND"
        self.log(f"{self.plan.name}-qr: {q}" + ("; waiting for the node" if alive else ""))
        return alive

    def wait_until_ready(self) -> bool:
        """After create: the node READY (True), or the request lost (False)."""
        while True:
            self.sleep(self.poll_seconds)
            state = self.vm_state()
            if state == "READY":
                return True
            if state is not None and self.plan.queued_describe is not None:
                alive = self._queue_alive()
                if alive is False:
                    return False
                if alive is None:
                    state = None
            elif state in LOST_STATES:
                self.log(f"{self.plan.name}: {state} before it was READY")
                return False
            if state is None:
                if self.errors >= MAX_GCLOUD_ERRORS:
                    return False
                continue
            self.errors = 0
            self.log(f"{self.plan.name}: {state}; waiting for READY")

    def recover(self, state: str, job: str | None) -> None:
        """One recovery: the same job again, on a new VM when the old one is lost."""
        self.recoveries += 1
        n = f"recovery {self.recoveries}/{self.max_recoveries}"
        if state in LOST_STATES:
            self.log(f"{n}: {self.plan.name} is {state}: delete, create, install, launch")
            for cmd in self.plan.delete:  # may fail when there is nothing left to delete
                rc = self._call(cmd)[0]
                if rc:
                    self.log(f"delete: exit {rc} (nothing to delete?); creating anyway")
            ok = (self._steps(self.plan.create, "create") and self.wait_until_ready()
                  and self._steps(self.plan.install, "install"))
        elif job == "not-installed":
            self.log(f"{n}: {self.plan.name} is READY without our checkout: install, launch")
            ok = self._steps(self.plan.install, "install")
        else:
            self.log(f"{n}: {self.plan.name} is READY but the job is {job}: launch again")
            ok = True
        if not ok:
            self.log(f"{n} did not get a working VM; polling on")
            return
        self._steps([self.plan.launch], "launch")

    def loop(self) -> int:
        self._steps([self.plan.launch], "launch")
        while True:
            self.sleep(self.poll_seconds)
            state = self.vm_state()
            job = self.job_state() if state == "READY" else None
            if state == "NOT_FOUND" and self.plan.queued_describe is not None:
                alive = self._queue_alive()  # not served yet (after `create --queued`)?
                if alive is None:
                    state = None
                elif alive:
                    self.errors = 0
                    continue
            if self.errors >= MAX_GCLOUD_ERRORS:
                self.log(f"giving up: {MAX_GCLOUD_ERRORS} gcloud calls in a row failed (see "
                         f"above); fix gcloud access and run the same command again.")
                return 1
            if state is None or (state == "READY" and job is None):
                continue
            self.errors = 0  # a poll that worked
            if state == "READY" and job == "running":
                continue
            if state == "READY" and job == "exit 0":
                self.log(f"done: the job on {self.plan.name} exited 0.")
                return 0
            if state == "READY" and job not in ("gone", "not-installed", f"exit {SIGTERM_EXIT}"):
                self.log(f"stopping: the job on {self.plan.name} ended with {job}, which is no "
                         f"preemption; read its log on the VM, fix, and run the same command "
                         f"again (it resumes from the latest checkpoint).")
                return 1
            if state != "READY" and state not in LOST_STATES:
                self.log(f"{self.plan.name}: {state}; waiting")
                continue
            if self.recoveries >= self.max_recoveries:
                self.log(f"giving up: {self.plan.name} is {state} (job: {job or 'unknown'}) "
                         f"and all {self.max_recoveries} recoveries (--max_recoveries) are "
                         f"used; run the same command again to go on from the latest "
                         f"checkpoint.")
                return 1
            self.recover(state, job)


# ---------------------------------------------------------------- CLI

def _add_common(p: argparse.ArgumentParser, name_required: bool = True) -> None:
    p.add_argument("--name", required=name_required, help="TPU VM name.")
    p.add_argument("--zone", default=None, help="GCE zone (default: first documented zone of the "
                                                "accelerator's generation).")
    p.add_argument("--project", default=None, help="GCP project (default: gcloud's).")
    p.add_argument("--accelerator_type", default="v3-8", help="v3-8, v4-8, ... (default v3-8).")
    p.add_argument("--dry_run", action="store_true", help="Print the commands; run nothing.")


def _add_train(p: argparse.ArgumentParser) -> None:
    p.add_argument("--bucket", default=None, help="gs://BUCKET: data in BUCKET/imagenet, runs in "
                                                   "BUCKET/runs/RUN_NAME.")
    p.add_argument("--data_dir", default=None)
    p.add_argument("--model_dir", default=None)
    p.add_argument("--model", default="efficientnet-b0", choices=MODELS)
    p.add_argument("--run_name", default=None)
    p.add_argument("--tf_version", default=DEFAULT_TF_VERSION)
    p.add_argument("--runtime_version", default=None)
    p.add_argument("--tf_source", default="image", choices=("image", "pypi"),
                   help="As the VM was installed: image TensorFlow, or the pypi venv.")


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("create", help="Create a TPU VM (or a queued resource).")
    _add_common(p)
    p.add_argument("--tf_version", default=DEFAULT_TF_VERSION,
                   help=f"TensorFlow of the TPU VM image (default {DEFAULT_TF_VERSION}).")
    p.add_argument("--runtime_version", default=None, help="Exact software version; overrides "
                                                           "--tf_version.")
    p.add_argument("--device_api", default="pjrt", choices=("pjrt", "se"))
    p.add_argument("--spot", action="store_true", help="Spot VM: cheaper, can be preempted.")
    p.add_argument("--queued", action="store_true", help="Use a queued resource request.")
    p.add_argument("--install", action="store_true", help="Then copy this checkout to the VM and "
                                                          "run tpu/setup_vm.sh there.")
    p.add_argument("--tf_source", default="image", choices=("image", "pypi"))

    p = sub.add_parser("delete", help="Delete the TPU VM (or its queued resource).")
    _add_common(p)
    p.add_argument("--queued", action="store_true")

    p = sub.add_parser("bucket", help="Create the bucket in the TPU's region.")
    _add_common(p, name_required=False)
    p.add_argument("--bucket", required=True)

    p = sub.add_parser("upload", help="Copy local TFRecord shards to the bucket.")
    p.add_argument("--src", required=True)
    p.add_argument("--dest", required=True)
    p.add_argument("--dry_run", action="store_true")

    p = sub.add_parser("install", help="Copy this checkout to the VM and install it there.")
    _add_common(p)
    p.add_argument("--tf_source", default="image", choices=("image", "pypi"),
                   help="image: keep the image's TensorFlow; pypi: tensorflow-tpu in a venv.")

    for cmd in ("train", "smoke", "recover"):
        p = sub.add_parser(cmd, help={
            "train": "Launch training on the VM over ssh (no --name: print the command to run "
                     "on the VM itself).",
            "smoke": "Throughput check with synthetic data (3 executions of 100 steps).",
            "recover": "Launch training and keep it going: after a preemption or maintenance "
                       "event delete, re-create, re-install the VM and resume."}[cmd])
        _add_common(p, name_required=cmd == "recover")
        _add_train(p)
        p.add_argument("--mode", default="train_and_eval", choices=("train", "train_and_eval"))
        p.add_argument("--train_batch_size", type=int, default=None)
        p.add_argument("--eval_batch_size", type=int, default=1024)
        p.add_argument("--steps_per_execution", type=int, default=100 if cmd == "smoke" else 1251,
                       help="Steps per device loop (the reference's iterations_per_loop: 1251).")
        p.add_argument("--epochs", type=float, default=350)
        p.add_argument("--override", action="append", default=[])
    # recover: how the VM is created again (as `create`), and the loop
    p.add_argument("--device_api", default="pjrt", choices=("pjrt", "se"))
    p.add_argument("--spot", action="store_true", help="Re-create as a Spot VM.")
    p.add_argument("--queued", action="store_true", help="The VM is (and is re-created as) a "
                                                         "queued resource NAME-qr.")
    p.add_argument("--max_recoveries", type=int, default=10,
                   help="Re-creates/relaunches before giving up (default 10).")
    p.add_argument("--poll_seconds", type=float, default=300,
                   help="Seconds between two looks at the VM and the job (default 300).")

    p = sub.add_parser("eval", help="Continuous evaluation command (CPU or a second TPU).")
    _add_common(p, name_required=False)
    _add_train(p)
    p.add_argument("--eval_batch_size", type=int, default=1024)
    p.add_argument("--eval_timeout", type=int, default=7200)
    p.add_argument("--eval_tpu", default=None, help="'local' to evaluate on this VM's TPU (a "
                                                     "second TPU VM, not the training one).")

    p = sub.add_parser("versions", help="List the TPU VM software versions of a zone.")
    _add_common(p, name_required=False)

    p = sub.add_parser("tensorboard", help="TensorBoard on the runs in the bucket.")
    p.add_argument("--bucket", required=True)
    p.add_argument("--dry_run", action="store_true")

    p = sub.add_parser("estimate", help="Hours for a full run at a measured images/s.")
    p.add_argument("--images_per_sec", type=float, required=True)
    p.add_argument("--epochs", type=float, default=350)
    return ap


def recover_plan_for(args: argparse.Namespace) -> RecoverPlan:
    return recover_plan(
        args.name, args.accelerator_type, args.zone, args.project, args.tf_version,
        args.runtime_version, args.device_api, args.spot, args.queued, args.tf_source,
        bucket=args.bucket, model=args.model, run_name=args.run_name, data_dir=args.data_dir,
        model_dir=args.model_dir, mode=args.mode, train_batch_size=args.train_batch_size,
        eval_batch_size=args.eval_batch_size, steps_per_execution=args.steps_per_execution,
        epochs=args.epochs, overrides=list(args.override))


def commands_for(args: argparse.Namespace) -> list[list[str]]:
    acc_type = getattr(args, "accelerator_type", "v3-8")
    if args.cmd == "create":
        cmds = create_commands(args.name, acc_type, args.zone, args.project, args.tf_version,
                               args.runtime_version, args.device_api, args.spot, args.queued)
        if args.install and args.queued:
            raise ValueError("--install needs the VM now; a queued resource is provisioned later. "
                             "Run `python3 tpu/commands.py install --name=...` once it is ACTIVE.")
        if args.install:
            cmds += install_commands(args.name, zone_for(parse_accelerator(acc_type), args.zone),
                                     args.project, tf_source=args.tf_source)
        return cmds
    zone = zone_for(parse_accelerator(acc_type), getattr(args, "zone", None)) \
        if hasattr(args, "zone") else None
    if args.cmd == "delete":
        return delete_commands(args.name, zone, args.project, args.queued)
    if args.cmd == "bucket":
        return bucket_commands(args.bucket, zone, args.project)
    if args.cmd == "upload":
        return upload_commands(args.src, args.dest)
    if args.cmd == "install":
        return install_commands(args.name, zone, args.project, tf_source=args.tf_source)
    if args.cmd in ("train", "smoke"):
        smoke = args.cmd == "smoke"
        spe = args.steps_per_execution
        return train_commands(
            args.name, zone, args.project, args.runtime_version, args.tf_version,
            accelerator_type=acc_type, bucket=args.bucket, model=args.model,
            run_name=args.run_name or (f"{args.model}-{acc_type}-synthetic" if smoke else None),
            data_dir=args.data_dir, model_dir=args.model_dir,
            mode="train" if smoke else args.mode, train_batch_size=args.train_batch_size,
            eval_batch_size=args.eval_batch_size, steps_per_execution=spe,
            epochs=args.epochs, train_steps=3 * spe if smoke else None, synthetic=smoke,
            overrides=list(args.override), tf_source=args.tf_source)
    if args.cmd == "recover":
        plan = recover_plan_for(args)
        return [plan.launch, plan.status, plan.describe,
                *([plan.queued_describe] if plan.queued_describe else []),
                *plan.delete, *plan.create, *plan.install]
    if args.cmd == "eval":
        bucket = check_gcs(args.bucket) if args.bucket else None
        run = args.run_name or f"{args.model}-{acc_type}"
        model_dir = args.model_dir or (f"{bucket}/runs/{run}" if bucket else None)
        data_dir = args.data_dir or (f"{bucket}/imagenet" if bucket else None)
        if not (model_dir and data_dir):
            raise ValueError("Give --bucket, or --model_dir and --data_dir.")
        argv = eval_argv(model_dir, data_dir, args.model, args.eval_batch_size, args.eval_timeout,
                         args.eval_tpu)
        if not args.name:
            return [argv]
        runtime = (args.runtime_version or runtime_version(parse_accelerator(acc_type),
                                                           args.tf_version)
                   if args.eval_tpu else None)
        return [ssh_command(args.name, zone, args.project,
                            remote_job(argv, f"~/eval-{run}.log", runtime=runtime,
                                       tf_source=args.tf_source))]
    if args.cmd == "versions":
        return [["gcloud", "compute", "tpus", "tpu-vm", "versions", "list", f"--zone={zone}",
                 *_project(args.project)]]
    if args.cmd == "tensorboard":
        return [["tensorboard", f"--logdir={check_gcs(args.bucket)}/runs"]]
    raise ValueError(f"unknown command {args.cmd}")


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.cmd == "estimate":
            h = estimate_hours(args.images_per_sec, args.epochs)
            print(f"{args.epochs:g} epochs of ImageNet ({IMAGENET_TRAIN_IMAGES} images) at "
                  f"{args.images_per_sec:g} images/s: {h:.1f} h")
            return 0
        cmds = commands_for(args)
        dry = getattr(args, "dry_run", False)
        if args.cmd == "recover" and not dry:
            loop = Recover(recover_plan_for(args), args.max_recoveries, args.poll_seconds)
            return loop.loop()
    except ValueError as e:
        print(f"tpu/commands.py: error: {e}", file=sys.stderr)
        return 2
    for cmd in cmds:
        print(("" if dry else "+ ") + shlex.join(cmd), flush=True)
        if not dry:
            rc = subprocess.run(cmd).returncode
            if rc:
                print(f"tpu/commands.py: {cmd[0]} exited with {rc}", file=sys.stderr)
                return rc
    return 0


if __name__ == "__main__":
    sys.exit(main())
