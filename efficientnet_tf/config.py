"""Typed configs: YAML recipes -> frozen dataclasses, command-line overrides, config.yaml.

    config = load_config("efficientnet-b0")               # the ImageNet recipe for variant b0
    config = load_config("my_recipe.yaml")                 # or any YAML file
    config = apply_overrides(config, ["optimizer.lr=0.032", "data.image_size=64"])
    save_config(config, model_dir)                         # model_dir/config.yaml, atomically

A YAML file has top-level TrainConfig keys plus the sections `model:`, `data:` and `optimizer:`.
Missing keys take the dataclass defaults below (the TPU reference's ImageNet recipe); unknown keys
are an error that names the key, the file and the nearest valid keys.

Values derived from another value unless a recipe sets them:
  data.image_size, model.dropout_rate  <- the variant (registry in spec.py; phi: compound scaling)
  data.seed                            <- seed (one seed seeds the model and the data)
They are filled in when the config is made, so config.yaml records what ran. apply_overrides
moves the derived values that still held their source's value when the source (model.model_name,
seed, ...) is overridden; dataclasses.replace does not (it keeps what was filled in). A seeded run
always seeds its data: data.seed=none refills from seed.

Recipes ship inside the package (efficientnet_tf/configs/, also reachable as the top-level
configs/ of a source checkout). `efficientnet-<variant>` names the ImageNet recipe
(configs/imagenet.yaml) for any registered variant.

This module imports the standard library and PyYAML only (no TensorFlow), also through the
package: `import efficientnet_tf.config` does not import TensorFlow.
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import os
import typing
from typing import Any, Sequence

import yaml

from efficientnet_tf import constants, fileio, modelspec, spec

CONFIG_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")
IMAGENET_RECIPE = "imagenet"  # configs/imagenet.yaml: the recipe behind efficientnet-<variant>
OPTIMIZERS = ("rmsprop_tf1", "rmsprop", "sgd", "adam")
SCHEDULES = ("exponential", "cosine", "constant")
RESUME_DATA = ("reseed", "skip", "restart")
PRECISIONS = ("float32", "bfloat16", "float16")
RECOMPUTE = ("none", "blocks")


def _fail(msg: str) -> typing.NoReturn:
    raise ValueError(msg)


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Which EfficientNet to build.

    Give one of: `model_name` alone (a registered variant, e.g. efficientnet-b0, whose width and
    depth come from the registry); `width_coefficient` + `depth_coefficient` (custom; model_name is
    then the model's name and, when it names a registered variant, gives that variant's blocks,
    activation and stem/head rule: a custom-width Lite stays Lite); or `phi` (compound scaling,
    d = 1.2^phi, w = 1.1^phi; negative phi scales B0 down). The input resolution is
    `data.image_size`, the classes `data.num_classes`. dropout_rate None: the variant's.
    """

    model_name: str = "efficientnet-b0"
    width_coefficient: float | None = None
    depth_coefficient: float | None = None
    phi: float | None = None
    dropout_rate: float | None = None  # before the classifier; None: the variant's
    drop_connect_rate: float = 0.2  # stochastic depth at the LAST block (survival 0.8); linear in depth
    stem_strides: int = 2  # 1 keeps full resolution in the stem (tiny inputs such as 32 px)
    bn_momentum: float = 0.99
    bn_epsilon: float = 1e-3
    synchronized_bn: bool = False  # BN batch statistics across all replicas
    # BN statistics over groups of this many consecutive replicas (1 = per replica). None: the
    # reference's rule, per replica on up to 8 replicas, else groups of max(8, replicas // 8).
    bn_group_size: int | None = None
    # Input normalization inside the model (constants.NORMALIZATIONS): "imagenet", "advprop"
    # (x / 127.5 - 1), "lite" ((x - 127) / 128), null (inputs come normalized), or "auto": the
    # variant's ("lite" for EfficientNet-Lite, else "imagenet").
    normalization: str | None = "auto"
    # Gradient checkpointing: "blocks" keeps only each MBConv block's input for the backward
    # pass and recomputes the rest (less activation memory, about one more forward pass).
    recompute: str = "none"

    def __post_init__(self):
        custom = self.width_coefficient is not None or self.depth_coefficient is not None
        if self.phi is not None and custom:
            _fail("model: give either phi or width_coefficient/depth_coefficient, not both.")
        if custom and (self.width_coefficient is None or self.depth_coefficient is None):
            _fail("model: width_coefficient and depth_coefficient go together; give both.")
        if custom and (self.width_coefficient <= 0 or self.depth_coefficient <= 0):
            _fail("model: width_coefficient and depth_coefficient must be > 0.")
        if self.phi is None and not custom:
            spec.get_variant(self.model_name)  # raises a ValueError listing valid names
        if self.dropout_rate is not None and not 0.0 <= self.dropout_rate < 1.0:
            _fail("model: dropout_rate must be in [0, 1).")
        if not 0.0 <= self.drop_connect_rate < 1.0:
            _fail("model: drop_connect_rate must be in [0, 1).")
        if self.stem_strides not in (1, 2):
            _fail(f"model.stem_strides must be 1 or 2, got {self.stem_strides}.")
        if self.bn_group_size is not None and self.bn_group_size < 1:
            _fail(f"model.bn_group_size must be >= 1 (1 = per replica), got {self.bn_group_size}.")
        if self.normalization not in (None, "auto", *constants.NORMALIZATIONS):
            _fail(f"model.normalization must be auto, "
                  f"{', '.join(constants.NORMALIZATIONS)} or null, got {self.normalization!r}.")
        if self.recompute not in RECOMPUTE:
            switch = str(self.recompute).lower() in ("true", "false", "yes", "no", "on", "off")
            _fail(f"model.recompute must be {' or '.join(RECOMPUTE)}, got {self.recompute!r}"
                  + (": it is a mode, not a switch (blocks = gradient checkpointing per block, "
                     "none = off)." if switch else "."))
        if self.synchronized_bn and self.bn_group_size not in (None, 1):
            _fail("model: synchronized_bn=true pools BN over all replicas; it cannot be combined "
                  "with bn_group_size. Set one of them.")

    def to_spec(self, image_size: int | None = None, weight_set=None):
        """The resolved network (modelspec.ModelSpec) at image_size (None: the model's default
        resolution). model_name gives the architecture (blocks, activation, stem/head rule) when
        it names a registered variant, also with custom width and depth: a half-width
        efficientnet-lite0 stays a Lite network; phi scales B0. weight_set: a published set the
        model will be loaded with (its normalization for "auto")."""
        named = self.phi is None and spec.variant_key(self.model_name or "") in spec.VARIANTS
        return modelspec.resolve(
            spec.variant_key(self.model_name) if named else None,
            width_coefficient=self.width_coefficient, depth_coefficient=self.depth_coefficient,
            phi=self.phi, resolution=image_size, dropout_rate=self.dropout_rate,
            drop_connect_rate=self.drop_connect_rate, stem_strides=self.stem_strides,
            normalization=self.normalization, weight_set=weight_set,
            bn_momentum=self.bn_momentum, bn_epsilon=self.bn_epsilon,
            name=self.model_name.replace("-", "") if self.model_name else None)

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
class DataConfig:
    """The `data:` section, and what efficientnet_tf.data.pipeline reads (one type for both).

    label_offset is subtracted from stored labels: 1 for ImageNet-style 1-based TFRecords (our
    converter writes those, Fashion-MNIST included), 0 for 0-based files; not used for tfds.
    image_size None: the model's resolution (filled in by TrainConfig; the pipeline needs it).
    """

    data_dir: str = ""
    image_size: int | None = None
    num_classes: int = 1000
    label_offset: int = 1
    train_file_pattern: str = "train-*"
    eval_file_pattern: str = "validation-*"
    shuffle_buffer: int = 1024
    cache: bool = False  # cache the serialized records in memory (small data sets)
    deterministic: bool = False  # fixed element order; with `seed`, also reproducible crops/flips
    seed: int | None = None  # None in a TrainConfig: the top-level seed
    image_dtype: str | None = None  # uint8 | float32 | bfloat16; None: follows precision
    augment_name: str | None = None  # None | autoaugment | randaugment
    randaug_num_layers: int = 2
    randaug_magnitude: float = 10.0
    crop_padding: int = constants.DEFAULT_CROP_PADDING  # eval center crop
    resize_method: str = "bicubic_tf1"  # bicubic_tf1 | bicubic | bilinear
    min_crop_area: float = 0.08  # smallest train crop, fraction of the image (reference: 0.08)
    random_flip: bool = True  # left-right flips in training; false when orientation matters
    num_parallel_calls: int = -1  # -1 = tf.data.AUTOTUNE
    cycle_length: int = 16  # files read in parallel
    eval_drop_remainder: bool = False
    synthetic: bool = False  # random pixels and labels, no files read
    synthetic_examples: int = 1024  # examples per epoch of the synthetic data
    tfds_train_split: str = "train"
    tfds_eval_split: str = "validation"
    tfds_image_key: str = "image"
    tfds_label_key: str = "label"
    max_bad_fraction: float = 0.001  # undecodable training images skipped; stop above this fraction

    def __post_init__(self):
        if not 0.0 <= self.max_bad_fraction <= 1.0:
            _fail(f"data.max_bad_fraction must be in [0, 1], got {self.max_bad_fraction}.")
        if (self.image_size is not None and self.image_size < 1) or self.num_classes < 1:
            _fail("data.image_size and data.num_classes must be >= 1.")
        if self.augment_name not in (None, *constants.AUGMENT_NAMES):
            _fail(f"data.augment_name must be {', '.join(constants.AUGMENT_NAMES)} or none, "
                  f"got {self.augment_name!r}.")
        if self.image_dtype is not None and self.image_dtype not in constants.IMAGE_DTYPES:
            _fail(f"data.image_dtype must be one of {', '.join(constants.IMAGE_DTYPES)}, "
                  f"got {self.image_dtype!r}.")
        if self.resize_method not in constants.RESIZE_METHODS:
            _fail(f"data.resize_method must be one of {', '.join(constants.RESIZE_METHODS)}, "
                  f"got {self.resize_method!r}.")
        if not 0 < self.min_crop_area <= 1:
            _fail(f"data.min_crop_area is a fraction of the image in (0, 1], got "
                  f"{self.min_crop_area} (the reference uses 0.08).")


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
        numbers = {k: getattr(self, k) for k in ("lr", "rho", "momentum", "epsilon",
                   "warmup_epochs", "decay_epochs", "decay_rate", "weight_decay",
                   "label_smoothing", "ema_decay")}
        bad = [f"optimizer.{k}={v}" for k, v in numbers.items() if not math.isfinite(v)]
        if bad:
            _fail(f"{', '.join(bad)}: give a finite number.")
        if self.lr <= 0:
            _fail(f"optimizer.lr must be > 0, got {self.lr}.")
        if self.warmup_epochs < 0 or self.decay_epochs <= 0 or not 0 < self.decay_rate <= 1:
            _fail("optimizer: need warmup_epochs >= 0, decay_epochs > 0, 0 < decay_rate <= 1.")
        if not 0 <= self.label_smoothing < 1 or not 0 <= self.ema_decay < 1:
            _fail("optimizer: label_smoothing and ema_decay must be in [0, 1).")
        if self.weight_decay < 0:
            _fail(f"optimizer.weight_decay must be >= 0, got {self.weight_decay}.")


