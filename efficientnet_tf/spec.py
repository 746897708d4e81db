"""Typed block specs, the B0 stage table and the variant registry."""
from __future__ import annotations

import dataclasses


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One stage of MBConv blocks, before width/depth scaling."""

    repeats: int
    kernel_size: int
    strides: int
    expand_ratio: int
    filters_in: int
    filters_out: int
    se_ratio: float = 0.25


# The EfficientNet-B0 stage table (Tan & Le 2019, Table 1).
B0_BLOCKS: tuple[BlockSpec, ...] = (
    BlockSpec(1, 3, 1, 1, 32, 16),
    BlockSpec(2, 3, 2, 6, 16, 24),
    BlockSpec(2, 5, 2, 6, 24, 40),
    BlockSpec(3, 3, 2, 6, 40, 80),
    BlockSpec(3, 5, 1, 6, 80, 112),
    BlockSpec(4, 5, 2, 6, 112, 192),
    BlockSpec(1, 3, 1, 6, 192, 320),
)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A scaled member of the family: width, depth, default resolution, head dropout."""

    name: str
    width_coefficient: float
    depth_coefficient: float
    resolution: int
    dropout_rate: float


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        Variant("b0", 1.0, 1.0, 224, 0.2),
        Variant("b1", 1.0, 1.1, 240, 0.2),
        Variant("b2", 1.1, 1.2, 260, 0.3),
        Variant("b3", 1.2, 1.4, 300, 0.3),
        Variant("b4", 1.4, 1.8, 380, 0.4),
        Variant("b5", 1.6, 2.2, 456, 0.4),
        Variant("b6", 1.8, 2.6, 528, 0.5),
        Variant("b7", 2.0, 3.1, 600, 0.5),
    )
}


def get_variant(name: str) -> Variant:
    """Returns the Variant for 'b0', 'B3', 'efficientnet-b3' or 'efficientnetb3'."""
    key = str(name).lower().replace("efficientnet", "").lstrip("-_")
    if key not in VARIANTS:
        raise ValueError(
            f"Unknown EfficientNet variant {name!r}. Valid names: "
            f"{', '.join('efficientnet-' + k for k in VARIANTS)} (or b0..b7)."
        )
    return VARIANTS[key]
