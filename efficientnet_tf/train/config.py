"""Typed training configs: YAML recipes -> frozen dataclasses, command-line overrides, config.yaml.

    config = load_config("efficientnet-b0")               # efficientnet_tf/configs/<name>.yaml
    config = load_config("my_recipe.yaml")                 # or any YAML file
    config = apply_overrides(config, ["optimizer.lr=0.032", "data.image_size=64"])
    save_config(config, model_dir)                         # model_dir/config.yaml, atomically

A YAML file has top-level TrainConfig keys plus the sections `model:`, `data:` and `optimizer:`.
Missing keys take the dataclass defaults below (the TPU reference's ImageNet recipe); unknown keys
are an error that names the key, the file and the nearest valid keys.

The recipes ship inside the package (efficientnet_tf/configs/, also reachable as the top-level
configs/ of a source checkout), so `pip install .` finds them too.

This module imports only the standard library and PyYAML at import time; the data pipeline
(TensorFlow) is imported by DataSection.to_data_config() only.
"""
from __future__ import annotations

import dataclasses
import difflib
import os
import tempfile
import typing
from typing import Any, Sequence

import yaml

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
OPTIMIZERS = ("rmsprop_tf1", "rmsprop", "sgd", "adam")
SCHEDULES = ("exponential", "cosine", "constant")
RESUME_DATA = ("reseed", "skip", "restart")