FREEZE_SPEC = r"none|backbone|block[1-9]\d*"


@dataclasses.dataclass(frozen=True)
class FinetuneConfig:
    """Starting from pretrained weights (the `finetune:` section; all off by default).

    init_weights: anything weights= takes ("imagenet", a published set, a keras file, a TF1
    checkpoint) or one of our training model_dirs; loaded once at step 0 (a restart resumes from
    the run's own checkpoint). freeze: none | backbone | blockN (stem and stages 1..N).
    Two phases: with unfreeze_at_epoch, `freeze` holds until that epoch, then `unfreeze_to`,
    with the learning rate times unfreeze_lr_scale. layer_decay d: stage k from the top learns
    at lr * d^k (timm's --layer-decay, by stage). Image-folder data_dir: validation_dir, or
    validation_fraction of each class held out.
    """

    init_weights: str | None = None
    init_use_ema: bool = True
    new_head: bool = False  # a fresh classifier even when the class counts match
    freeze: str = "none"
    freeze_bn: bool = False  # also keep the trainable layers' BN in inference mode
    unfreeze_at_epoch: float | None = None
    unfreeze_to: str = "none"
    unfreeze_lr_scale: float = 1.0
    layer_decay: float | None = None
    validation_dir: str | None = None
    validation_fraction: float = 0.1

    def __post_init__(self):
        import re

        for key in ("freeze", "unfreeze_to"):
            if not re.fullmatch(FREEZE_SPEC, str(getattr(self, key)).lower()):
                _fail(f"finetune.{key} must be none, backbone or blockN (stem and stages 1..N "
                      f"frozen, e.g. block5), got {getattr(self, key)!r}.")
        if self.unfreeze_at_epoch is not None and self.unfreeze_at_epoch <= 0:
            _fail("finetune.unfreeze_at_epoch must be > 0 (or null for one phase).")
        if self.unfreeze_lr_scale <= 0:
            _fail("finetune.unfreeze_lr_scale must be > 0.")
        if self.layer_decay is not None and not 0 < self.layer_decay <= 1:
            _fail(f"finetune.layer_decay must be in (0, 1], got {self.layer_decay}.")
        if not 0 <= self.validation_fraction < 1:
            _fail("finetune.validation_fraction must be in [0, 1).")

    @property
    def enabled(self) -> bool:
        return bool(self.init_weights or self.freeze != "none" or self.layer_decay
                    or self.unfreeze_at_epoch or self.freeze_bn)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """A whole training run. train_steps, when set, wins over epochs."""

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    optimizer: OptimizerConfig = dataclasses.field(default_factory=OptimizerConfig)
    finetune: FinetuneConfig = dataclasses.field(default_factory=FinetuneConfig)
    train_batch_size: int = 4096  # global
    eval_batch_size: int = 1024  # global
    epochs: float = 350.0
    train_steps: int | None = None
    steps_per_execution: int = 1251  # the reference's iterations_per_loop
    checkpoint_every_steps: int | None = None  # None: once per epoch
    keep_checkpoints: int = 5
    # Activations in float32, bfloat16 (TPU, A100/H100) or float16 (with dynamic loss scaling:
    # V100, T4); variables, logits and loss stay float32. `use_bfloat16` is read as precision.
    precision: str = "float32"
    loss_scale_initial: float = 2.0 ** 15  # float16: the first loss scale (halves on overflow)
    accumulate_steps: int = 1  # micro-batches of train_batch_size / k per optimizer step
    seed: int | None = None  # seeds the model's initialization and, unless data.seed, the data
    resume_data: str = "reseed"  # after a restart: reseed the input stream | skip (replay) | restart
    on_nonfinite: str = "stop"  # NaN/Inf loss: stop | restore (the last good checkpoint, go on)
    max_nonfinite_restores: int = 3  # on_nonfinite=restore: then stop

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
        if self.on_nonfinite not in ("stop", "restore") or self.max_nonfinite_restores < 0:
            _fail(f"on_nonfinite must be stop or restore (max_nonfinite_restores >= 0), got "
                  f"{self.on_nonfinite!r} / {self.max_nonfinite_restores}.")
        if self.precision not in PRECISIONS:
            _fail(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}.")
        if not self.loss_scale_initial > 0:
            _fail(f"loss_scale_initial must be > 0, got {self.loss_scale_initial}.")
        k, batch = self.accumulate_steps, self.train_batch_size
        if k < 1:
            _fail(f"accumulate_steps must be >= 1 (1: no accumulation), got {k}.")
        if batch % k:
            divisors = [d for d in range(1, batch + 1) if batch % d == 0]
            near = [max(d for d in divisors if d < k)] + [d for d in divisors if d > k][:1]
            _fail(f"accumulate_steps={k} must divide train_batch_size={batch} (each optimizer "
                  f"step sums k micro-batches of train_batch_size / k images): "
                  f"{' or '.join(map(str, near))} would, or change train_batch_size.")
        derived = _derived_values(self.model, self.seed, self.precision)
        data = {k: v for k, v in derived.items()
                if k.startswith("data.") and getattr(self.data, k[5:]) is None}
        if data:
            object.__setattr__(self, "data", dataclasses.replace(
                self.data, **{k[5:]: v for k, v in data.items()}))
        if self.model.dropout_rate is None:
            object.__setattr__(self, "model", dataclasses.replace(
                self.model, dropout_rate=derived["model.dropout_rate"]))

    @property
    def use_bfloat16(self) -> bool:
        """The older setting: precision == "bfloat16"."""
        return self.precision == "bfloat16"

    @property
    def dtype_policy(self) -> str | None:
        """The Keras mixed-precision policy the model is built under (None: float32)."""
        return {"bfloat16": "mixed_bfloat16", "float16": "mixed_float16"}.get(self.precision)


