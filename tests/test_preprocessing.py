"""Reference preprocessing: crop windows, resize flavours, non-JPEG inputs, eval == tensor eval."""
import io

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from skimage import data

from efficientnet_tf.data import preprocessing as P


def _encode(array, fmt, **kw):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, fmt, **kw)
    return buf.getvalue()


@pytest.fixture(scope="module")
def chelsea():  # real photo, 300 x 451 x 3
    return data.chelsea()


@pytest.fixture(scope="module")
def chelsea_jpeg(chelsea):
    return _encode(chelsea, "JPEG", quality=95)


def test_bicubic_tf1_is_compat_v1_resize_bicubic_and_differs_from_tf2(chelsea):
    image = tf.constant(chelsea[:120, :90])
    ours = P.resize(image, 64, "bicubic_tf1")
    v1 = tf.clip_by_value(tf.compat.v1.image.resize_bicubic(image[None], [64, 64])[0], 0, 255)
    np.testing.assert_allclose(ours.numpy(), v1.numpy(), atol=1e-4)
    tf2 = P.resize(image, 64, "bicubic")
    assert float(tf.reduce_mean(tf.abs(ours - tf2))) > 1.0  # half-pixel centers shift the grid
    assert ours.dtype == tf.float32 and ours.shape == (64, 64, 3)
    with pytest.raises(ValueError, match="resize_method"):
        P.resize(image, 64, "lanczos")


def test_bicubic_tf1_works_inside_tf_function(chelsea):
    f = tf.function(lambda x: P.resize(x, 32, "bicubic_tf1"))
    np.testing.assert_allclose(f(tf.constant(chelsea)).numpy(),
                               P.resize(tf.constant(chelsea), 32).numpy(), atol=1e-4)


def test_train_crop_statistics_in_reference_ranges():
    h, w = 350, 400
    f = tf.function(lambda s: P.distorted_crop_window([h, w], seed=s))
    windows = np.array([f(tf.constant([i, 7])).numpy() for i in range(400)])
    oy, ox, ch, cw = windows.T
    assert (oy >= 0).all() and (ox >= 0).all() and (oy + ch <= h).all() and (ox + cw <= w).all()
    sampled = ~((ch == h) & (cw == w))  # whole image = all 10 attempts failed
    assert sampled.mean() > 0.9
    area = (ch * cw / (h * w))[sampled]
    aspect = (cw / ch)[sampled]
    # Sides are rounded to whole pixels, so allow one pixel of slack.
    assert area.min() >= 0.08 - 2 / min(h, w) and area.max() <= 1.0
    assert aspect.min() >= 0.75 * (1 - 1 / ch[sampled].min()) - 1e-6
    assert aspect.max() <= 4 / 3 * (1 + 1 / ch[sampled].min()) + 1e-6
    # Spread over the range, not stuck at one value.
    assert area.min() < 0.2 and area.max() > 0.8 and aspect.min() < 0.85 and aspect.max() > 1.2


def test_train_falls_back_to_eval_center_crop_when_no_box_fits():
    # A 20 x 400 strip: a 3/4..4/3 box holds at most 20 x 26 px = 6.5% < 8% of it.
    for i in range(5):
        seed = tf.constant([i, 1])
        assert P.distorted_crop_window([20, 400], seed=seed).numpy().tolist() == [0, 0, 20, 400]
        np.testing.assert_array_equal(P.train_crop_window([20, 400], 224, seed=seed),
                                      P.center_crop_window([20, 400], 224))


def test_center_crop_window_and_fraction_padding():
    # side = int(224 / 256 * 200) = 175; offsets ((h - side) + 1) // 2
    assert P.center_crop_window([300, 200], 224, 32).numpy().tolist() == [63, 13, 175, 175]
    assert P.crop_padding_from_fraction(224, 0.875) == 32
    assert P.crop_padding_from_fraction(600, 0.875) == 86
    assert P.center_crop_window([28, 28], 28, 0).numpy().tolist() == [0, 0, 28, 28]


def _close(a, b, max_diff=4.0, mean_diff=0.1):
    d = np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32))
    return d.max() <= max_diff and d.mean() <= mean_diff


def test_decode_and_crop_jpeg_equals_decode_then_crop_except_the_right_edge(chelsea_jpeg):
    # libjpeg upsamples chroma at the crop's right edge from the crop alone, so when the edge
    # splits a 2-pixel chroma pair the LAST column differs by a few levels. Everything else is
    # bit-identical.
    full = tf.io.decode_jpeg(chelsea_jpeg, channels=3).numpy().astype(int)
    worst = 0
    for ox in range(0, 12):
        crop = tf.io.decode_and_crop_jpeg(chelsea_jpeg, [5, ox, 100, 100], channels=3).numpy()
        ref = full[5:105, ox:ox + 100]
        np.testing.assert_array_equal(crop[:, :-1], ref[:, :-1])
        worst = max(worst, np.abs(crop[:, -1] - ref[:, -1]).max())
    assert 0 < worst <= 6


