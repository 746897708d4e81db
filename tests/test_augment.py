"""AutoAugment / RandAugment ops against their PIL definitions, on real photos.

The policies were defined with PIL, so each TF op is compared with PIL (Pillow 13) on
scikit-image's astronaut, coffee and chelsea, resized to a short side of 128 px (widths 129
and 193: odd and even sizes exercise the centre convention).

Tolerances and where TF and PIL legitimately differ:
- Exact (max abs diff 0): invert, posterize, solarize, solarize_add, autocontrast, equalize,
  color, contrast, brightness, sharpness, translate, shear. The ops copy PIL's arithmetic:
  equalize's integer LUT, autocontrast's int(i * scale + offset) in float64 like PIL's Python,
  PIL's fixed-point "L" grayscale, float32 blend with truncation, the rounded mean gray level
  of Contrast, SMOOTH's rounding and unfiltered 1-px border (integer sums, exact in float32),
  and PIL's pixel-centre convention for affine maps (input = A (x + 1/2) + c, floor).
- Rotate: <= 1% of pixels differ, mean abs diff <= 1. Both map pixel centres through the same
  matrix, but PIL steps through the row incrementally (float / 16.16 fixed point) and floors,
  while TF's kernel evaluates each pixel in float32 and rounds half away from zero. They pick
  different neighbours only where a sample lands (almost) exactly between two pixels:
  ~0.03% of pixels at 9 or 24 degrees; at exactly 90 degrees on a non-square image one
  border line sits exactly at -0.5, which PIL keeps and TF fills (~0.8%).
Where the TPU reference itself departs from PIL and we follow PIL instead: Contrast's mean
(the reference used pixel_count / 256), Sharpness (the reference truncates the smoothed value
instead of rounding), shear's half-pixel offset (the reference shears about pixel index 0,
PIL about the first pixel's corner) and Color's gray (tf.image.rgb_to_grayscale weights vs PIL's fixed point). Posterize
with 0 bits, which Pillow refuses, keeps 1 bit like the reference did on CPU.

Then the policies: the level mapping, the random choices, and the op registry (OPS) that
RandAugment's op list and AutoAugment's name lookup come from.
"""

import dataclasses
import itertools
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import tensorflow as tf  # noqa: E402
from PIL import Image, ImageEnhance, ImageOps  # noqa: E402
from skimage import data  # noqa: E402

from efficientnet_tf import constants  # noqa: E402
from efficientnet_tf.data import augment  # noqa: E402
from efficientnet_tf.data.augment import ops  # noqa: E402

GRAY3 = (128, 128, 128)
PHOTOS = ("astronaut", "coffee", "chelsea")


@pytest.fixture(scope="module")
def photos() -> dict[str, np.ndarray]:
    out = {}
    for name in PHOTOS:
        im = Image.fromarray(getattr(data, name)())
        w, h = im.size
        s = 128 / min(w, h)
        out[name] = np.asarray(im.resize((round(w * s) | 1, round(h * s)), Image.BILINEAR))
    return out


def _diff(tf_out, pil_out) -> tuple[float, float, int]:
    """(fraction of differing values, mean abs diff, max abs diff)."""
    got = np.asarray(tf_out).astype(np.int32)
    want = np.asarray(pil_out).astype(np.int32)
    assert got.shape == want.shape
    d = np.abs(got - want)
    return float(np.mean(d > 0)), float(d.mean()), int(d.max())


def _assert_exact(tf_out, pil_out, what):
    frac, mad, mx = _diff(tf_out, pil_out)
    assert mx == 0, f"{what}: {frac:.4%} of values differ (mean {mad:.3f}, max {mx})"


def _affine_pil(img: Image.Image, matrix) -> np.ndarray:
    return np.asarray(img.transform(img.size, Image.AFFINE, matrix, Image.NEAREST,
                                    fillcolor=GRAY3))


# --- per-op comparisons with PIL ------------------------------------------------------------