def check_for_training(config: TrainConfig) -> None:
    """The checks a training job makes before it starts (reading a finished run's config.yaml,
    e.g. to export it, does not need them)."""
    if config.data.deterministic and config.data.seed is None:
        _fail("data.deterministic=true is not reproducible without a seed: set seed (it seeds "
              "the model and the data) or data.seed.")


def _derived_values(model: ModelConfig, seed: int | None, precision: str) -> dict:
    """The values a TrainConfig derives when the recipe leaves them out, by dotted key. The
    input images are bfloat16 when the model computes in bfloat16 (as the TPU reference ties
    them), float32 otherwise."""
    implied = dataclasses.replace(model, dropout_rate=None).to_spec()
    resolution, dropout = implied.resolution, implied.dropout_rate
    return {"data.image_size": resolution, "model.dropout_rate": dropout, "data.seed": seed,
            "data.image_dtype": "bfloat16" if precision == "bfloat16" else "float32"}


# Which keys each derived value follows (see apply_overrides).
_DERIVED_FROM = {
    "data.image_size": ("model.model_name", "model.phi", "model.width_coefficient",
                        "model.depth_coefficient"),
    "model.dropout_rate": ("model.model_name", "model.phi", "model.width_coefficient",
                           "model.depth_coefficient"),
    "data.seed": ("seed",),
    "data.image_dtype": ("precision",),
}
# Keys of older config files, read as the key that holds the value now.
_ALIASES = {"model.num_classes": "data.num_classes"}

