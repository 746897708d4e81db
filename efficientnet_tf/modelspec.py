"""ModelSpec: which network, with which input contract, resolved once (pure Python, no TF).

    from efficientnet_tf.modelspec import resolve
    spec = resolve("b0")                                   # a registered variant
    spec = resolve("lite0", width_coefficient=0.5, depth_coefficient=0.5)  # Lite blocks, half width
    spec = resolve(phi=-1)                                 # compound scaling of B0
    spec.params(classes=1000), spec.macs()                 # counts without building anything

`resolve` is the only home of the rules that decide the network: the stem/head filters (scaled,
or 32/1280 for EfficientNet-Lite), the per-block width/depth rounding and drop-connect rates
(scaling.py), the default resolution and dropout, and the "auto" input normalization (a weight
set's, else the architecture's, else ImageNet's). The builder (builder.py) turns a spec into a
Keras model; the training config (ModelConfig.to_spec), the weight converters, fine-tuning's
stages, the feature endpoints and the research tools read the same spec.
"""
from __future__ import annotations

import dataclasses

from efficientnet_tf import constants
from efficientnet_tf import spec as registry
from efficientnet_tf.scaling import compound_scaling, round_filters, scaled_blocks
from efficientnet_tf.spec import B0_BLOCKS, BlockSpec

DEFAULT_RESOLUTION = 224
DEFAULT_DROPOUT = 0.2  # B0's, for custom width/depth and phi
STEM_FILTERS = 32  # before width scaling
HEAD_FILTERS = 1280


@dataclasses.dataclass(frozen=True)
class PlannedBlock:
    """One MBConv block of a resolved network: its layer-name prefix ('block2a_'), its stage
    (1-based row of the block table), its width-scaled BlockSpec (repeats 1; filters_in is the
    channel count that really enters it) and its drop-connect rate."""

    prefix: str
    stage: int
    block: BlockSpec
    drop_rate: float

    @property
    def expands(self) -> bool:
        return self.block.expands

    @property
    def strides(self) -> int:
        return self.block.strides

    @property
    def has_skip(self) -> bool:
        return self.block.has_skip

    @property
    def output_layer(self) -> str:
        """The name of the layer whose output is the block's output."""
        return self.prefix + ("add" if self.has_skip else "project_bn")


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """A resolved EfficientNet: everything the builder needs except the distribution and
    initialization options (BN replica groups, truncated init) and the classifier's size.

    variant: the registry key when this is exactly a registered variant (its published weights
    fit), None for custom width/depth or phi. normalization: "imagenet", "advprop", "lite" or
    None (inputs come normalized). resolution: the default input size (the classifier model's
    fixed size). Frozen and hashable: equal specs build equal networks.
    """

    name: str
    variant: str | None
    width_coefficient: float
    depth_coefficient: float
    resolution: int
    dropout_rate: float
    drop_connect_rate: float
    stem_filters: int
    head_filters: int
    stem_strides: int
    activation: str
    normalization: str | None
    bn_momentum: float
    bn_epsilon: float
    blocks: tuple[PlannedBlock, ...]

    @property
    def num_stages(self) -> int:
        return max(b.stage for b in self.blocks)

    def endpoints(self) -> dict[str, str]:
        """The TPU reference's reduction_1..reduction_N feature endpoints: the output layer of
        the last block before each stride-2 block, and of the last block."""
        return endpoints(self.blocks)

    def architecture_key(self, image_size: int | None = None) -> tuple:
        """What the network's weights and cost depend on (not its name, dropout or the
        coefficients that rounded to it): equal keys build networks of equal shapes."""
        return (image_size or self.resolution, self.stem_strides, self.stem_filters,
                self.head_filters, self.activation, self.normalization is not None,
                tuple(b.block for b in self.blocks))

    def params(self, classes: int = 1000, include_top: bool = True) -> int:
        """Parameter count as Keras counts it (BN moving statistics and the input
        Normalization layer's mean/variance/count included), without building."""
        n = 7 if self.normalization is not None else 0  # mean, variance (3 each), count
        n += 3 * 3 * 3 * self.stem_filters + 4 * self.stem_filters
        for b in self.blocks:
            s = b.block
            mid = s.filters_in * s.expand_ratio
            if s.expands:
                n += s.filters_in * mid + 4 * mid
            n += s.kernel_size * s.kernel_size * mid + 4 * mid
            if s.has_se:
                n += mid * s.se_filters + s.se_filters + s.se_filters * mid + mid
            n += mid * s.filters_out + 4 * s.filters_out
        last = self.blocks[-1].block.filters_out
        n += last * self.head_filters + 4 * self.head_filters
        if include_top:
            n += self.head_filters * classes + classes
        return n

    def macs(self, image_size: int | None = None, classes: int = 1000,
             include_top: bool = True) -> int:
        """Multiply-adds of the convolutions and the classifier for one image (the paper's
        "FLOPs"), at image_size (default: the spec's resolution), without building."""
        size = image_size or self.resolution
        h = _same(size, self.stem_strides)
        n = h * h * 3 * 3 * 3 * self.stem_filters
        for b in self.blocks:
            s = b.block
            mid = s.filters_in * s.expand_ratio
            if s.expands:
                n += h * h * s.filters_in * mid
            h = _same(h, s.strides)
            n += h * h * s.kernel_size * s.kernel_size * mid
            if s.has_se:
                n += 2 * mid * s.se_filters
            n += h * h * mid * s.filters_out
        n += h * h * self.blocks[-1].block.filters_out * self.head_filters
        if include_top:
            n += self.head_filters * classes
        return n