@pytest.mark.parametrize("photo", PHOTOS)
def test_lut_ops_match_pil_exactly(photos, photo):
    a = photos[photo]
    p = Image.fromarray(a)
    _assert_exact(ops.invert(a), ImageOps.invert(p), "invert")
    _assert_exact(ops.autocontrast(a), ImageOps.autocontrast(p), "autocontrast")
    _assert_exact(ops.equalize(a), ImageOps.equalize(p), "equalize")
    for bits in (1, 2, 4, 8):
        _assert_exact(ops.posterize(a, bits), ImageOps.posterize(p, bits), f"posterize {bits}")
    for threshold in (0, 76, 128, 204, 256):  # levels 0, 3, 5, 8, 10 of the reference
        _assert_exact(ops.solarize(a, threshold), ImageOps.solarize(p, threshold),
                      f"solarize {threshold}")
    for add in (33, 110, -40):
        lut = [min(255, max(0, i + add)) if i < 128 else i for i in range(256)]
        _assert_exact(ops.solarize_add(a, add), p.point(lut * 3), f"solarize_add {add}")


def test_autocontrast_and_equalize_edge_cases_match_pil():
    """Flat channels, two-valued channels and random narrow ranges (PIL's special cases)."""
    rng = np.random.default_rng(3)
    cases = [np.full((7, 9, 3), 77, np.uint8), np.zeros((7, 9, 3), np.uint8)]
    two = np.full((7, 9, 3), 10, np.uint8)
    two[::2, :, 0] = 200
    two[:, :, 1] = 255  # one flat channel next to a two-valued one
    cases.append(two)
    for _ in range(30):
        lo, hi = sorted(rng.integers(0, 256, 2))
        cases.append(rng.integers(lo, hi + 1, (9, 11, 3), dtype=np.uint8))
    for a in cases:
        p = Image.fromarray(a)
        _assert_exact(ops.autocontrast(a), ImageOps.autocontrast(p), "autocontrast")
        _assert_exact(ops.equalize(a), ImageOps.equalize(p), "equalize")


def test_posterize_zero_bits_keeps_one_bit(photos):
    # Pillow >= 10 refuses bits=0. The reference's TF op on CPU shifted a uint8 by 8, which TF
    # clamps to 7, keeping the top bit; we do the same rather than return a black image.
    a = photos["coffee"]
    ref = tf.bitwise.left_shift(tf.bitwise.right_shift(tf.constant(a), tf.constant(8, tf.uint8)),
                                tf.constant(8, tf.uint8))
    _assert_exact(ops.posterize(a, 0), ref, "posterize 0 vs the reference's TF CPU op")
    _assert_exact(ops.posterize(a, 0), ImageOps.posterize(Image.fromarray(a), 1), "posterize 0")


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("factor", [0.1, 0.46, 1.0, 1.72, 3.7])  # 3.7 = level 20 (RandAugment)
def test_enhance_ops_match_pil_exactly(photos, photo, factor):
    a = photos[photo]
    p = Image.fromarray(a)
    for op, enhancer in ((ops.color, ImageEnhance.Color),
                         (ops.contrast, ImageEnhance.Contrast),
                         (ops.brightness, ImageEnhance.Brightness),
                         (ops.sharpness, ImageEnhance.Sharpness)):
        _assert_exact(op(a, factor), enhancer(p).enhance(factor), f"{op.__name__} {factor}")


@pytest.mark.parametrize("photo", PHOTOS)
def test_translate_and_shear_match_pil_exactly(photos, photo):
    a = photos[photo]
    p = Image.fromarray(a)
    for px in (40, -100, 25.0):
        _assert_exact(ops.translate_x(a, px), _affine_pil(p, (1, 0, px, 0, 1, 0)), "tx")
        _assert_exact(ops.translate_y(a, px), _affine_pil(p, (1, 0, 0, 0, 1, px)), "ty")
    for level in (0.09, -0.3, 0.21):
        _assert_exact(ops.shear_x(a, level), _affine_pil(p, (1, level, 0, 0, 1, 0)), "shx")
        _assert_exact(ops.shear_y(a, level), _affine_pil(p, (1, 0, 0, level, 1, 0)), "shy")


@pytest.mark.parametrize("photo", PHOTOS)
@pytest.mark.parametrize("degrees", [9.0, -24.0, 30.0, 90.0])
def test_rotate_matches_pil(photos, photo, degrees):
    a = photos[photo]
    want = Image.fromarray(a).rotate(degrees, Image.NEAREST, fillcolor=GRAY3)
    frac, mad, _ = _diff(ops.rotate(a, degrees), want)
    assert frac <= 0.01 and mad <= 1.0, (frac, mad)
    # The tolerance is tight enough to catch a wrong direction or a half-pixel centre shift.
    frac_wrong, _, _ = _diff(ops.rotate(a, -degrees), want)
    assert frac_wrong > 0.2
    shifted = ops.translate_x(ops.rotate(a, degrees), 1)
    assert _diff(shifted, want)[0] > 0.05