_SECTIONS = {"model": ModelConfig, "data": DataConfig, "optimizer": OptimizerConfig,
             "finetune": FinetuneConfig}


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


def _migrate(values: dict, where: str) -> dict:
    """Moves keys of older config files (_ALIASES) to where the value lives now."""
    values = {k: (dict(v) if isinstance(v, dict) else v) for k, v in values.items()}
    for old, new in _ALIASES.items():
        (old_s, old_f), (new_s, new_f) = old.split("."), new.split(".")
        section = values.get(old_s)
        if not isinstance(section, dict) or old_f not in section:
            continue
        value = section.pop(old_f)
        target = values.setdefault(new_s, {})
        if isinstance(target, dict):
            if new_f in target and _coerce(target[new_f], int, new) != _coerce(value, int, old):
                _fail(f"{old} ({value}) and {new} ({target[new_f]}) differ in {where}; "
                      f"{new} alone holds the value now.")
            target.setdefault(new_f, value)
    if "use_bfloat16" in values:  # the older precision switch
        value = values.pop("use_bfloat16")
        precision = _precision_of_use_bfloat16(value, where)
        if "precision" in values and not _bfloat16_switch_agrees(precision, values["precision"]):
            _fail(f"use_bfloat16 ({value}) and precision ({values['precision']}) differ in "
                  f"{where}; give precision alone (float32, bfloat16 or float16).")
        values.setdefault("precision", precision)
    return values