def test_train_preprocessing_is_the_sampled_crop_resized_and_maybe_flipped(chelsea_jpeg):
    full = tf.io.decode_jpeg(chelsea_jpeg, channels=3)
    flips = set()
    for i in range(6):
        seed = tf.constant([i, 42])
        out = P.preprocess_for_train(chelsea_jpeg, 64, seed=seed)
        crop_seed = tf.random.experimental.stateless_split(seed, 2)[0]
        win = P.train_crop_window(tf.shape(full)[:2], 64, crop_seed).numpy()
        expect = P.resize(tf.io.decode_and_crop_jpeg(chelsea_jpeg, win, channels=3), 64)
        sliced = P.resize(full[win[0]:win[0] + win[2], win[1]:win[1] + win[3]], 64)
        assert _close(expect, sliced)  # see the right-edge test above
        if np.allclose(out, expect, atol=1e-3):
            flips.add(False)
        else:
            np.testing.assert_allclose(out, expect[:, ::-1], atol=1e-3)
            flips.add(True)
        assert out.shape == (64, 64, 3) and out.dtype == tf.float32
        assert float(tf.reduce_min(out)) >= 0 and float(tf.reduce_max(out)) <= 255
    assert flips == {True, False}


def test_eval_is_deterministic_and_centered(chelsea):
    png = _encode(chelsea, "PNG")  # lossless: compare with exact numpy slicing
    a = P.preprocess_for_eval(png, 64)
    b = tf.function(lambda x: P.preprocess_for_eval(x, 64))(tf.constant(png))
    np.testing.assert_allclose(a, b, atol=1e-4)
    side = int(64 / 96 * 300)  # 200
    oy, ox = (300 - side + 1) // 2, (451 - side + 1) // 2
    assert (oy, ox) == (50, 126)
    expect = P.resize(tf.constant(chelsea[oy:oy + side, ox:ox + side]), 64)
    np.testing.assert_allclose(a, expect, atol=1e-3)
    # centered: margins left/right and top/bottom differ by at most one pixel
    assert abs((451 - side - ox) - ox) <= 1 and abs((300 - side - oy) - oy) <= 1


@pytest.mark.parametrize("gray,size", [(False, 48), (False, 64), (False, 97), (True, 48)])
def test_image_tensor_eval_matches_bytes_eval_for_jpeg(chelsea, gray, size):
    image = data.camera() if gray else chelsea
    jpeg = _encode(image, "JPEG", quality=90)
    pad = P.crop_padding_from_fraction(size)
    from_bytes = P.preprocess_for_eval(jpeg, size, crop_padding=pad).numpy()
    decoded = tf.io.decode_jpeg(jpeg)  # 1 channel for the grayscale file
    assert decoded.shape[-1] == (1 if gray else 3)
    from_tensor = P.preprocess_image_tensor_for_eval(decoded, size, crop_padding=pad).numpy()
    if gray:  # no chroma: bit-identical
        np.testing.assert_array_equal(from_bytes, from_tensor)
    else:  # equal up to the crop's right-edge chroma column (see test above)
        assert _close(from_bytes, from_tensor, max_diff=4.0, mean_diff=0.05)


@pytest.mark.parametrize("fmt", ["PNG", "GIF", "BMP", "PNG-gray", "PNG-rgba", "JPEG-cmyk"])
def test_non_jpeg_inputs_give_rgb(chelsea, fmt):
    if fmt == "PNG-gray":
        raw, ref = _encode(data.camera(), "PNG"), np.repeat(data.camera()[..., None], 3, -1)
    elif fmt == "PNG-rgba":
        rgba = np.concatenate([chelsea, np.full(chelsea.shape[:2] + (1,), 200, np.uint8)], -1)
        raw, ref = _encode(rgba, "PNG"), chelsea
    elif fmt == "JPEG-cmyk":
        buf = io.BytesIO()
        Image.fromarray(chelsea).convert("CMYK").save(buf, "JPEG", quality=95)
        raw, ref = buf.getvalue(), chelsea
    else:
        raw, ref = _encode(chelsea, fmt), chelsea
    out = P.preprocess_for_eval(raw, 40)
    train = P.preprocess_for_train(raw, 40)
    assert out.shape == (40, 40, 3) and train.shape == (40, 40, 3)
    expect = P.preprocess_image_tensor_for_eval(tf.constant(ref), 40)
    tolerance = 8.0 if fmt == "GIF" else 3.0  # GIF: 256-colour palette
    assert float(tf.reduce_mean(tf.abs(out - expect))) < tolerance


