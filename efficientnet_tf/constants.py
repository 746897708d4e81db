"""Values used in more than one layer of the package, each defined once (pure Python).

Sources are in docs/reference.md.
"""

# ImageNet channel statistics of pixels in [0, 1] (the TPU reference and keras.applications).
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Eval center crop: side = size / (size + crop_padding) * short side. 32 is the constant the
# published checkpoints were evaluated with (87.5% of the short side at 224 px).
DEFAULT_CROP_PADDING = 32

# "bicubic_tf1": TF1's resize_bicubic (no half-pixel centers), what the reference trained with.
RESIZE_METHODS = ("bicubic_tf1", "bicubic", "bilinear")

# Pixel dtypes the input pipeline can hand to the model.
IMAGE_DTYPES = ("uint8", "float32", "bfloat16")

# Augmentation policies of the input pipeline (None: crop and flip only).
AUGMENT_NAMES = ("autoaugment", "randaugment")

# Input normalization inside the model, for pixels in [0, 255] scaled to [0, 1]: name ->
# (mean, std) per channel. "imagenet": the reference's and keras.applications' (default);
# "advprop": x / 127.5 - 1, what the AdvProp checkpoints were trained on; "lite": (x - 127) / 128,
# the EfficientNet-Lite builders'. None (no entry): the inputs come normalized already.
NORMALIZATIONS = {
    "imagenet": (IMAGENET_MEAN, IMAGENET_STD),
    "advprop": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "lite": ((127.0 / 255.0,) * 3, (128.0 / 255.0,) * 3),
}
