"""Distribution strategy set-up: Cloud TPU, multi-worker, mirrored, one device."""
from __future__ import annotations

import json
import os

import tensorflow as tf

STRATEGIES = ("tpu", "multi_worker_mirrored", "mirrored", "one_device", "default")


def make_strategy(kind: str = "default", tpu: str | None = None, tpu_zone: str | None = None,
                  gcp_project: str | None = None) -> tf.distribute.Strategy:
    """Returns the strategy for `kind`; `tpu` given implies kind "tpu".

    - tpu: TPUClusterResolver(tpu, zone, project) -> connect -> initialize_tpu_system ->
      TPUStrategy. On a TPU VM pass tpu="local" (or the TPU name).
    - multi_worker_mirrored: MultiWorkerMirroredStrategy configured from the TF_CONFIG
      environment variable (required, checked here).
    - mirrored: all GPUs; without GPUs, every logical CPU device (2+ needed for >1 replica).
    - one_device: the first GPU, else the CPU.  default: tf.distribute.get_strategy().
    """
    if tpu and kind in ("default", "tpu"):
        kind = "tpu"
    if kind not in STRATEGIES:
        raise ValueError(f"Unknown strategy {kind!r}; choose one of {', '.join(STRATEGIES)}.")
    if kind == "tpu":
        if not tpu:
            raise ValueError("strategy 'tpu' needs --tpu (the TPU name, or 'local' on a TPU VM).")
        resolver = tf.distribute.cluster_resolver.TPUClusterResolver(
            tpu=tpu, zone=tpu_zone, project=gcp_project)
        if tpu != "local":
            tf.config.experimental_connect_to_cluster(resolver)
        tf.tpu.experimental.initialize_tpu_system(resolver)
        return tf.distribute.TPUStrategy(resolver)
    if kind == "multi_worker_mirrored":
        check_tf_config(os.environ.get("TF_CONFIG"))
        return tf.distribute.MultiWorkerMirroredStrategy()
    if kind == "mirrored":
        gpus = tf.config.list_logical_devices("GPU")
        devices = [d.name for d in (gpus or tf.config.list_logical_devices("CPU"))]
        return tf.distribute.MirroredStrategy(devices=devices)
    if kind == "one_device":
        gpus = tf.config.list_logical_devices("GPU")
        return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")
    return tf.distribute.get_strategy()


def check_tf_config(raw: str | None) -> dict:
    """Parses TF_CONFIG and says what is wrong with it, for multi-worker training."""
    example = ('{"cluster": {"worker": ["host1:12345", "host2:12345"]}, '
               '"task": {"type": "worker", "index": 0}}')
    if not raw:
        raise ValueError("strategy multi_worker_mirrored needs the TF_CONFIG environment variable, "
                         f"e.g. TF_CONFIG='{example}' (index differs per worker).")
    try:
        cfg = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ValueError(f"TF_CONFIG is not valid JSON ({e}); expected e.g. {example}") from None
    workers = cfg.get("cluster", {}).get("worker")
    task = cfg.get("task", {})
    if not workers or task.get("type") not in ("worker", "chief") or "index" not in task:
        raise ValueError(f"TF_CONFIG needs cluster.worker and task.type/index; got {raw}. "
                         f"Expected e.g. {example}")
    return cfg


def per_replica_batch_size(global_batch_size: int, strategy: tf.distribute.Strategy,
                           what: str = "global batch size") -> int:
    n = strategy.num_replicas_in_sync
    if global_batch_size % n:
        lo, hi = global_batch_size // n * n, (global_batch_size // n + 1) * n
        raise ValueError(
            f"The {what} {global_batch_size} is not divisible by the {n} replicas; "
            f"use {lo or hi} or {hi}.")
    return global_batch_size // n