# --- fill, cutout -----------------------------------------------------------------------------

def test_geometric_ops_fill_exactly_gray_128():
    white = np.full((64, 96, 3), 255, np.uint8)
    rot = ops.rotate(white, 45.0).numpy()
    assert set(np.unique(rot)) == {128, 255}
    assert (rot[0, 0] == 128).all() and (rot[-1, -1] == 128).all() and (rot[32, 48] == 255).all()
    tx = ops.translate_x(white, 30).numpy()
    assert (tx[:, 66:] == 128).all() and (tx[:, :66] == 255).all()
    ty = ops.translate_y(white, -20).numpy()
    assert (ty[:20] == 128).all() and (ty[20:] == 255).all()
    sh = ops.shear_x(white, 0.3).numpy()
    assert set(np.unique(sh)) == {128, 255} and (sh[-1, -1] == 128).all()
    # fill is configurable, and never a reflection of the image
    assert (ops.translate_y(white, 10, fill=0).numpy()[-10:] == 0).all()


def test_cutout_fills_clipped_square():
    img = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    img[img == 128] = 127
    out = ops.cutout(img, 8, (10, 20)).numpy()
    box = np.zeros((40, 50), bool)
    box[2:18, 12:28] = True
    assert (out[box] == 128).all() and (out[~box] == img[~box]).all()
    corner = ops.cutout(img, 8, (0, 0)).numpy()
    assert (corner[:8, :8] == 128).all() and (corner[8:] == img[8:]).all()


# --- policies -----------------------------------------------------------------------------------

def test_level_to_arg_follows_reference():
    rng = augment.Rng(seed=0)

    def arg(name, level, **kw):
        return augment.level_to_arg(name, level, rng, **kw)[0].numpy()

    assert arg("Posterize", 6) == 2 and arg("Posterize", 2) == 0
    assert arg("Solarize", 3) == 76 and arg("Solarize", 10) == 256
    assert arg("SolarizeAdd", 3) == 33 and arg("SolarizeAdd", 7) == int(7 / 10 * 110)
    assert arg("Color", 9) == pytest.approx(1.72)
    assert arg("Cutout", 10, cutout_const=40) == 40
    assert augment.level_to_arg("Equalize", 5, rng) == ()
    for name, level, kw, size in (("Rotate", 10, {}, 30.0), ("ShearX", 9, {}, 0.27),
                                  ("TranslateY", 9, {"translate_const": 250}, 225.0)):
        values = [float(augment.level_to_arg(name, level, augment.Rng(seed=s), **kw)[0])
                  for s in range(40)]
        assert np.allclose(np.abs(values), size)
        assert 8 <= sum(v < 0 for v in values) <= 32  # negated about half the time
    with pytest.raises(ValueError, match="unknown augmentation op"):
        augment.level_to_arg("Blur", 3, rng)


def test_policy_tables():
    assert len(augment.POLICY_V0) == 25
    assert all(len(sub) == 2 for sub in augment.POLICY_V0)
    names = {name for sub in augment.POLICY_V0 for name, _, _ in sub}
    assert names <= set(augment.RANDAUGMENT_OPS)
    assert len(augment.RANDAUGMENT_OPS) == 16


@pytest.mark.parametrize("name", augment.RANDAUGMENT_OPS)
def test_every_op_runs_in_graph_mode(name):
    fn = tf.function(lambda x: augment.apply_op(x, name, 10.0, augment.Rng(seed=3)),
                     input_signature=[tf.TensorSpec([None, None, 3], tf.uint8)])
    img = np.random.default_rng(1).integers(0, 256, (17, 23, 3), dtype=np.uint8)
    out = fn(img)
    assert out.dtype == tf.uint8 and out.shape == img.shape


