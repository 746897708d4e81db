"""AutoAugment (policy v0) and RandAugment as the EfficientNet TPU reference applies them.

Core TensorFlow only; everything runs in graph mode inside tf.data map. Input and output are
uint8 [H, W, 3] images of any size. The ops themselves (efficientnet_tf.data._augment_ops,
re-exported here and as `ops`) follow their PIL definitions; this module holds the reference's
policy table, its level -> argument mapping and its random choices. Each op is one entry of
the registry OPS (its function and level mapping); both policies look ops up there by name:

- AutoAugment v0: pick one of 25 sub-policies uniformly; apply each of its two ops with the
  op's probability. Level 0..10; translate_const 250, cutout_const 100.
- RandAugment(N, M): N times, pick one of 16 ops uniformly and apply it (always; the reference
  draws a probability in [0.2, 0.8] but never uses it) at level M; translate_const 100,
  cutout_const 40.
- Rotate, ShearX/Y and TranslateX/Y are negated with probability 1/2. Geometric ops and
  Cutout fill with gray 128.

Where the reference's TF ops differ from PIL we follow PIL (the policies were searched with
PIL): Contrast blends towards the mean gray level (the reference used pixel_count / 256),
Sharpness rounds its smoothed image, affine maps use PIL's pixel-centre convention (the
reference's are half a pixel off for shear), and Color uses PIL's "L" weights. Posterize with
0 bits (v0's level 2; Pillow refuses 0) keeps 1 bit, as the reference did on the host CPU
(TF clamps a uint8 shift by 8 to 7), not a black image. Geometric ops use NEAREST
interpolation, as the reference's tf.contrib.image calls and PIL's defaults did.

Randomness: with seed=None, stateful tf.random ops. With a seed (int or int [2] tensor), every
draw is stateless and derived from it, so the output is a pure function of (image, seed). Give
each element its own seed (e.g. from Dataset.enumerate or tf.data.Dataset.random), otherwise
every image gets the same augmentation.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Callable

import tensorflow as tf

from efficientnet_tf.constants import AUGMENT_NAMES  # noqa: F401  (public re-export)
from efficientnet_tf.data import _augment_ops as ops
from efficientnet_tf.data._augment_ops import (  # noqa: F401  (public re-exports)
    GRAY, autocontrast, brightness, color, contrast, cutout, equalize, invert, posterize,
    rotate, sharpness, shear_x, shear_y, solarize, solarize_add, translate_x, translate_y)

# No Python control flow depends on tensors here: skipping AutoGraph's source conversion
# makes tracing inside tf.data map faster.
_no_autograph = tf.autograph.experimental.do_not_convert

MAX_LEVEL = 10.0

# (op, probability, level) pairs; the AutoAugment paper's ImageNet policy as in the reference.
POLICY_V0 = (
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)),
    (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)),
    (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)),
    (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)),
    (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)),
    (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)),
    (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)),
    (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)),
    (("Rotate", 1.0, 7), ("TranslateY", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)),
    (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)),
    (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)),
    (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)),
    (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)
POLICIES = {"v0": POLICY_V0}

AUTOAUGMENT_CONSTS = {"translate_const": 250, "cutout_const": 100}
RANDAUGMENT_CONSTS = {"translate_const": 100, "cutout_const": 40}


class Rng:
    """Scalar random draws: stateful if seed is None, else stateless and derived from seed."""

    def __init__(self, seed=None):
        self._seed = None if seed is None else _as_seed(seed)
        self._count = 0

    def _next_seed(self) -> tf.Tensor:
        self._count += 1  # trace-time counter: each draw site gets its own stream
        return tf.random.experimental.stateless_fold_in(self._seed, self._count)

    def uniform(self) -> tf.Tensor:
        """A float32 in [0, 1)."""
        if self._seed is None:
            return tf.random.uniform([])
        return tf.random.stateless_uniform([], self._next_seed())

    def integer(self, maxval) -> tf.Tensor:
        """An int32 in [0, maxval)."""
        if self._seed is None:
            return tf.random.uniform([], 0, maxval, tf.int32)
        return tf.random.stateless_uniform([], self._next_seed(), 0, maxval, tf.int32)


def _as_seed(seed) -> tf.Tensor:
    seed = tf.convert_to_tensor(seed)
    if not seed.dtype.is_integer:
        raise ValueError(f"seed must be an int or an int tensor of shape [2], got {seed.dtype}")
    seed = tf.cast(seed, tf.int64)
    if seed.shape.rank == 0:
        return tf.stack([seed, tf.constant(0, tf.int64)])
    if seed.shape.as_list() != [2]:
        raise ValueError(f"seed must be an int or an int tensor of shape [2], got {seed.shape}")
    return seed


def _negate_half(value: tf.Tensor, rng: Rng) -> tf.Tensor:
    return tf.where(rng.uniform() < 0.5, -value, value)


# --- level -> arguments: the reference's mapping ---------------------------------------------
# Each takes (level, rng, translate_const=, cutout_const=) and returns the op's argument tuple.
# The arithmetic is float64 like the reference's Python, so int(level / 10 * k) truncates
# identically; level may be a Python number or a scalar tensor.

def _frac(level) -> tf.Tensor:
    return tf.cast(level, tf.float64) / MAX_LEVEL


def _trunc(level, k: float) -> tf.Tensor:
    return tf.cast(tf.floor(_frac(level) * k), tf.int32)


def _no_args(level, rng, **consts) -> tuple:
    return ()


def _enhance_factor(level, rng, **consts) -> tuple:
    return (_frac(level) * 1.8 + 0.1,)


def _int_scaled(k: float) -> Callable[..., tuple]:
    return lambda level, rng, **consts: (_trunc(level, k),)


def _signed(k: float) -> Callable[..., tuple]:
    return lambda level, rng, **consts: (_negate_half(_frac(level) * k, rng),)


def _translate_pixels(level, rng, translate_const, **consts) -> tuple:
    return (_negate_half(_frac(level) * float(translate_const), rng),)


def _cutout_args(level, rng, cutout_const, **consts) -> tuple:
    return (_trunc(level, float(cutout_const)), rng)


def _cutout_at_random_centre(image: tf.Tensor, pad_size, rng: Rng) -> tf.Tensor:
    shape = tf.shape(image)
    center = (rng.integer(shape[0]), rng.integer(shape[1]))
    return ops.cutout(image, pad_size, center, GRAY)


# --- the registry ------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class AugmentOp:
    """One augmentation op: out = fn(image, *level_to_args(level, rng, **consts)).

    consts are translate_const and cutout_const. An op that draws its own randomness gets
    the Rng among its arguments (Cutout's centre). randaugment: RandAugment may pick it.
    """
    name: str
    fn: Callable[..., tf.Tensor]
    level_to_args: Callable[..., tuple]
    randaugment: bool = True


# Every op either policy uses. The order is part of the output: RandAugment draws an index
# into it and each op's random draws are numbered in this order (see Rng).
OPS: dict[str, AugmentOp] = {op.name: op for op in (
    AugmentOp("AutoContrast", ops.autocontrast, _no_args),
    AugmentOp("Equalize", ops.equalize, _no_args),
    AugmentOp("Invert", ops.invert, _no_args),
    AugmentOp("Rotate", ops.rotate, _signed(30.0)),
    AugmentOp("Posterize", ops.posterize, _int_scaled(4.0)),
    AugmentOp("Solarize", ops.solarize, _int_scaled(256.0)),
    AugmentOp("Color", ops.color, _enhance_factor),
    AugmentOp("Contrast", ops.contrast, _enhance_factor),
    AugmentOp("Brightness", ops.brightness, _enhance_factor),
    AugmentOp("Sharpness", ops.sharpness, _enhance_factor),
    AugmentOp("ShearX", ops.shear_x, _signed(0.3)),
    AugmentOp("ShearY", ops.shear_y, _signed(0.3)),
    AugmentOp("TranslateX", ops.translate_x, _translate_pixels),
    AugmentOp("TranslateY", ops.translate_y, _translate_pixels),
    AugmentOp("Cutout", _cutout_at_random_centre, _cutout_args),
    AugmentOp("SolarizeAdd", ops.solarize_add, _int_scaled(110.0)),
)}


def _op_names(randaugment_only: bool = False) -> tuple[str, ...]:
    """Names in registry order (read at call time, so a patched OPS takes effect)."""
    return tuple(name for name, op in OPS.items() if op.randaugment or not randaugment_only)


OP_NAMES = _op_names()
RANDAUGMENT_OPS = _op_names(randaugment_only=True)


def _get_op(name: str) -> AugmentOp:
    if name not in OPS:
        raise ValueError(f"unknown augmentation op {name!r}; valid: {', '.join(OPS)}")
    return OPS[name]


def level_to_arg(name: str, level, rng: Rng, translate_const: float = 250,
                 cutout_const: float = 100) -> tuple:
    """Op `name`'s arguments at `level` (0..10, RandAugment allows more)."""
    return _get_op(name).level_to_args(level, rng, translate_const=translate_const,
                                       cutout_const=cutout_const)


@_no_autograph
def apply_op(image: tf.Tensor, name: str, level, rng: Rng | None = None,
             translate_const: float = 250, cutout_const: float = 100) -> tf.Tensor:
    """Applies op `name` (reference naming, e.g. "ShearX") at `level`, always."""
    op = _get_op(name)
    rng = rng or Rng()
    args = op.level_to_args(level, rng, translate_const=translate_const,
                            cutout_const=cutout_const)
    return tf.ensure_shape(op.fn(image, *args), image.shape)


def _apply_op_by_index(image, names, op_index, level, rng: Rng, consts: dict) -> tf.Tensor:
    """Runs only the op names[op_index] (a tensor); one graph copy of each op."""
    def branch(name):
        return lambda: apply_op(image, name, level, rng, **consts)
    out = tf.switch_case(op_index, [branch(name) for name in names])
    return tf.ensure_shape(out, image.shape)


@_no_autograph
def autoaugment(image: tf.Tensor, policy: str = "v0", seed=None) -> tf.Tensor:
    """AutoAugment: one uniformly chosen sub-policy of `policy` (only "v0") per image.

    The policy is a table of (op index, probability, level) gathered by the chosen
    sub-policy, so the graph holds each op once per step rather than once per sub-policy.
    """
    if policy not in POLICIES:
        raise ValueError(f"unknown AutoAugment policy {policy!r}; valid: {sorted(POLICIES)}")
    image = ops._check_image(image)
    table = POLICIES[policy]
    names = _op_names()  # every registered op, so the draws are numbered as for any policy
    for sub in table:
        for name, _, _ in sub:
            _get_op(name)  # an unknown name raises, listing the valid ones
    op_ids = tf.constant([[names.index(n) for n, _, _ in sub] for sub in table], tf.int32)
    probs = tf.constant([[p for _, p, _ in sub] for sub in table], tf.float32)
    levels = tf.constant([[lv for _, _, lv in sub] for sub in table], tf.float64)
    rng = Rng(seed)
    which = rng.integer(len(table))
    out = image
    for step in range(op_ids.shape[1]):
        def run(current=out, step=step):
            return _apply_op_by_index(current, names, op_ids[which, step], levels[which, step],
                                      rng, AUTOAUGMENT_CONSTS)
        out = tf.cond(rng.uniform() < probs[which, step], run, lambda current=out: current)
    return tf.ensure_shape(out, image.shape)


@_no_autograph
def randaugment(image: tf.Tensor, num_layers: int = 2, magnitude: float = 10.0,
                seed=None) -> tf.Tensor:
    """RandAugment: `num_layers` uniformly chosen ops, each at level `magnitude`.

    magnitude is on the 0..10 scale of AutoAugment (the reference used 10; larger values
    extrapolate, e.g. enhance factor 3.7 at 20). It may be a scalar tensor.
    """
    if not isinstance(num_layers, numbers.Integral) or num_layers < 0:
        raise ValueError(f"num_layers must be an int >= 0, got {num_layers!r}")
    if not tf.is_tensor(magnitude) and (not isinstance(magnitude, numbers.Real)
                                        or magnitude < 0):
        raise ValueError(f"magnitude must be a number >= 0 or a scalar tensor, "
                         f"got {magnitude!r}")
    image = ops._check_image(image)
    names = _op_names(randaugment_only=True)
    rng = Rng(seed)
    out = image
    for _ in range(int(num_layers)):
        which = rng.integer(len(names))
        out = _apply_op_by_index(out, names, which, magnitude, rng, RANDAUGMENT_CONSTS)
    return out


@_no_autograph
def distort(image: tf.Tensor, augment_name: str, randaug_num_layers: int = 2,
            randaug_magnitude: float = 10.0, seed=None) -> tf.Tensor:
    """Applies "autoaugment" (policy v0) or "randaugment" to a uint8 [H, W, 3] image."""
    if augment_name == "autoaugment":
        return autoaugment(image, "v0", seed=seed)
    if augment_name == "randaugment":
        return randaugment(image, randaug_num_layers, randaug_magnitude, seed=seed)
    raise ValueError(
        f"unknown augment_name {augment_name!r}; valid choices: {', '.join(AUGMENT_NAMES)}")
