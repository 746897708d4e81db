"""Compound-scaling arithmetic (pure Python, no TensorFlow)."""
from __future__ import annotations

import dataclasses
import math
import warnings

# alpha * beta^2 * gamma^2 should be about 2 so FLOPs grow ~2^phi.  The paper's own
# constants give 1.2 * 1.1^2 * 1.15^2 = 1.9203, 4% under 2, so we accept +-10%: within
# that, FLOPs at phi=7 stay within a factor 1.1^7 ~ 2 of the 2^phi promise.
FLOPS_RATIO_TOLERANCE = 0.10


def round_filters(filters: float, width_coefficient: float, divisor: int = 8) -> int:
    """Scales a channel count by width and rounds to a multiple of divisor (TPU reference)."""
    filters *= width_coefficient
    new = max(divisor, int(filters + divisor / 2) // divisor * divisor)
    if new < 0.9 * filters:  # never round down by more than 10%
        new += divisor
    return int(new)


def round_repeats(repeats: int, depth_coefficient: float) -> int:
    """Scales a stage's block count by depth, rounding up."""
    return int(math.ceil(depth_coefficient * repeats))


@dataclasses.dataclass(frozen=True)
class CompoundScaling:
    phi: float
    depth_coefficient: float  # alpha ** phi
    width_coefficient: float  # beta ** phi
    resolution_multiplier: float  # gamma ** phi
    resolution: int  # base_resolution * gamma ** phi, rounded to a multiple of 8 (>= 32)
    flops_multiplier: float  # (alpha * beta^2 * gamma^2) ** phi


def compound_scaling(
    phi: float,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    base_resolution: int = 224,
    strict: bool = False,
) -> CompoundScaling:
    """Depth/width/resolution multipliers for compound coefficient phi (may be negative).

    Warns (or raises, with strict=True) when alpha * beta^2 * gamma^2 is more than
    FLOPS_RATIO_TOLERANCE away from 2, i.e. when the constants break the paper's
    "FLOPs double per unit of phi" constraint.
    """
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if not value >= 1.0:
            raise ValueError(f"{name} must be >= 1 (got {value}); the paper constrains alpha, beta, gamma >= 1.")
    ratio = alpha * beta**2 * gamma**2
    if abs(ratio - 2.0) > FLOPS_RATIO_TOLERANCE * 2.0:
        msg = (
            f"alpha * beta^2 * gamma^2 = {ratio:.3f}, more than {FLOPS_RATIO_TOLERANCE:.0%} from 2: "
            "FLOPs will not double per unit of phi. Pick alpha, beta, gamma with a product near 2 "
            "(the paper: 1.2, 1.1, 1.15)."
        )
        if strict:
            raise ValueError(msg)
        warnings.warn(msg, stacklevel=2)
    res_mult = gamma**phi
    resolution = max(32, int(round(base_resolution * res_mult / 8.0)) * 8)
    return CompoundScaling(
        phi=phi,
        depth_coefficient=alpha**phi,
        width_coefficient=beta**phi,
        resolution_multiplier=res_mult,
        resolution=resolution,
        flops_multiplier=ratio**phi,
    )


def scaled_blocks(blocks, width_coefficient: float, depth_coefficient: float,
                  drop_connect_rate: float, fixed_ends: bool = False):
    """Expands stage specs into per-block (name, spec, drop_rate), scaling width and depth.

    The per-block drop-connect rate grows linearly with the block index:
    drop_connect_rate * index / num_blocks (0 for the first block). fixed_ends keeps the first
    and last stages' repeats unscaled (EfficientNet-Lite).
    """
    last = len(blocks) - 1
    per_stage = [b.repeats if fixed_ends and i in (0, last) else
                 round_repeats(b.repeats, depth_coefficient) for i, b in enumerate(blocks)]
    total = float(sum(per_stage))
    out, index = [], 0
    for stage, (b, repeats) in enumerate(zip(blocks, per_stage)):
        f_in = round_filters(b.filters_in, width_coefficient)
        f_out = round_filters(b.filters_out, width_coefficient)
        for j in range(repeats):
            spec = dataclasses.replace(
                b, repeats=1, filters_in=f_in if j == 0 else f_out, filters_out=f_out,
                strides=b.strides if j == 0 else 1)
            out.append((f"block{stage + 1}{chr(ord('a') + j)}_", spec,
                        drop_connect_rate * index / total))
            index += 1
    return out