@pytest.mark.parametrize("augment_name", augment.AUGMENT_NAMES)
def test_distort_under_tf_data_map(photos, augment_name):
    sizes = [(128, 129), (77, 193), (128, 60)]
    images = [photos[n][:h, :w] for n, (h, w) in zip(PHOTOS, sizes)]
    # Every image three times: seeds (i, 7), (i, 7) again, and (i, 8). One map, one trace.
    elements = [(img, np.array([i, offset], np.int64))
                for offset in (7, 7, 8) for i, img in enumerate(images)]
    ds = tf.data.Dataset.from_generator(
        lambda: iter(elements),
        output_signature=(tf.TensorSpec([None, None, 3], tf.uint8),
                          tf.TensorSpec([2], tf.int64)))
    mapped = ds.map(lambda x, seed: augment.distort(x, augment_name, seed=seed),
                    num_parallel_calls=2, deterministic=True)
    assert mapped.element_spec.shape.as_list() == [None, None, 3]
    outs = [o.numpy() for o in mapped]
    first, again, other = outs[:3], outs[3:6], outs[6:]
    for img, out, out2 in zip(images, first, again):
        assert out.dtype == np.uint8 and out.shape == img.shape
        np.testing.assert_array_equal(out, out2)  # same seed -> same pixels
    assert any(not np.array_equal(a, b) for a, b in zip(first, other))


def _noise(seed=0):
    # Values 60..190: no channel is full-range, so AutoContrast/Equalize always change it.
    return np.random.default_rng(seed).integers(60, 191, (16, 16, 3), dtype=np.uint8)


def test_randaugment_picks_ops_uniformly_and_negates_half():
    """N=1, M=10 on a 16x16 image: every output is exactly one of the candidate op outputs.

    (Translate by 100 px and Cutout with pad 40 both give an all-gray image here.) Seeded,
    so the counts are deterministic; bounds are about 3.5 binomial sigmas.
    """
    img = _noise()
    cands = {
        "AutoContrast": ops.autocontrast(img), "Equalize": ops.equalize(img),
        "Invert": ops.invert(img), "Posterize": ops.posterize(img, 4),
        "Solarize": ops.solarize(img, 256), "SolarizeAdd": ops.solarize_add(img, 110),
        "Color": ops.color(img, 1.9), "Contrast": ops.contrast(img, 1.9),
        "Brightness": ops.brightness(img, 1.9), "Sharpness": ops.sharpness(img, 1.9),
        "Rotate+": ops.rotate(img, 30.0), "Rotate-": ops.rotate(img, -30.0),
        "ShearX+": ops.shear_x(img, 0.3), "ShearX-": ops.shear_x(img, -0.3),
        "ShearY+": ops.shear_y(img, 0.3), "ShearY-": ops.shear_y(img, -0.3),
        "gray": np.full_like(img, 128)}
    cands = {k: np.asarray(v) for k, v in cands.items()}
    n = 800
    ds = tf.data.Dataset.range(n).map(
        lambda i: augment.randaugment(img, 1, 10.0, seed=tf.stack([i, 5])))
    counts = dict.fromkeys(cands, 0)
    for out in ds.as_numpy_iterator():
        match = [k for k, v in cands.items() if np.array_equal(out, v)]
        assert len(match) == 1, match
        counts[match[0]] += 1
    for k, c in counts.items():
        share = 3 if k == "gray" else 0.5 if k[-1] in "+-" else 1  # in units of 1/16
        expect = n * share / 16
        assert abs(c - expect) <= 3.5 * np.sqrt(expect) + 1, (k, c, expect)


def test_autoaugment_probabilities():
    """Fraction of unchanged images matches the v0 table's probabilities.

    On this image Rotate/Shear at level 0, Solarize at level 10 (threshold 256) and prob-0 ops
    are no-ops, and Solarize(level 2) applied twice restores the image; everything else
    changes it. Flipping the probabilities (p -> 1 - p) would predict 0.41 instead of 0.19.
    """
    noop = {("Rotate", 0), ("ShearX", 0), ("ShearY", 0), ("Solarize", 10)}
    expected = []
    for sub in augment.POLICY_V0:
        p_same = 0.0
        for applied in itertools.product((0, 1), repeat=2):
            p, effective = 1.0, []
            for (name, prob, level), a in zip(sub, applied):
                p *= prob if a else 1 - prob
                if a and (name, level) not in noop:
                    effective.append((name, level))
            if not effective or effective == [("Solarize", 2)] * 2:
                p_same += p
        expected.append(p_same)
    expected = float(np.mean(expected))
    img, n = _noise(), 600
    ds = tf.data.Dataset.range(n).map(lambda i: augment.autoaugment(img, seed=tf.stack([i, 11])))
    same = np.mean([np.array_equal(o, img) for o in ds.as_numpy_iterator()])
    assert abs(same - expected) <= 3.5 * np.sqrt(expected * (1 - expected) / n), (same, expected)