def _precision_of_use_bfloat16(value, where: str) -> str:
    return "bfloat16" if _coerce(value, bool, f"use_bfloat16 in {where}") else "float32"


def _bfloat16_switch_agrees(switch: str, precision: str) -> bool:
    """Whether use_bfloat16 (read as a precision: _precision_of_use_bfloat16) agrees with
    precision: true = bfloat16 alone, false = not bfloat16 (float32, or float16: an older
    script's --nouse_bfloat16 beside --precision=float16)."""
    return precision == switch or (switch == "float32" and precision == "float16")


def config_from_dict(values: dict, where: str = "<dict>") -> TrainConfig:
    """A TrainConfig from a nested dict (as read from YAML); `where` names the source in errors."""
    if values is None:
        values = {}
    if not isinstance(values, dict):
        _fail(f"{where} must hold a YAML mapping, got {type(values).__name__}.")
    return _build(TrainConfig, _migrate(values, where), where)


def config_to_dict(config: TrainConfig) -> dict:
    """Nested plain dict (sections first in field order); round-trips through config_from_dict."""
    return dataclasses.asdict(config)


# ----------------------------------------------------------------------------- files
def available_configs() -> list[str]:
    """Shipped recipes (efficientnet_tf/configs/*.yaml) and efficientnet-<variant> for every
    registered variant (the ImageNet recipe at that variant)."""
    files = sorted(f[:-5] for f in os.listdir(CONFIG_DIR) if f.endswith(".yaml")) if (
        os.path.isdir(CONFIG_DIR)) else []
    return sorted(set(files) | {v.full_name for v in spec.VARIANTS.values()})


def _variant_of(name: str) -> str | None:
    """The variant key a recipe name means ('b3', 'efficientnet-b3', 'efficientnetb3'), if any."""
    text = name.lower()
    key = spec.variant_key(text)
    if key in spec.VARIANTS and (text == key or text.startswith("efficientnet")):
        return key
    return None