def _same(size: int, strides: int) -> int:
    return -(-size // strides)  # TensorFlow 'SAME' padding: ceil(size / strides)


def layer_stage(blocks, layer_name: str) -> int | None:
    """Stage of a layer by name in a block plan: 0 for stem_*, the block's stage, else None."""
    if layer_name.startswith("stem_"):
        return 0
    for b in blocks:
        if layer_name.startswith(b.prefix):
            return b.stage
    return None


def endpoints(blocks) -> dict[str, str]:
    """reduction_i -> output layer name, for a block plan (PlannedBlock or ModelBlock)."""
    ends: dict[str, str] = {}
    for k, b in enumerate(blocks):
        if k + 1 == len(blocks) or blocks[k + 1].strides == 2:
            ends[f"reduction_{len(ends) + 1}"] = b.output_layer
    return ends


def _positive(name, value):
    if value is not None and not value > 0:
        raise ValueError(f"{name} must be positive, got {value}.")


def resolve(
    variant: str | None = None,
    *,
    width_coefficient: float | None = None,
    depth_coefficient: float | None = None,
    phi: float | None = None,
    alpha: float = 1.2,
    beta: float = 1.1,
    gamma: float = 1.15,
    resolution: int | None = None,
    dropout_rate: float | None = None,
    drop_connect_rate: float = 0.2,
    stem_strides: int = 2,
    normalization: str | None = "auto",
    weight_set=None,
    blocks: tuple[BlockSpec, ...] | None = None,
    activation: str | None = None,
    fixed_stem_head: bool | None = None,
    bn_momentum: float = 0.99,
    bn_epsilon: float = 1e-3,
    name: str | None = None,
) -> ModelSpec:
    """Resolves a network from one of: a registered `variant` ("b0", "efficientnet-lite2");
    a variant's architecture at custom `width_coefficient`/`depth_coefficient` (a half-width
    Lite0 keeps Lite's blocks, ReLU6 and fixed stem/head, and is no longer that variant);
    width/depth alone (B0's architecture); or `phi` (compound scaling of B0 with alpha, beta,
    gamma). blocks/activation/fixed_stem_head override the architecture's.

    weight_set: a published WeightSet (or anything with .normalization and .image_size) the
    model will be loaded with: "auto" normalization becomes the set's, another normalization is
    refused, and the set's image size is the resolution unless one is given.
    Defaults: resolution and dropout are the variant's (phi: the compound-scaled resolution;
    custom width/depth: 224 px); dropout 0.2 otherwise.
    """
    if phi is not None and (width_coefficient is not None or depth_coefficient is not None):
        raise ValueError("Give either phi or width_coefficient/depth_coefficient, not both.")
    arch = registry.get_variant(variant) if variant is not None else None
    # Exactly the registered variant (its published weights fit): nothing of its shape changed.
    exact = arch is not None and phi is None and width_coefficient is None \
        and depth_coefficient is None and blocks in (None, arch.blocks) \
        and activation in (None, arch.activation) \
        and fixed_stem_head in (None, arch.fixed_stem_head)
    if phi is not None:
        if arch is not None and (arch.fixed_stem_head or arch.blocks != B0_BLOCKS):
            raise ValueError(f"phi scales B0; {arch.full_name} has another architecture. Give "
                             "width_coefficient and depth_coefficient instead.")
        cs = compound_scaling(phi, alpha, beta, gamma)
        width, depth, default_size = cs.width_coefficient, cs.depth_coefficient, cs.resolution
        arch = None
    elif exact:
        width, depth, default_size = arch.width_coefficient, arch.depth_coefficient, \
            arch.resolution
    else:
        width = 1.0 if width_coefficient is None else float(width_coefficient)
        depth = 1.0 if depth_coefficient is None else float(depth_coefficient)
        default_size = DEFAULT_RESOLUTION
    if width <= 0 or depth <= 0:
        raise ValueError("width_coefficient and depth_coefficient must be positive.")
    if stem_strides not in (1, 2):
        raise ValueError(f"stem_strides must be 1 or 2, got {stem_strides}.")
    _positive("resolution", resolution)

    table = blocks if blocks is not None else (arch.blocks if arch else B0_BLOCKS)
    act = activation or (arch.activation if arch else "swish")
    fixed = fixed_stem_head if fixed_stem_head is not None else bool(arch and arch.fixed_stem_head)
    normalization = resolve_normalization(normalization, weight_set, arch)
    if resolution is None and weight_set is not None:
        resolution = getattr(weight_set, "image_size", None)
    if dropout_rate is None:
        dropout_rate = arch.dropout_rate if exact else DEFAULT_DROPOUT

    stem = STEM_FILTERS if fixed else round_filters(STEM_FILTERS, width)
    head = HEAD_FILTERS if fixed else round_filters(HEAD_FILTERS, width)
    plan, channels = [], stem
    for prefix, block, rate in scaled_blocks(table, width, depth, drop_connect_rate, fixed):
        # The first block takes the stem's channels (Lite's fixed stem: 32, not the scaled 32).
        block = dataclasses.replace(block, filters_in=channels)
        plan.append(PlannedBlock(prefix, int(prefix[len("block"):-2]), block, rate))
        channels = block.filters_out
    return ModelSpec(
        name=name or (f"efficientnet{arch.name}" if exact else "efficientnet"),
        variant=arch.name if exact else None,
        width_coefficient=float(width), depth_coefficient=float(depth),
        resolution=int(resolution or default_size), dropout_rate=float(dropout_rate),
        drop_connect_rate=float(drop_connect_rate), stem_filters=stem, head_filters=head,
        stem_strides=int(stem_strides), activation=act, normalization=normalization,
        bn_momentum=float(bn_momentum), bn_epsilon=float(bn_epsilon), blocks=tuple(plan))


def resolve_normalization(normalization, weight_set=None, arch=None) -> str | None:
    """The input normalization a model uses: "auto" is the weight set's (what its weights were
    trained with), else the architecture's ("lite" for EfficientNet-Lite), else "imagenet".
    An explicit one that contradicts the weight set is refused."""
    if normalization == "auto":
        if weight_set is not None:
            return weight_set.normalization
        return arch.normalization if arch is not None else "imagenet"
    if weight_set is not None and normalization != weight_set.normalization:
        raise ValueError(
            f"weights={weight_set.name!r} were trained with normalization="
            f"{weight_set.normalization!r}; normalization={normalization!r} would feed them "
            "wrongly scaled inputs. Leave normalization at its default ('auto').")
    if normalization is not None and normalization not in constants.NORMALIZATIONS:
        raise ValueError(f"normalization must be one of {', '.join(constants.NORMALIZATIONS)}, "
                         f"None or 'auto', got {normalization!r}.")
    return normalization


@dataclasses.dataclass(frozen=True)
class ModelBlock:
    """A block as read off a built model's layers (for models that carry no ModelSpec, e.g.
    loaded from a .keras file): the same names PlannedBlock answers to."""

    prefix: str
    stage: int
    strides: int
    expands: bool
    has_skip: bool

    @property
    def output_layer(self) -> str:
        return self.prefix + ("add" if self.has_skip else "project_bn")


def block_plan(model) -> tuple:
    """The blocks of a built EfficientNet: its ModelSpec's (the builder attaches it), else
    read off the layer names and the depthwise convs' strides (one parser, for models loaded
    from files)."""
    spec = spec_of(model)
    if spec is not None:
        return spec.blocks
    layers = {la.name: la for la in model.layers}
    out = []
    for name, layer in layers.items():
        if name.startswith("block") and name.endswith("_dwconv"):
            prefix = name[: -len("dwconv")]
            digits = prefix[len("block"):].rstrip("_").rstrip("abcdefghijklmnopqrstuvwxyz")
            if not digits.isdigit():
                continue
            out.append(ModelBlock(prefix, int(digits), int(layer.strides[0]),
                                  prefix + "expand_conv" in layers, prefix + "add" in layers))
    return tuple(out)


SPEC_ATTRIBUTE = "efficientnet_spec"


def spec_of(model) -> ModelSpec | None:
    """The ModelSpec a model was built from (None for a model loaded from a file)."""
    spec = getattr(model, SPEC_ATTRIBUTE, None)
    return spec if isinstance(spec, ModelSpec) else None

