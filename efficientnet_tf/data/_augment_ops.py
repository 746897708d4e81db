"""Image ops of AutoAugment / RandAugment in core TensorFlow, defined as PIL defines them.

Every op takes a uint8 [H, W, 3] image of any size and returns a uint8 image of the same
shape. Arguments may be Python numbers or scalar tensors, so the ops run inside tf.data
map / tf.function. Geometric ops use tf.raw_ops.ImageProjectiveTransformV3 with NEAREST
interpolation (PIL's default, and what the TPU reference used) and a constant fill
(gray 128 by default).

Conventions follow PIL (Pillow 13), which is how the policies were defined:
- blends are computed in float32 and truncated, as PIL's ImagingBlend does;
- grayscale is PIL's "L": (19595 R + 38470 G + 7471 B + 0x8000) >> 16;
- affine maps use PIL's pixel-centre convention: output pixel (x, y) samples the input at
  floor(A @ (x + 0.5, y + 0.5) + c).
"""

from __future__ import annotations

import math

import tensorflow as tf

GRAY = 128


def _check_image(image: tf.Tensor) -> tf.Tensor:
    image = tf.convert_to_tensor(image)
    if image.dtype != tf.uint8:
        raise ValueError(
            f"augment ops need a uint8 image, got {image.dtype.name}; "
            "apply them before converting pixels to float")
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(f"augment ops need an [H, W, 3] image, got shape {image.shape}")
    if image.shape.rank == 3 and image.shape[-1] not in (None, 3):
        raise ValueError(f"augment ops need 3 channels (RGB), got shape {image.shape}")
    return image


def _f32(x) -> tf.Tensor:
    return tf.cast(x, tf.float32)


def _select(mask: tf.Tensor, a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
    """uint8 where(mask, a, b) as b + (a - b) * mask in wrap-around uint8 arithmetic.

    Exact (the result is a or b, both in range) and faster than tf.where on uint8 on CPU.
    """
    return b + (a - b) * tf.cast(mask, tf.uint8)


def _below(image: tf.Tensor, threshold) -> tf.Tensor:
    """uint8 0/1 mask of image < threshold, for any int threshold (e.g. 256), no int32 copy."""
    t = tf.cast(threshold, tf.int32)
    lt = tf.cast(image < tf.cast(tf.clip_by_value(t, 0, 255), tf.uint8), tf.uint8)
    return tf.maximum(lt, tf.cast(t > 255, tf.uint8))


def _channel_index(image: tf.Tensor) -> tf.Tensor:
    """int32 value + 256 * channel: one index space for 3 per-channel tables."""
    return tf.cast(image, tf.int32) + tf.constant([0, 256, 512], tf.int32)


def _apply_lut(index: tf.Tensor, lut: tf.Tensor) -> tf.Tensor:
    """Maps each channel c through lut[c] ([3, 256] int table); index from _channel_index."""
    table = tf.cast(tf.clip_by_value(tf.reshape(lut, [-1]), 0, 255), tf.uint8)
    return tf.gather(table, index)


def _channel_histograms(index: tf.Tensor) -> tf.Tensor:
    """[3, 256] int32 histogram of each channel; index from _channel_index.

    histogram_fixed_width with bin width exactly 1 is an exact integer histogram (and
    faster than bincount on CPU).
    """
    hist = tf.histogram_fixed_width(index, [0, 768], nbins=768)
    return tf.reshape(hist, [3, 256])


def blend(image1: tf.Tensor, image2: tf.Tensor, factor) -> tf.Tensor:
    """PIL Image.blend: image1 + factor * (image2 - image1), float32, clipped, truncated.

    image1 may be anything that broadcasts against image2 (a gray [H, W, 1], a scalar).
    """
    a = _f32(image1)
    out = a + _f32(factor) * (_f32(image2) - a)
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def grayscale(image: tf.Tensor) -> tf.Tensor:
    """PIL convert("L") as [H, W, 1] float32: (19595 R + 38470 G + 7471 B + 0x8000) >> 16.

    The sum is an integer below 2^24, so float32 holds it exactly and the floor of its
    division by 2^16 equals PIL's shift.
    """
    x = _f32(image)
    lum = x[..., 0:1] * 19595.0 + x[..., 1:2] * 38470.0 + x[..., 2:3] * 7471.0 + 32768.0
    return tf.floor(lum * (1.0 / 65536.0))


# --- pixel ops ---------------------------------------------------------------------------

def invert(image: tf.Tensor) -> tf.Tensor:
    """PIL ImageOps.invert."""
    return 255 - _check_image(image)


def posterize(image: tf.Tensor, bits) -> tf.Tensor:
    """PIL ImageOps.posterize: keep the `bits` high bits of every channel.

    bits is clipped to [1, 8] (Pillow accepts 1..8). bits=0, which the reference's level
    mapping gives for levels below 2.5 (v0 uses level 2), keeps 1 bit: that is what the
    reference computed on the host CPU (TF clamps a uint8 shift by 8 to 7), rather than a
    black image.
    """
    image = _check_image(image)
    shift = 8 - tf.clip_by_value(tf.cast(bits, tf.int32), 1, 8)
    mask = tf.bitwise.bitwise_and(tf.bitwise.left_shift(255, shift), 255)
    return tf.bitwise.bitwise_and(image, tf.cast(mask, tf.uint8))


def solarize(image: tf.Tensor, threshold=128) -> tf.Tensor:
    """PIL ImageOps.solarize: invert every value >= threshold (threshold may be 256)."""
    image = _check_image(image)
    return tf.bitwise.bitwise_xor(image, (1 - _below(image, threshold)) * 255)


def solarize_add(image: tf.Tensor, addition, threshold=128) -> tf.Tensor:
    """Add `addition` to every value below threshold, clipped to [0, 255] (AutoAugment's op)."""
    image = _check_image(image)
    add = tf.cast(addition, tf.int32)
    up = tf.cast(tf.clip_by_value(add, 0, 255), tf.uint8)
    down = tf.cast(tf.clip_by_value(-add, 0, 255), tf.uint8)
    added = image + tf.minimum(255 - image, up)  # saturating uint8 add ...
    added = added - tf.minimum(added, down)  # ... and subtract
    return _select(_below(image, threshold), added, image)


def autocontrast(image: tf.Tensor) -> tf.Tensor:
    """PIL ImageOps.autocontrast (cutoff 0): stretch each channel's [min, max] to [0, 255].

    PIL's LUT entry is int(i * scale + offset) in Python floats; evaluating that same float64
    expression per pixel gives identical values without a table lookup.
    """
    image = _check_image(image)
    lo = tf.cast(tf.reduce_min(image, axis=[0, 1]), tf.float64)
    hi = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.float64)
    stretch = hi > lo
    scale = tf.where(stretch, 255.0 / tf.maximum(hi - lo, 1.0), 1.0)
    offset = tf.where(stretch, -lo * scale, 0.0)
    out = tf.floor(tf.cast(image, tf.float64) * scale + offset)
    return tf.cast(tf.clip_by_value(out, 0.0, 255.0), tf.uint8)