def test_policies_change_images_and_keep_static_shape(photos):
    img = photos["astronaut"][:64, :80]
    changed = []
    for s in range(12):
        out = augment.randaugment(img, 2, 10.0, seed=s)
        changed.append(not np.array_equal(out.numpy(), img))
    assert sum(changed) >= 8  # most of the 16 ops change the image at magnitude 10
    np.testing.assert_array_equal(augment.randaugment(img, 0, 10.0, seed=1), img)
    assert augment.randaugment(img, 1, tf.constant(5.0), seed=2).shape == img.shape
    for name in augment.AUGMENT_NAMES:  # unseeded: stateful tf.random ops
        assert augment.distort(img, name).shape == img.shape
    spec = tf.TensorSpec([224, 224, 3], tf.uint8)
    traced = tf.function(lambda x: augment.autoaugment(x), input_signature=[spec])
    assert traced.get_concrete_function().structured_outputs.shape.as_list() == [224, 224, 3]


# --- registry ---------------------------------------------------------------------------------

def test_registry_defines_the_op_lists():
    assert augment.AUGMENT_NAMES is constants.AUGMENT_NAMES
    assert all(key == op.name and callable(op.fn) for key, op in augment.OPS.items())
    assert augment.OP_NAMES == tuple(augment.OPS)
    assert augment.RANDAUGMENT_OPS == tuple(n for n, op in augment.OPS.items() if op.randaugment)
    with pytest.raises(dataclasses.FrozenInstanceError):
        augment.OPS["Invert"].randaugment = False


def _black(image):
    return tf.zeros_like(image)


@pytest.mark.parametrize("in_randaugment", [True, False])
def test_a_registered_op_joins_randaugment(monkeypatch, in_randaugment):
    """One new registry entry is all RandAugment needs; flagged off, it is never drawn."""
    entry = augment.AugmentOp("Black", _black, lambda level, rng, **consts: (),
                              randaugment=in_randaugment)
    monkeypatch.setattr(augment, "OPS", {**augment.OPS, "Black": entry})
    img = _noise()  # values 60..190: no other op gives an all-black image
    assert (augment.apply_op(img, "Black", 5).numpy() == 0).all()
    n = 340
    ds = tf.data.Dataset.range(n).map(
        lambda i: augment.randaugment(img, 1, 10.0, seed=tf.stack([i, 5])))
    black = sum(int((out == 0).all()) for out in ds.as_numpy_iterator())
    if in_randaugment:
        expect = n / 17
        assert abs(black - expect) <= 3.5 * np.sqrt(expect) + 1, (black, expect)
    else:
        assert black == 0


def test_unknown_op_name_lists_the_valid_ones(monkeypatch):
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="unknown augmentation op 'Blur'") as err:
        augment.apply_op(img, "Blur", 3)
    assert all(name in str(err.value) for name in augment.OP_NAMES)
    monkeypatch.setitem(augment.POLICIES, "bad", ((("Invert", 0.5, 1), ("Blur", 0.5, 3)),))
    with pytest.raises(ValueError, match="unknown augmentation op 'Blur'; valid: AutoContrast"):
        augment.autoaugment(img, policy="bad")


def test_bad_inputs_raise():
    img = np.zeros((8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="autoaugment, randaugment"):
        augment.distort(img, "trivialaugment")
    with pytest.raises(ValueError, match="valid"):
        augment.autoaugment(img, policy="v3")
    with pytest.raises(ValueError, match="uint8"):
        augment.distort(img.astype(np.float32), "randaugment")
    with pytest.raises(ValueError, match="3 channels"):
        augment.distort(np.zeros((8, 8, 1), np.uint8), "autoaugment")
    with pytest.raises(ValueError, match="seed"):
        augment.distort(img, "randaugment", seed=[1, 2, 3])
    with pytest.raises(ValueError, match="num_layers"):
        augment.randaugment(img, -1, 10.0)
