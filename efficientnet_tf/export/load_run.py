"""Rebuild a trained model from a model_dir (config.yaml + tf.train.Checkpoint) for export.

The training job writes model_dir/config.yaml and checkpoints of
tf.train.Checkpoint(model=..., optimizer=..., ema=...) with a CheckpointManager. Here only the
model (and the EMA, when the checkpoint has one) is restored; the optimizer slots are skipped
(expect_partial). The EMA averages are copied into the model, as the reference exports them.
This module knows the checkpoint format (config, factory, EMA), not the trainer.
"""
from __future__ import annotations

import dataclasses
import json
import os
import re
from typing import Callable

import keras
import tensorflow as tf

from efficientnet_tf import config as cfglib
from efficientnet_tf import factory
from efficientnet_tf.ema import ExponentialMovingAverage
from efficientnet_tf.rundir import RunDir


@dataclasses.dataclass
class LoadedModel:
    model: keras.Model
    config: cfglib.TrainConfig
    checkpoint: str
    step: int | None
    ema: bool

    def describe(self) -> str:
        step = "?" if self.step is None else self.step
        weights = f"EMA weights from step {step}" if self.ema else (
            f"raw weights from step {step} (no EMA in checkpoint)")
        return f"{weights}: {self.checkpoint}"


def _default_ema_factory(model, config):
    decay = getattr(getattr(config, "optimizer", None), "ema_decay", None) or 0.9999
    return ExponentialMovingAverage(model, decay)


def checkpoint_step(path: str, keys: set[str]) -> int | None:
    """The training step of a checkpoint: the optimizer's iteration counter, else ckpt-<N>."""
    reader = _reader(path)
    for key in ("optimizer/iterations/.ATTRIBUTES/VARIABLE_VALUE",
                "optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE",
                "step/.ATTRIBUTES/VARIABLE_VALUE"):
        if key in keys:
            return int(reader.get_tensor(key))
    m = re.search(r"-(\d+)$", path)
    return int(m.group(1)) if m else None


def _reader(prefix: str):
    """A reader of the checkpoint at prefix. tf.train.load_checkpoint asks isdir(prefix) first,
    which ram:// answers yes for any prefix of a file name; this opens the prefix as given."""
    return tf.compat.v1.train.NewCheckpointReader(prefix)


def read_run_config(model_dir: str) -> cfglib.TrainConfig:
    """The TrainConfig a training job wrote to model_dir/config.yaml."""
    path = RunDir(model_dir).config_path
    if not tf.io.gfile.exists(path):
        raise FileNotFoundError(f"{path} not found: --model_dir must be a training job's "
                                "model_dir (it writes config.yaml next to the checkpoints).")
    return cfglib.load_config(path)


def load_model_for_export(model_dir: str, checkpoint: str | None = None, use_ema: bool = True,
                          config=None, ema_factory: Callable | None = None,
                          build_model: Callable | None = None) -> LoadedModel:
    """Model of model_dir/config.yaml with the weights of its latest (or the given) checkpoint.

    EMA weights are used when the checkpoint has an `ema` object and use_ema is True.
    ema_factory(model, config) builds the object the EMA was saved from (default:
    efficientnet_tf.ema.ExponentialMovingAverage); it must have copy_to(model). build_model(config)
    makes the model (default: factory.build_model_from_config).
    The model is built in float32 whatever mixed-precision policy training used.
    """
    if config is None:
        config = read_run_config(model_dir)
    ckpt_path = checkpoint or tf.train.latest_checkpoint(model_dir)
    if not ckpt_path:
        raise FileNotFoundError(f"No checkpoint in {model_dir} (no 'checkpoint' file listing "
                                "ckpt-N): train first, or pass --checkpoint=<path/ckpt-N>.")
    model = (build_model or factory.build_model_from_config)(config)
    keys = set(_reader(ckpt_path).get_variable_to_shape_map())
    has_ema = any(k.startswith("ema/") for k in keys)
    objects = {"model": model}
    ema = None
    if has_ema and use_ema:
        ema = (ema_factory or _default_ema_factory)(model, config)
        objects["ema"] = ema
    status = tf.train.Checkpoint(**objects).restore(ckpt_path).expect_partial()
    try:
        status.assert_existing_objects_matched()
    except AssertionError as e:
        raise ValueError(f"{ckpt_path} does not match the model of {model_dir}/config.yaml "
                         f"(was the config edited after training?): {str(e)[:500]}") from e
    if ema is not None:
        ema.copy_to(model)
    return LoadedModel(model, config, ckpt_path, checkpoint_step(ckpt_path, keys), ema is not None)


def read_label_names(path: str) -> list[str] | None:
    """Class names from labels.json / labels.txt (a file, or a directory holding one).

    labels.json (the converter's): classes[i].name, else classes[i].synset.
    labels.txt: one name per line, in label order. Returns None for a directory without either.
    """
    if tf.io.gfile.isdir(path):
        for name in ("labels.json", "labels.txt"):
            candidate = os.path.join(path, name)
            if tf.io.gfile.exists(candidate):
                return read_label_names(candidate)
        return None
    with tf.io.gfile.GFile(path) as f:
        text = f.read()
    if path.endswith(".json"):
        data = json.loads(text)
        classes = data["classes"] if isinstance(data, dict) else data
        if classes and isinstance(classes[0], dict):
            classes = sorted(classes, key=lambda c: c.get("index", 0))
            return [str(c.get("name") or c.get("synset") or c["index"]) for c in classes]
        return [str(c) for c in classes]
    return [line.strip() for line in text.splitlines() if line.strip()]