def equalize(image: tf.Tensor) -> tf.Tensor:
    """PIL ImageOps.equalize, per channel, with PIL's integer LUT.

    step = (pixels - count of the brightest value) // 255; lut[i] = (step // 2 + number of
    pixels below i) // step; identity when step is 0.
    """
    image = _check_image(image)
    index = _channel_index(image)
    hist = _channel_histograms(index)
    top = tf.cast(tf.reduce_max(image, axis=[0, 1]), tf.int32)
    top_count = tf.gather(hist, top, batch_dims=1)
    step = (tf.reduce_sum(hist, axis=1) - top_count) // 255
    below = tf.cumsum(hist, axis=1, exclusive=True)
    safe = tf.maximum(step, 1)[:, None]
    lut = (safe // 2 + below) // safe
    lut = tf.where(step[:, None] > 0, lut, tf.range(256)[None, :])
    return _apply_lut(index, lut)


def color(image: tf.Tensor, factor) -> tf.Tensor:
    """PIL ImageEnhance.Color: blend from the gray ("L") image to the image."""
    image = _check_image(image)
    return blend(grayscale(image), image, factor)


def contrast(image: tf.Tensor, factor) -> tf.Tensor:
    """PIL ImageEnhance.Contrast: blend from a flat image of the rounded mean gray level.

    (The TPU reference used sum(histogram) / 256, i.e. pixel count / 256, as the "mean"; that
    is a bug, fixed later in Model Garden. We follow PIL.)
    """
    image = _check_image(image)
    gray = tf.cast(grayscale(image), tf.float64)
    mean = tf.floor(tf.reduce_mean(gray) + 0.5)  # float64 like PIL's ImageStat
    return blend(mean, image, factor)


def brightness(image: tf.Tensor, factor) -> tf.Tensor:
    """PIL ImageEnhance.Brightness: blend from black."""
    image = _check_image(image)
    return blend(tf.zeros_like(image), image, factor)


def sharpness(image: tf.Tensor, factor) -> tf.Tensor:
    """PIL ImageEnhance.Sharpness: blend from ImageFilter.SMOOTH (3x3 [1 1 1; 1 5 1; 1 1 1]/13).

    PIL rounds the smoothed value and leaves the 1-pixel border unfiltered. With the integer
    kernel sum S (exact in float32), floor(S / 13 + 0.5) = floor((2 S + 13) / 26) is never
    within 1/26 of a tie, so float32 rounding cannot change it.
    """
    image = _check_image(image)
    kernel = tf.constant([[1, 1, 1], [1, 5, 1], [1, 1, 1]], tf.float32)[:, :, None, None]
    kernel = tf.tile(kernel, [1, 1, 3, 1])
    x = _f32(image)
    s = tf.nn.depthwise_conv2d(x[None], kernel, [1, 1, 1, 1], "SAME")[0]
    smooth = tf.floor((s + 6.5) * (1.0 / 13.0))
    h, w = tf.shape(image)[0], tf.shape(image)[1]
    rows, cols = tf.range(h), tf.range(w)
    inner = (((rows >= 1) & (rows <= h - 2))[:, None] & ((cols >= 1) & (cols <= w - 2))[None, :])
    degenerate = x + (smooth - x) * _f32(inner[..., None])
    return blend(degenerate, image, factor)


def cutout(image: tf.Tensor, pad_size, center, fill=GRAY) -> tf.Tensor:
    """Fill the (2 pad_size)^2 square [cy - p, cy + p) x [cx - p, cx + p), clipped, with fill.

    center is (cy, cx) in pixels; the policies draw it uniformly over the image.
    """
    image = _check_image(image)
    pad = tf.cast(pad_size, tf.int32)
    cy, cx = tf.cast(center[0], tf.int32), tf.cast(center[1], tf.int32)
    rows, cols = tf.range(tf.shape(image)[0]), tf.range(tf.shape(image)[1])
    in_rows = (rows >= cy - pad) & (rows < cy + pad)
    in_cols = (cols >= cx - pad) & (cols < cx + pad)
    box = (in_rows[:, None] & in_cols[None, :])[..., None]
    return _select(box, tf.cast(fill, tf.uint8), image)


# --- geometric ops -------------------------------------------------------------------------

def affine(image: tf.Tensor, matrix, fill=GRAY) -> tf.Tensor:
    """PIL Image.transform(size, AFFINE, matrix, NEAREST, fillcolor=fill) on the TF raw op.

    matrix = (a, b, c, d, e, f) maps output to input in PIL's continuous coordinates
    (pixel centres at i + 0.5). TF's op works on pixel indices and rounds to nearest, so the
    equivalent index-space offsets are c + (a + b) / 2 - 1/2 and f + (d + e) / 2 - 1/2.
    """
    image = _check_image(image)
    a, b, c, d, e, f = [tf.cast(v, tf.float64) for v in matrix]
    transform = tf.cast(tf.stack([a, b, c + 0.5 * (a + b) - 0.5,
                                  d, e, f + 0.5 * (d + e) - 0.5, 0.0, 0.0]), tf.float32)
    out = tf.raw_ops.ImageProjectiveTransformV3(
        images=image[None], transforms=transform[None], output_shape=tf.shape(image)[:2],
        fill_value=_f32(fill), interpolation="NEAREST", fill_mode="CONSTANT")[0]
    return tf.ensure_shape(out, image.shape)


def rotate(image: tf.Tensor, degrees, fill=GRAY) -> tf.Tensor:
    """PIL Image.rotate(degrees, NEAREST, fillcolor=fill): counter-clockwise about the centre.

    Like PIL, cos and sin are rounded to 15 decimals (float64), so multiples of 90 degrees
    map pixel centres exactly instead of 1e-8 off (which would shift whole rows).
    """
    image = _check_image(image)
    theta = tf.cast(degrees, tf.float64) * (math.pi / 180.0)
    cos = tf.round(tf.cos(theta) * 1e15) / 1e15
    sin = tf.round(tf.sin(theta) * 1e15) / 1e15
    cx = tf.cast(tf.shape(image)[1], tf.float64) / 2.0
    cy = tf.cast(tf.shape(image)[0], tf.float64) / 2.0
    return affine(image, (cos, -sin, cx - cos * cx + sin * cy,
                          sin, cos, cy - sin * cx - cos * cy), fill)


def shear_x(image: tf.Tensor, level, fill=GRAY) -> tf.Tensor:
    """PIL transform AFFINE (1, level, 0, 0, 1, 0): input x = x + level * y."""
    return affine(image, (1.0, level, 0.0, 0.0, 1.0, 0.0), fill)


def shear_y(image: tf.Tensor, level, fill=GRAY) -> tf.Tensor:
    """PIL transform AFFINE (1, 0, 0, level, 1, 0): input y = level * x + y."""
    return affine(image, (1.0, 0.0, 0.0, level, 1.0, 0.0), fill)


def translate_x(image: tf.Tensor, pixels, fill=GRAY) -> tf.Tensor:
    """PIL transform AFFINE (1, 0, pixels, 0, 1, 0): content moves left by `pixels`."""
    return affine(image, (1.0, 0.0, pixels, 0.0, 1.0, 0.0), fill)


def translate_y(image: tf.Tensor, pixels, fill=GRAY) -> tf.Tensor:
    """PIL transform AFFINE (1, 0, 0, 0, 1, pixels): content moves up by `pixels`."""
    return affine(image, (1.0, 0.0, 0.0, 0.0, 1.0, pixels), fill)