def _fail(msg: str) -> typing.NoReturn:
    raise ValueError(msg)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which EfficientNet to build.

    Give one of: `model_name` alone (a published variant, efficientnet-b0 .. b7, whose width and
    depth come from the registry); `width_coefficient` + `depth_coefficient` (custom; model_name is
    then just the model's name); or `phi` (compound scaling, d = 1.2^phi, w = 1.1^phi; negative
    phi scales B0 down). The input resolution is `data.image_size`.
    """

    model_name: str = "efficientnet-b0"
    width_coefficient: float | None = None
    depth_coefficient: float | None = None
    phi: float | None = None
    dropout_rate: float = 0.2  # before the classifier
    drop_connect_rate: float = 0.2  # stochastic depth at the LAST block (survival 0.8); linear in depth
    stem_strides: int = 2  # 1 keeps full resolution in the stem (tiny inputs such as 32 px)
    num_classes: int = 1000
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    synchronized_bn: bool = False  # BN batch statistics across all replicas
    # BN statistics over groups of this many consecutive replicas (1 = per replica). None: the
    # reference's rule, per replica on up to 8 replicas, else groups of max(8, replicas // 8).
    bn_group_size: int | None = None

    def __post_init__(self):
        custom = self.width_coefficient is not None or self.depth_coefficient is not None
        if self.phi is not None and custom:
            _fail("model: give either phi or width_coefficient/depth_coefficient, not both.")
        if custom and (self.width_coefficient is None or self.depth_coefficient is None):
            _fail("model: width_coefficient and depth_coefficient go together; give both.")
        if custom and (self.width_coefficient <= 0 or self.depth_coefficient <= 0):
            _fail("model: width_coefficient and depth_coefficient must be > 0.")
        if self.phi is None and not custom:
            from efficientnet_tf.spec import get_variant  # raises a ValueError listing valid names

            get_variant(self.model_name)
        if not 0.0 <= self.dropout_rate < 1.0 or not 0.0 <= self.drop_connect_rate < 1.0:
            _fail("model: dropout_rate and drop_connect_rate must be in [0, 1).")
        if self.stem_strides not in (1, 2):
            _fail(f"model.stem_strides must be 1 or 2, got {self.stem_strides}.")
        if self.num_classes < 1:
            _fail(f"model.num_classes must be >= 1, got {self.num_classes}.")
        if self.bn_group_size is not None and self.bn_group_size < 1:
            _fail(f"model.bn_group_size must be >= 1 (1 = per replica), got {self.bn_group_size}.")
        if self.synchronized_bn and self.bn_group_size not in (None, 1):
            _fail("model: synchronized_bn=true pools BN over all replicas; it cannot be combined "
                  "with bn_group_size. Set one of them.")

    def resolved_bn_group_size(self, num_replicas: int) -> int:
        """Replicas per BN-statistics group for this many replicas (num_replicas = all).

        The reference's rule (bn_group_size None) takes the largest divisor of num_replicas
        that is <= max(8, n // 8) when that value does not divide n (TPU slices always divide).
        """
        if self.synchronized_bn:
            return num_replicas
        if num_replicas == 1:
            return 1  # one device (export, single-device eval): groups do not apply
        if self.bn_group_size is None:
            if num_replicas <= 8:
                return 1
            k = max(8, num_replicas // 8)
            while num_replicas % k:
                k -= 1
            return k
        if num_replicas % self.bn_group_size:
            _fail(f"model.bn_group_size={self.bn_group_size} does not divide the {num_replicas} "
                  f"replicas; use a divisor of {num_replicas} (1 = per replica).")
        return self.bn_group_size


@dataclasses.dataclass(frozen=True)
class DataSection:
    """The `data:` section. Same field names as efficientnet_tf.data.pipeline.DataConfig.

    Kept separate so that reading a config never imports TensorFlow; to_data_config() converts.
    label_offset is subtracted from stored labels: 1 for ImageNet-style 1-based TFRecords (our
    converter writes those, Fashion-MNIST included), 0 for 0-based files.
    """

    data_dir: str = ""
    image_size: int = 224
    num_classes: int = 1000
    label_offset: int = 1
    train_file_pattern: str = "train-*"
    eval_file_pattern: str = "validation-*"
    shuffle_buffer: int = 1024
    cache: bool = False
    deterministic: bool = False
    seed: int | None = None
    image_dtype: str = "float32"  # uint8 | float32 | bfloat16
    augment_name: str | None = None  # None | autoaugment | randaugment
    randaug_num_layers: int = 2
    randaug_magnitude: float = 10.0
    crop_padding: int = 32  # eval center crop; 32 is what the published checkpoints used
    resize_method: str = "bicubic_tf1"  # bicubic_tf1 | bicubic | bilinear
    min_crop_area: float = 0.08  # smallest train crop, fraction of the image (reference: 0.08)
    random_flip: bool = True  # left-right flips in training; false when orientation matters
    num_parallel_calls: int = -1  # -1 = tf.data.AUTOTUNE
    cycle_length: int = 16
    eval_drop_remainder: bool = False
    synthetic: bool = False
    synthetic_examples: int = 1024
    tfds_train_split: str = "train"
    tfds_eval_split: str = "validation"
    tfds_image_key: str = "image"
    tfds_label_key: str = "label"

    def __post_init__(self):
        if self.image_size < 1 or self.num_classes < 1:
            _fail("data.image_size and data.num_classes must be >= 1.")
        if self.augment_name not in (None, "autoaugment", "randaugment"):
            _fail(f"data.augment_name must be autoaugment, randaugment or none, "
                  f"got {self.augment_name!r}.")

    def to_data_config(self):
        """The pipeline's DataConfig (imports efficientnet_tf.data.pipeline, i.e. TensorFlow)."""
        from efficientnet_tf.data import pipeline

        known = {f.name for f in dataclasses.fields(pipeline.DataConfig)}
        kwargs = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name in known:
                kwargs[f.name] = value
            elif value != f.default:
                _fail(f"data.{f.name}={value!r} is not supported by this version of "
                      "efficientnet_tf.data.pipeline.DataConfig; remove it from the config.")
        return pipeline.DataConfig(**kwargs)


@dataclasses.dataclass(frozen=True)
class OptimizerConfig:
    """Optimizer, learning-rate schedule and regularization (defaults: the TPU reference recipe).

    lr is per 256 images: the peak rate is lr * train_batch_size / 256 (0.256 at batch 4096).
    name: rmsprop_tf1 (TF1 semantics: accumulator starts at ones, epsilon inside the sqrt),
    rmsprop (Keras), sgd (momentum, optional nesterov), adam (beta_1 0.9, beta_2 0.999, epsilon).
    schedule: exponential (linear warmup, then x decay_rate every decay_epochs, staircase),
    cosine (linear warmup, then cosine to 0 at the last step) or constant (warmup, then flat).
    """

    name: str = "rmsprop_tf1"
    lr: float = 0.016
    rho: float = 0.9
    momentum: float = 0.9
    epsilon: float = 1e-3
    nesterov: bool = False
    schedule: str = "exponential"
    warmup_epochs: float = 5.0
    decay_epochs: float = 2.4
    decay_rate: float = 0.97
    weight_decay: float = 1e-5  # L2: loss += weight_decay * sum(l2_loss(v)), BN excluded
    label_smoothing: float = 0.1
    ema_decay: float = 0.9999  # 0 disables the EMA

    def __post_init__(self):
        if self.name not in OPTIMIZERS:
            _fail(f"optimizer.name must be one of {', '.join(OPTIMIZERS)}, got {self.name!r}.")
        if self.schedule not in SCHEDULES:
            _fail(f"optimizer.schedule must be one of {', '.join(SCHEDULES)}, "
                  f"got {self.schedule!r}.")
        if self.lr <= 0:
            _fail(f"optimizer.lr must be > 0, got {self.lr}.")
        if self.warmup_epochs < 0 or self.decay_epochs <= 0 or not 0 < self.decay_rate <= 1:
            _fail("optimizer: need warmup_epochs >= 0, decay_epochs > 0, 0 < decay_rate <= 1.")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.ema_decay < 1:
            _fail("optimizer: label_smoothing and ema_decay must be in [0, 1).")
        if self.weight_decay < 0:
            _fail(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}.")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run. train_steps, when set, wins over epochs."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataSection = dataclasses.field(default_factory=DataSection)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    train_batch_size: int = 4096  # global
    eval_batch_size: int = 1024  # global
    epochs: float = 350.0
    train_steps: int | None = None
    steps_per_execution: int = 1251  # the reference's iterations_per_loop
    checkpoint_every_steps: int | None = None  # None: once per epoch
    keep_checkpoints: int = 5
    use_bfloat16: bool = False  # bfloat16 activations; float32 variables, logits and loss
    seed: int | None = None  # model initialization (keras.utils.set_random_seed); data.seed: input
    resume_data: str = "reseed"  # after a restart: reseed the input stream | skip (replay) | restart

    def __post_init__(self):
        if self.train_batch_size < 1 or self.eval_batch_size < 1:
            _fail("train_batch_size and eval_batch_size must be >= 1.")
        if self.train_steps is None and self.epochs <= 0:
            _fail("Give epochs > 0 or train_steps.")
        if self.train_steps is not None and self.train_steps < 1:
            _fail(f"train_steps must be >= 1, got {self.train_steps}.")
        if self.steps_per_execution < 1 or self.keep_checkpoints < 1:
            _fail("steps_per_execution and keep_checkpoints must be >= 1.")
        if self.resume_data not in RESUME_DATA:
            _fail(f"resume_data must be one of {', '.join(RESUME_DATA)}, got {self.resume_data!r}.")
        if self.model.num_classes != self.data.num_classes:
            _fail(f"model.num_classes ({self.model.num_classes}) and data.num_classes "
                  f"({self.data.num_classes}) differ; set both (an override of model.num_classes "
                  "alone sets both).")


_SECTIONS = {"model": ModelConfig, "data": DataSection, "optimizer": OptimizerConfig}


# ----------------------------------------------------------------------------- conversion
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}
_NONE = {"none", "null", "~", ""}


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Converts a YAML or command-line value to the field's type, or raises a clear ValueError."""
    args = typing.get_args(hint)
    optional = type(None) in args
    base = next((a for a in args if a is not type(None)), hint) if args else hint
    if value is None or (isinstance(value, str) and value.strip().lower() in _NONE
                         and (optional or base is not str)):
        if optional:
            return None
        _fail(f"{key} cannot be empty/None; give a {base.__name__}.")
    try:
        if base is bool:
            if isinstance(value, bool):
                return value
            text = str(value).strip().lower()
            if text in _TRUE or text in _FALSE:
                return text in _TRUE
            raise ValueError
        if base is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str):
                value = float(value) if any(c in value for c in ".eE") else int(value, 0)
            if isinstance(value, float):
                if not value.is_integer():
                    raise ValueError
                value = int(value)
            return int(value)
        if base is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if base is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            return str(value)
    except (TypeError, ValueError):
        _fail(f"{key}: cannot convert {value!r} to {base.__name__}.")
    raise TypeError(f"{key}: unsupported field type {hint!r}")  # a bug in this module