def test_train_variant_on_decoded_tensor(chelsea):
    out = P.preprocess_image_tensor_for_train(tf.constant(data.camera()[..., None]), 32)
    assert out.shape == (32, 32, 3)
    np.testing.assert_array_equal(out[..., 0], out[..., 2])  # gray stays gray


@pytest.mark.parametrize("name", ["randaugment", "autoaugment"])
def test_augment_is_applied_on_uint8_when_named(chelsea_jpeg, name):
    augment = pytest.importorskip("efficientnet_tf.data.augment")
    assert hasattr(augment, "distort")
    plain = [P.preprocess_for_train(chelsea_jpeg, 48, seed=tf.constant([i, 4])) for i in range(4)]
    outs = [P.preprocess_for_train(chelsea_jpeg, 48, name, 2, 10.0, seed=tf.constant([i, 4]))
            for i in range(4)]
    for out in outs:
        assert out.shape == (48, 48, 3) and out.dtype == tf.float32
        np.testing.assert_array_equal(out.numpy(), np.round(out.numpy()))  # came back from uint8
    assert any(float(tf.reduce_mean(tf.abs(o - p))) > 1.0 for o, p in zip(outs, plain))
    # seeded: the whole train path (crop, flip, augment) is reproducible
    again = P.preprocess_for_train(chelsea_jpeg, 48, name, 2, 10.0, seed=tf.constant([0, 4]))
    np.testing.assert_array_equal(again.numpy(), outs[0].numpy())


def test_min_crop_area_setting_raises_the_smallest_crop():
    h, w = 350, 400
    f = tf.function(lambda s: P.train_crop_window([h, w], 224, seed=s, min_area=0.5))
    windows = np.array([f(tf.constant([i, 9])).numpy() for i in range(150)])
    area = windows[:, 2] * windows[:, 3] / (h * w)
    assert area.min() >= 0.5 - 2 / min(h, w) and area.max() <= 1.0
    default = np.array([P.train_crop_window([h, w], 224, seed=tf.constant([i, 9])).numpy()
                        for i in range(150)])
    assert (default[:, 2] * default[:, 3] / (h * w)).min() < 0.3


def test_random_flip_off_keeps_the_orientation_and_the_crops():
    # bright right third: a flip moves the weight to the left half
    image = np.zeros((28, 28, 1), np.uint8)
    image[:, 19:] = 255
    jpeg = _encode(image[..., 0], "PNG")

    def right_heavy(out):
        return float(tf.reduce_mean(out[:, 14:])) > float(tf.reduce_mean(out[:, :14]))

    seeds = [tf.constant([i, 7]) for i in range(24)]
    flipped = [P.preprocess_for_train(jpeg, 28, seed=s, min_crop_area=0.85) for s in seeds]
    kept = [P.preprocess_for_train(jpeg, 28, seed=s, min_crop_area=0.85, random_flip=False)
            for s in seeds]
    assert 0 < sum(map(right_heavy, flipped)) < len(seeds)  # about half are mirrored
    assert all(map(right_heavy, kept))
    # same seeds -> same crops: each output is the flipped one or its mirror image
    for a, b in zip(flipped, kept):
        assert (np.array_equal(a.numpy(), b.numpy())
                or np.array_equal(a.numpy()[:, ::-1], b.numpy()))
    tensor = [P.preprocess_image_tensor_for_train(tf.constant(image), 28, seed=s,
                                                  min_crop_area=0.85, random_flip=False)
              for s in seeds]
    assert all(map(right_heavy, tensor))


def test_train_fallback_crop_is_the_configured_eval_crop():
    # A 28 px image with crops of >= 85%: about 1 in 25 draws falls back to the eval crop. With
    # the reference's fixed crop_padding 32 that is the central 13 px; with 0 it is the image.
    def windows(**kw):
        f = tf.function(lambda s: P.train_crop_window([28, 28], 28, seed=s, min_area=0.85, **kw))
        return np.array([f(tf.constant([i, 5])).numpy() for i in range(400)])

    assert (windows()[:, 2:] == 13).all(axis=1).any()
    padded0 = windows(crop_padding=0)
    assert padded0[:, 2:].min() >= 24  # sqrt(0.85) * 28 = 25.8, less rounding and aspect
    assert (padded0 == [0, 0, 28, 28]).all(axis=1).any()
