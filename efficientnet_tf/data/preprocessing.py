"""Image preprocessing as in the TPU reference (docs/reference.md "Input pipeline").

Train: sample_distorted_bounding_box (area 0.08..1, aspect 3/4..4/3, min_object_covered 0.1,
10 attempts) -> decode_and_crop_jpeg (only the crop is decoded) -> resize -> random flip ->
optional AutoAugment/RandAugment on uint8. When the sampled box is the whole image (all attempts
failed) the reference uses the eval center crop instead; so do we.
Eval: center crop of side int(size / (size + crop_padding) * min(h, w)) -> resize.

Outputs are float32 [size, size, 3] with pixels in [0, 255] (normalization lives in the model).
JPEG bytes take the decode_and_crop_jpeg path; other encodings (PNG, GIF, BMP) are decoded
whole and then cropped, with the same crop windows. Output always has 3 channels.
"""
from __future__ import annotations

from typing import Callable

import tensorflow as tf

from efficientnet_tf.constants import DEFAULT_CROP_PADDING, RESIZE_METHODS  # noqa: F401  (re-exported)


def crop_padding_from_fraction(image_size: int, fraction: float = 0.875) -> int:
    """crop_padding such that the center crop keeps `fraction` of the short side (32 at 224 px)."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"crop fraction must be in (0, 1], got {fraction}")
    return int(round(image_size * (1.0 / fraction - 1.0)))


def resize(image: tf.Tensor, image_size: int, method: str = "bicubic_tf1") -> tf.Tensor:
    """Resizes [h, w, 3] to float32 [size, size, 3], clipped to [0, 255].

    "bicubic_tf1" is TF1's resize_bicubic (no half-pixel centers), which the published
    checkpoints saw; "bicubic" is TF2's tf.image.resize (half-pixel centers).
    """
    batch = image[tf.newaxis]
    if method == "bicubic_tf1":
        out = tf.raw_ops.ResizeBicubic(images=batch, size=[image_size, image_size],
                                       align_corners=False, half_pixel_centers=False)
    elif method in ("bicubic", "bilinear"):
        out = tf.image.resize(batch, [image_size, image_size], method=method)
    else:
        raise ValueError(f"unknown resize_method {method!r}; use one of {RESIZE_METHODS}")
    out = tf.clip_by_value(tf.cast(out[0], tf.float32), 0.0, 255.0)
    out.set_shape([image_size, image_size, 3])
    return out


def center_crop_window(shape_hw: tf.Tensor, image_size: int,
                       crop_padding: int = DEFAULT_CROP_PADDING) -> tf.Tensor:
    """[offset_y, offset_x, side, side] int32 of the reference's eval center crop."""
    shape_hw = tf.cast(shape_hw, tf.int32)
    h, w = shape_hw[0], shape_hw[1]
    ratio = image_size / (image_size + crop_padding)
    side = tf.cast(ratio * tf.cast(tf.minimum(h, w), tf.float32), tf.int32)
    side = tf.maximum(side, 1)  # only matters for images a few pixels wide
    return tf.stack([(h - side + 1) // 2, (w - side + 1) // 2, side, side])


def distorted_crop_window(shape_hw: tf.Tensor, seed: tf.Tensor | None = None,
                          min_object_covered: float = 0.1,
                          aspect_ratio_range: tuple[float, float] = (3.0 / 4.0, 4.0 / 3.0),
                          area_range: tuple[float, float] = (0.08, 1.0),
                          max_attempts: int = 10) -> tf.Tensor:
    """[offset_y, offset_x, height, width] int32 from sample_distorted_bounding_box.

    With `seed` (int32/int64 [2]) the stateless op is used, so the window is reproducible.
    After max_attempts failures the op returns the whole image.
    """
    shape_hw = tf.cast(shape_hw, tf.int32)
    image_shape = tf.concat([shape_hw[:2], [3]], axis=0)
    bbox = tf.constant([0.0, 0.0, 1.0, 1.0], dtype=tf.float32, shape=[1, 1, 4])
    kwargs = dict(bounding_boxes=bbox, min_object_covered=min_object_covered,
                  aspect_ratio_range=aspect_ratio_range, area_range=area_range,
                  max_attempts=max_attempts, use_image_if_no_bounding_boxes=True)
    if seed is None:
        begin, size, _ = tf.image.sample_distorted_bounding_box(image_shape, **kwargs)
    else:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            image_shape, seed=seed, **kwargs)
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def train_crop_window(shape_hw: tf.Tensor, image_size: int,
                      seed: tf.Tensor | None = None, min_area: float = 0.08,
                      crop_padding: int = DEFAULT_CROP_PADDING) -> tf.Tensor:
    """Random crop window; the eval center crop when the sampled box is the whole image.

    The fallback is the eval crop with the same `crop_padding` as evaluation (the reference: 32
    for both). With a fixed 32, a 28 px image would fall back to its central 13 px.
    (The reference compares all three dims of the crop with extract_jpeg_shape, so for a
    grayscale JPEG (1 vs 3 channels) its fallback never fires; we compare height and width.)
    """
    shape_hw = tf.cast(shape_hw, tf.int32)[:2]
    window = distorted_crop_window(shape_hw, seed=seed, area_range=(min_area, 1.0))
    whole = tf.reduce_all(tf.equal(window[2:], shape_hw))
    return tf.where(whole, center_crop_window(shape_hw, image_size, crop_padding), window)


def _to_rgb(image: tf.Tensor) -> tf.Tensor:
    """[h, w, 1|3|4] -> [h, w, 3] (gray is repeated, alpha dropped)."""
    channels = image.shape[-1]
    if channels == 3:
        return image
    if channels == 1:
        return tf.image.grayscale_to_rgb(image)
    if channels == 4:
        return image[..., :3]
    c = tf.shape(image)[-1]
    image = tf.cond(tf.equal(c, 1), lambda: tf.tile(image, [1, 1, 3]), lambda: image[..., :3])
    image.set_shape([None, None, 3])
    return image


def _crop(image: tf.Tensor, window: tf.Tensor) -> tf.Tensor:
    return tf.slice(image, tf.stack([window[0], window[1], 0]), tf.stack([window[2], window[3], 3]))


def decode_and_crop(image_bytes: tf.Tensor,
                    window_fn: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """Decodes only the window window_fn(shape_hw) of an encoded image: uint8 [h', w', 3].

    JPEG: extract_jpeg_shape + decode_and_crop_jpeg. Other formats: decode_image, then slice.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)

    def jpeg():
        window = window_fn(tf.io.extract_jpeg_shape(image_bytes)[:2])
        return tf.io.decode_and_crop_jpeg(image_bytes, window, channels=3)

    def other():
        image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
        image.set_shape([None, None, 3])
        return _crop(image, window_fn(tf.shape(image)[:2]))

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def _split_seed(seed, n):
    if seed is None:
        return [None] * n
    return tf.unstack(tf.random.experimental.stateless_split(seed, n))


def _flip_and_augment(image, augment_name, randaug_num_layers, randaug_magnitude, seed,
                      random_flip=True):
    flip_seed, aug_seed = _split_seed(seed, 2)
    if random_flip:
        image = (tf.image.random_flip_left_right(image) if seed is None
                 else tf.image.stateless_random_flip_left_right(image, seed=flip_seed))
    if augment_name:
        from efficientnet_tf.data import augment  # lazy: optional until it is needed
        # The reference truncates (tf.cast) to uint8 before augmenting.
        image = tf.cast(tf.clip_by_value(image, 0.0, 255.0), tf.uint8)
        kwargs = {} if aug_seed is None else {"seed": aug_seed}
        image = augment.distort(image, augment_name, randaug_num_layers, randaug_magnitude, **kwargs)
        image = tf.cast(image, tf.float32)
    return image


def preprocess_for_train(image_bytes: tf.Tensor, image_size: int, augment_name: str | None = None,
                         randaug_num_layers: int = 2, randaug_magnitude: float = 10.0,
                         resize_method: str = "bicubic_tf1",
                         seed: tf.Tensor | None = None, min_crop_area: float = 0.08,
                         random_flip: bool = True,
                         crop_padding: int = DEFAULT_CROP_PADDING) -> tf.Tensor:
    """Encoded image -> float32 [size, size, 3] in [0, 255], as the reference's train path.

    `seed` (optional int [2]) makes crop, flip and augmentation stateless (reproducible).
    min_crop_area: the smallest crop as a fraction of the image (the reference: 0.08; small,
    centred images such as Fashion-MNIST want much larger crops).
    random_flip: mirror half the images left-right (the reference does); turn it off for data
    whose orientation carries meaning (Fashion-MNIST footwear always points one way).
    crop_padding: the eval center crop's, used when no random crop is found (as the reference).
    """
    crop_seed, rest_seed = _split_seed(seed, 2)
    image = decode_and_crop(image_bytes, lambda shape: train_crop_window(
        shape, image_size, crop_seed, min_crop_area, crop_padding))
    image = resize(image, image_size, resize_method)
    image = _flip_and_augment(image, augment_name, randaug_num_layers, randaug_magnitude, rest_seed,
                              random_flip)
    image.set_shape([image_size, image_size, 3])
    return image


def preprocess_image_tensor_for_train(image: tf.Tensor, image_size: int,
                                      augment_name: str | None = None,
                                      randaug_num_layers: int = 2,
                                      randaug_magnitude: float = 10.0,
                                      resize_method: str = "bicubic_tf1",
                                      seed: tf.Tensor | None = None,
                                      min_crop_area: float = 0.08,
                                      random_flip: bool = True,
                                      crop_padding: int = DEFAULT_CROP_PADDING) -> tf.Tensor:
    """preprocess_for_train on an already decoded image [h, w, 1|3|4]."""
    crop_seed, rest_seed = _split_seed(seed, 2)
    image = _to_rgb(tf.convert_to_tensor(image))
    image = _crop(image, train_crop_window(tf.shape(image)[:2], image_size, crop_seed,
                                           min_crop_area, crop_padding))
    image = resize(image, image_size, resize_method)
    image = _flip_and_augment(image, augment_name, randaug_num_layers, randaug_magnitude, rest_seed,
                              random_flip)
    image.set_shape([image_size, image_size, 3])
    return image


def preprocess_for_eval(image_bytes: tf.Tensor, image_size: int,
                        crop_padding: int = DEFAULT_CROP_PADDING,
                        resize_method: str = "bicubic_tf1") -> tf.Tensor:
    """Encoded image -> float32 [size, size, 3] in [0, 255]: center crop, resize."""
    image = decode_and_crop(image_bytes,
                            lambda shape: center_crop_window(shape, image_size, crop_padding))
    return resize(image, image_size, resize_method)


def preprocess_image_tensor_for_eval(image: tf.Tensor, image_size: int,
                                     crop_padding: int = DEFAULT_CROP_PADDING,
                                     resize_method: str = "bicubic_tf1") -> tf.Tensor:
    """preprocess_for_eval on an already decoded image (uint8 [h, w, 1|3|4])."""
    image = tf.convert_to_tensor(image)
    if image.shape.rank is not None and image.shape.rank != 3:
        raise ValueError(f"expected one image [height, width, channels], got shape {image.shape}")
    image = _to_rgb(image)
    image = _crop(image, center_crop_window(tf.shape(image)[:2], image_size, crop_padding))
    return resize(image, image_size, resize_method)
