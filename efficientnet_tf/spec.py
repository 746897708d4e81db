"""Typed block specs, the B0 stage table and the variant registry."""
from __future__ import annotations

import dataclasses
import re


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

    # What a block (repeats 1, width-scaled) is made of: the builder and the counts ask here.
    @property
    def expands(self) -> bool:
        return self.expand_ratio != 1

    @property
    def has_se(self) -> bool:
        return 0 < self.se_ratio <= 1

    @property
    def se_filters(self) -> int:
        """Squeeze-excite width: se_ratio of the block's INPUT filters (at least 1)."""
        return max(1, int(self.filters_in * self.se_ratio))

    @property
    def has_skip(self) -> bool:
        """Identity shortcut (with drop-connect): stride 1 and as many filters out as in."""
        return self.strides == 1 and self.filters_in == self.filters_out


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

# EfficientNet-Lite: the same stages without squeeze-excite.
LITE_BLOCKS: tuple[BlockSpec, ...] = tuple(dataclasses.replace(b, se_ratio=0.0)
                                           for b in B0_BLOCKS)


@dataclasses.dataclass(frozen=True)
class Variant:
    """A scaled member of the family: width, depth, default resolution, head dropout.

    Reference numbers the tests check (None where there is none): params, the count with the
    1000-class top as keras.applications counts it (BN statistics and the Normalization layer
    included; for variants keras lacks, derived from the reference's builder rules, whose
    trainable part matches timm's published counts); macs, the paper's multiply-adds (2
    significant digits).
    """

    name: str
    width_coefficient: float
    depth_coefficient: float
    resolution: int
    dropout_rate: float
    blocks: tuple[BlockSpec, ...] = B0_BLOCKS
    params: int | None = None
    macs: float | None = None
    activation: str = "swish"
    # EfficientNet-Lite: stem (32) and head (1280) filters and the first and last stages'
    # repeats are not scaled.
    fixed_stem_head: bool = False
    normalization: str = "imagenet"  # the model's default input normalization

    @property
    def full_name(self) -> str:
        return f"efficientnet-{self.name}"

    @property
    def constructor_name(self) -> str:
        name = self.name.upper() if re.fullmatch(r"[a-z]\d+", self.name) else self.name.capitalize()
        return f"EfficientNet{name}"


VARIANTS: dict[str, Variant] = {}


def register_variant(variant: Variant) -> Variant:
    """Adds a variant; model.py makes its EfficientNet<NAME> constructor and the configs know
    it as efficientnet-<name> (the ImageNet recipe at its resolution and dropout)."""
    key = variant.name.lower()
    if key in VARIANTS:
        raise ValueError(f"EfficientNet variant {key!r} is already registered.")
    VARIANTS[key] = variant
    return variant


# Width, depth, resolution, dropout: the TPU reference's table (docs/reference.md
# "Compound scaling"); params from keras.applications, MACs from the paper.
for _v in (
    Variant("b0", 1.0, 1.0, 224, 0.2, params=5_330_571, macs=0.39e9),
    Variant("b1", 1.0, 1.1, 240, 0.2, params=7_856_239, macs=0.70e9),
    Variant("b2", 1.1, 1.2, 260, 0.3, params=9_177_569, macs=1.0e9),
    Variant("b3", 1.2, 1.4, 300, 0.3, params=12_320_535, macs=1.8e9),
    Variant("b4", 1.4, 1.8, 380, 0.4, params=19_466_823, macs=4.2e9),
    Variant("b5", 1.6, 2.2, 456, 0.4, params=30_562_527, macs=9.9e9),
    Variant("b6", 1.8, 2.6, 528, 0.5, params=43_265_143, macs=19e9),
    Variant("b7", 2.0, 3.1, 600, 0.5, params=66_658_687, macs=37e9),
    # AdvProp's B8 and NoisyStudent's L2 (docs/reference.md "Variant table").
    Variant("b8", 2.2, 3.6, 672, 0.5, params=87_793_181),
    Variant("l2", 4.3, 5.3, 800, 0.5, params=481_400_003),
):
    register_variant(_v)

# EfficientNet-Lite0..4 (the reference's lite builder; docs/reference.md "EfficientNet-Lite"):
# ReLU6, no squeeze-excite, stem/head and first/last stage repeats not scaled, inputs
# (x - 127) / 128. MACs: the reference's lite README (our convs-and-dense count is 3-5% lower);
# params: the builder rules' count with BN statistics, as for B8/L2 (its trainable part rounds
# to the README's 4.7M, 5.4M, 6.1M, 8.2M and 13.0M; tests/test_model.py checks both).
_LITE = dict(blocks=LITE_BLOCKS, activation="relu6", fixed_stem_head=True, normalization="lite")
for _v in (
    Variant("lite0", 1.0, 1.0, 224, 0.2, params=4_694_031, macs=407e6, **_LITE),
    Variant("lite1", 1.0, 1.1, 240, 0.2, params=5_470_351, macs=631e6, **_LITE),
    Variant("lite2", 1.1, 1.2, 260, 0.3, params=6_150_175, macs=899e6, **_LITE),
    Variant("lite3", 1.2, 1.4, 280, 0.3, params=8_273_775, macs=1.44e9, **_LITE),
    Variant("lite4", 1.4, 1.8, 300, 0.3, params=13_118_943, macs=2.64e9, **_LITE),
):
    register_variant(_v)


def variant_key(name: str) -> str:
    """'b3' for 'b3', 'B3', 'efficientnet-b3' or 'efficientnetb3' (not checked)."""
    return str(name).lower().replace("efficientnet", "").lstrip("-_")


def get_variant(name: str) -> Variant:
    """Returns the Variant for 'b0', 'B3', 'efficientnet-b3' or 'efficientnetb3'."""
    key = variant_key(name)
    if key not in VARIANTS:
        raise ValueError(
            f"Unknown EfficientNet variant {name!r}. Valid names: "
            f"{', '.join(v.full_name for v in VARIANTS.values())} "
            f"(or {', '.join(VARIANTS)}).")
    return VARIANTS[key]