def _near(name: str, options) -> str:
    options = list(options)
    same_field = [o for o in options if o.rsplit(".", 1)[-1] == name and o != name]
    close = same_field + [c for c in difflib.get_close_matches(name, options, n=3, cutoff=0.5)
                          if c not in same_field]
    return f" Did you mean {', '.join(close)}?" if close else f" Valid keys: {', '.join(options)}."


def _build(cls, values: dict, where: str, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs = {}
    for key, value in values.items():
        full = f"{prefix}{key}"
        if key not in hints:
            _fail(f"Unknown config key '{full}' in {where}.{_near(str(key), names)}")
        if key in _SECTIONS and not prefix:
            if not isinstance(value, dict):
                _fail(f"'{key}' in {where} must be a mapping of {key}.<field>: value.")
            kwargs[key] = _build(_SECTIONS[key], value, where, prefix=f"{key}.")
        else:
            kwargs[key] = _coerce(value, hints[key], full)
    try:
        return cls(**kwargs)
    except ValueError as e:
        raise ValueError(f"{e} (in {where})") from None


def config_from_dict(values: dict, where: str = "<dict>") -> TrainConfig:
    """A TrainConfig from a nested dict (as read from YAML); `where` names the source in errors."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        _fail(f"{where} must hold a YAML mapping, got {type(values).__name__}.")
    return _build(TrainConfig, values, where)


def config_to_dict(config: TrainConfig) -> dict:
    """Nested plain dict (sections first in field order); round-trips through config_from_dict."""
    return dataclasses.asdict(config)


# ----------------------------------------------------------------------------- files
def available_configs() -> list[str]:
    """Names of the shipped recipes (efficientnet_tf/configs/*.yaml)."""
    if not os.path.isdir(CONFIG_DIR):
        return []
    return sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml"))


def _resolve_path(path_or_name: str) -> str:
    text = str(path_or_name)
    if os.path.isfile(text):
        return text
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        _fail(f"Config file {text!r} does not exist.")
    name = text.lower()
    if name.startswith("b") and name[1:].isdigit():  # "b3" -> "efficientnet-b3"
        name = "efficientnet-" + name
    name = name.replace("efficientnetb", "efficientnet-b").replace("efficientnet_b", "efficientnet-b")
    path = os.path.join(CONFIG_DIR, name + ".yaml")
    if os.path.isfile(path):
        return path
    names = available_configs()
    close = difflib.get_close_matches(text, names, n=3, cutoff=0.4)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    _fail(f"Unknown config {text!r}: not a file and not a shipped recipe.{hint} "
          f"Shipped recipes: {', '.join(names) or '(none found in ' + CONFIG_DIR + ')'}.")


def load_config(path_or_name: str) -> TrainConfig:
    """Reads a YAML recipe: a file path, or a shipped name such as 'efficientnet-b0', 'b0',
    'fashion_mnist'."""
    path = _resolve_path(path_or_name)
    with open(path) as f:
        try:
            values = yaml.safe_load(f)
        except yaml.YAMLError as e:
            raise ValueError(f"{path} is not valid YAML: {e}") from None
    return config_from_dict(values, where=path)


def apply_overrides(config: TrainConfig, overrides: Sequence[str]) -> TrainConfig:
    """Returns a copy of config with 'section.field=value' / 'field=value' overrides applied.

    Values are parsed as YAML scalars and converted to the field's type ('none' clears an
    optional field). Overriding model.num_classes alone also sets data.num_classes.
    """
    values = config_to_dict(config)
    set_keys = set()
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            _fail(f"Override {item!r} must look like key=value, e.g. optimizer.lr=0.1.")
        parts = key.split(".")
        if len(parts) > 2:
            _fail(f"Override key {key!r} has too many dots; use section.field or field.")
        target = values
        if len(parts) == 2:
            if parts[0] not in _SECTIONS:
                _fail(f"Unknown config section {parts[0]!r} in override {item!r}."
                      f"{_near(parts[0], _SECTIONS)}")
            target = values[parts[0]]
        field = parts[-1]
        if field not in target or (len(parts) == 1 and field in _SECTIONS):
            options = (list(target) if len(parts) == 2 else
                       [k for k in values if k not in _SECTIONS] +
                       [f"{s}.{k}" for s in _SECTIONS for k in values[s]])
            if len(parts) == 1 and field in _SECTIONS:
                _fail(f"Override {item!r}: set single fields, e.g. {field}.<field>=value.")
            _fail(f"Unknown config key {key!r} in override {item!r}."
                  f"{_near(key if len(parts) == 1 else field, options)}")
        try:
            parsed = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError:
            parsed = raw
        target[field] = parsed if not isinstance(parsed, (dict, list)) else raw
        set_keys.add(key)
    if "model.num_classes" in set_keys and "data.num_classes" not in set_keys:
        values["data"]["num_classes"] = values["model"]["num_classes"]
    return config_from_dict(values, where="overrides " + " ".join(map(str, overrides)))


def dump_config(config: TrainConfig) -> str:
    """The YAML text of config (what save_config writes)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)


def save_config(config: TrainConfig, model_dir: str, filename: str = "config.yaml") -> str:
    """Writes model_dir/config.yaml atomically (temp file + rename); returns its path.

    Works for local directories and, through tf.io.gfile, for gs:// and other remote paths.
    """
    text = dump_config(config)
    path = os.path.join(model_dir, filename) if "://" not in model_dir else (
        model_dir.rstrip("/") + "/" + filename)
    if "://" in model_dir:
        import tensorflow as tf

        tf.io.gfile.makedirs(model_dir)
        tmp = f"{path}.tmp-{os.getpid()}"
        with tf.io.gfile.GFile(tmp, "w") as f:
            f.write(text)
        tf.io.gfile.rename(tmp, path, overwrite=True)
        return path
    os.makedirs(model_dir, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{filename}.", suffix=".tmp", dir=model_dir)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path