def _read_yaml(path: str) -> dict:
    if "://" in path:  # gs://, ram://: through TensorFlow's file systems
        import tensorflow as tf

        with tf.io.gfile.GFile(path) as f:
            text = f.read()
    else:
        with open(path) as f:
            text = f.read()
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ValueError(f"{path} is not valid YAML: {e}") from None


def load_config(path_or_name: str) -> TrainConfig:
    """Reads a YAML recipe: a file path, or a shipped name such as 'efficientnet-b0', 'b0',
    'fashion_mnist'."""
    text = str(path_or_name)
    if os.path.isfile(text) or "://" in text:
        return config_from_dict(_read_yaml(text), where=text)
    if text.endswith((".yaml", ".yml")) or os.sep in text:
        _fail(f"Config file {text!r} does not exist.")
    key = _variant_of(text)
    name = IMAGENET_RECIPE if key else text.lower()
    path = os.path.join(CONFIG_DIR, name + ".yaml")
    if not os.path.isfile(path):
        names = available_configs()
        close = difflib.get_close_matches(text, names, n=3, cutoff=0.4)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        _fail(f"Unknown config {text!r}: not a file and not a shipped recipe.{hint} "
              f"Shipped recipes: {', '.join(names) or '(none found in ' + CONFIG_DIR + ')'}.")
    values = _read_yaml(path)
    if key:  # the ImageNet recipe for this variant: its resolution and dropout follow
        values = _migrate(values or {}, path)
        values.setdefault("model", {})["model_name"] = spec.VARIANTS[key].full_name
        return config_from_dict(values, where=f"{path} (as {spec.VARIANTS[key].full_name})")
    return config_from_dict(values, where=path)


def apply_overrides(config: TrainConfig, overrides: Sequence[str],
                    where: str | None = None) -> TrainConfig:
    """Returns a copy of config with 'section.field=value' / 'field=value' overrides applied.

    Values are parsed as YAML scalars and converted to the field's type ('none' clears an
    optional field). Derived values (data.image_size, model.dropout_rate, data.seed,
    data.image_dtype) that still hold what their source implied follow an override of that
    source. where names the overrides' origin in error messages (default: the overrides).
    """
    values = config_to_dict(config)
    set_keys: dict[str, Any] = {}
    for item in overrides:
        key, sep, raw = str(item).partition("=")
        key = key.strip()
        if not sep or not key:
            _fail(f"Override {item!r} must look like key=value, e.g. optimizer.lr=0.1.")
        spelled, key = key, _ALIASES.get(key, key)
        if key == "use_bfloat16":  # the older precision switch
            key, raw = "precision", _precision_of_use_bfloat16(raw.strip(), f"override {item!r}")
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
        parsed = parsed if not isinstance(parsed, (dict, list)) else raw
        # The last override of a key wins (flags first, then --override); an older name and
        # the current one that disagree are refused.
        if key in set_keys and set_keys[key][0] != spelled and set_keys[key][1] != parsed:
            given = {set_keys[key][0]: set_keys[key][1], spelled: parsed}
            if key == "precision" and _bfloat16_switch_agrees(given["use_bfloat16"],
                                                              given["precision"]):
                parsed = given["precision"]  # use_bfloat16=false beside precision=float16
            else:
                _fail(f"Overrides give {key} two values that differ: {set_keys[key][1]!r} (as "
                      f"{set_keys[key][0]}) and {parsed!r} (as {spelled}); give it once"
                      + (": precision alone (use_bfloat16 is its older spelling)."
                         if "use_bfloat16" in given else "."))
        target[field] = parsed
        set_keys[key] = (spelled, parsed)
    old = _derived_values(config.model, config.seed, config.precision)
    for key, sources in _DERIVED_FROM.items():
        section, field = key.split(".")
        if key not in set_keys and any(s in set_keys for s in sources) and (
                values[section][field] == old[key]):
            values[section][field] = None  # re-derived from the new source
    return config_from_dict(values, where=where or "overrides " + " ".join(map(str, overrides)))


def dump_config(config: TrainConfig) -> str:
    """The YAML text of config (what save_config writes)."""
    return yaml.safe_dump(config_to_dict(config), sort_keys=False, default_flow_style=False)


def save_config(config: TrainConfig, model_dir: str, filename: str = "config.yaml") -> str:
    """Writes model_dir/config.yaml atomically (fileio.write_file; gs:// and other remote
    paths through tf.io.gfile); returns its path."""
    path = os.path.join(model_dir, filename) if "://" not in model_dir else (
        model_dir.rstrip("/") + "/" + filename)
    return fileio.write_file(path, dump_config(config))
