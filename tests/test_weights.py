"""weights=path / "imagenet": files made here from keras.applications EfficientNetB0.

Reference outputs always come from keras.applications itself loading the same file (its own
load_weights, or its weights="imagenet" code path with the download pointed at the file).
"""
import contextlib
import hashlib
import os
import shutil

import h5py
import keras
import numpy as np
import pytest
import tensorflow as tf
from keras.src.applications import efficientnet as keras_effnet
from keras.src.legacy.saving import legacy_h5_format

import efficientnet_tf as en
from efficientnet_tf import weights as W
from loopback import Server

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD = ("avg_pool", "top_dropout", "predictions")
SMALL = (64, 64, 3)


# ----------------------------------------------------------------------------- helpers

def _norm_layer(model):
    return next(l for l in model.layers if isinstance(l, keras.layers.Normalization))


def _randomize(model, rng, mean, variance, calib, calib_variance):
    """Random BN affine and biases, then BN moving statistics set to the batch statistics each
    BN layer sees on `calib` normalized with (mean, calib_variance), so activations keep a
    healthy scale and outputs depend on the image (a comparison that ignored the input could
    not pass by accident). Finally the Normalization variance is set to `variance`."""
    for w in model.weights:
        leaf = w.path.split("/")[-1]
        if leaf == "gamma":
            w.assign(rng.uniform(0.6, 1.4, w.shape).astype(w.dtype))
        elif leaf in ("beta", "bias"):
            w.assign(rng.normal(0.0, 0.1, w.shape).astype(w.dtype))
    if "predictions" in [l.name for l in model.layers]:
        kernel = model.get_layer("predictions").kernel
        std = 0.3 * np.sqrt(1280 / kernel.shape[0])  # spread, unsaturated softmax
        kernel.assign(rng.normal(0.0, std, kernel.shape).astype("float32"))
    _set_normalization(model, mean, calib_variance)
    bns = [l for l in model.layers if isinstance(l, keras.layers.BatchNormalization)]
    dropouts = [l for l in model.layers if isinstance(l, keras.layers.Dropout)]
    rates = [l.rate for l in dropouts]
    for l in dropouts:
        l.rate = 0.0
    # training=True: every BN normalizes with its batch statistics; record them.
    probe = keras.Model(model.input, [l.input for l in bns])
    for layer, a in zip(bns, probe(calib, training=True)):
        a = a.numpy().astype("float64")
        layer.moving_mean.assign(a.mean(axis=(0, 1, 2)).astype("float32"))
        layer.moving_variance.assign(a.var(axis=(0, 1, 2)).astype("float32"))
    for l, r in zip(dropouts, rates):
        l.rate = r
    _set_normalization(model, mean, variance)


def _set_normalization(model, mean, variance):
    norm = _norm_layer(model)
    stats = {"mean": mean, "variance": variance}
    for w in norm.weights:
        if w.path.split("/")[-1] in stats:
            w.assign(np.asarray(stats[w.path.split("/")[-1]], "float32"))
    norm.finalize_state()  # keras' Normalization caches its statistics


def _write_legacy_tf2(model, path, skip=()):
    """The published files' layout (tf.keras 2): layer_names, per-layer weight_names 'x/kernel:0'."""
    layers = [l for l in model.layers if l.name not in skip]
    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [l.name.encode("utf8") for l in layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = b"2.4.0"
        for layer in layers:
            g = f.create_group(layer.name)
            ws = layer.trainable_weights + layer.non_trainable_weights
            names = [f"{layer.name}/{w.path.split('/')[-1]}:0" for w in ws]
            g.attrs["weight_names"] = [n.encode("utf8") for n in names]
            for n, w in zip(names, ws):
                g.create_dataset(n, data=np.asarray(w.numpy()))


def _write_legacy_keras3(model, path):
    with h5py.File(path, "w") as f:
        legacy_h5_format.save_weights_to_hdf5_group(f, model)


def _images(size, n=2):
    from skimage import data

    imgs = [data.astronaut(), data.chelsea()][:n]
    return np.stack([tf.image.resize(i, (size, size)).numpy() for i in imgs]).astype("float32")


@contextlib.contextmanager
def _keras_imagenet_file(monkeypatch, path, expect_name):
    """keras.applications' weights="imagenet" path, with its download answered by `path`."""
    def fake_get_file(fname, origin=None, **kw):
        assert fname == expect_name and origin == keras_effnet.BASE_WEIGHTS_PATH + fname
        return str(path)

    with monkeypatch.context() as m:
        m.setattr(keras_effnet.file_utils, "get_file", fake_get_file)
        yield


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """B0 weights (random, calibrated BN statistics) in every layout, with ImageNet-style
    (std stored as variance) and plain (random) normalization. Also returns the two
    keras.applications models (weights=None) for reference outputs."""
    d = tmp_path_factory.mktemp("weights")
    keras.utils.set_random_seed(0)
    keras.layers.Normalization()  # so keras numbers the next one normalization_<n>
    rng = np.random.default_rng(0)
    top = keras.applications.EfficientNetB0(weights=None)
    notop = keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=SMALL)
    calib = np.concatenate([_images(224), rng.uniform(0, 255, (2, 224, 224, 3))]).astype("float32")
    out = {"norm_name": _norm_layer(top).name, "keras_top": top, "keras_notop": notop}
    plain_variance = rng.uniform(0.03, 0.08, 3)
    for kind, mean, variance, calib_variance in (
            # What keras.applications(weights="imagenet") effectively applies is std**2.
            ("imagenet", IMAGENET_MEAN, IMAGENET_STD, np.square(IMAGENET_STD)),
            ("plain", rng.uniform(0.3, 0.6, 3), plain_variance, plain_variance)):
        _randomize(top, rng, mean, variance, calib, calib_variance)
        body = [w for w in top.weights if w.path.split("/")[0] not in HEAD]
        assert len(body) == len(notop.weights)
        for w, src in zip(notop.weights, body):
            w.assign(src)
        _write_legacy_tf2(top, d / f"{kind}_top.h5")
        _write_legacy_tf2(top, d / f"{kind}_notop_tf2.h5", skip=HEAD)
        _write_legacy_keras3(top, d / f"{kind}_top_k3.h5")
        _write_legacy_keras3(notop, d / f"{kind}_notop.h5")
        top.save_weights(d / f"{kind}_top.weights.h5")
        notop.save_weights(d / f"{kind}_notop.weights.h5")
    notop.save(d / "plain_notop.keras")
    notop.save(d / "plain_notop_full.h5")  # legacy full-model HDF5: weights under model_weights
    out.update({p.name: p for p in d.iterdir()})
    return out


@pytest.fixture(scope="module")
def ours_top():
    return en.EfficientNetB0()


@pytest.fixture(scope="module")
def ours_notop():
    return en.EfficientNetB0(include_top=False, input_shape=SMALL)


def _assert_sensitive(want, got, naive):
    """got matches want; the naive (wrongly normalized) output is far off, by comparison."""
    err = np.abs(got - want).max()
    assert np.abs(naive - want).max() > max(100 * err, 1e-4), (err, np.abs(naive - want).max())


# ----------------------------------------------------------------------------- weights=path

def test_imagenet_style_file_gives_keras_imagenet_outputs(files, monkeypatch):
    path = files["imagenet_top.h5"]
    assert files["norm_name"] != "normalization"  # the file's layer is normalization_<n>
    with _keras_imagenet_file(monkeypatch, path, "efficientnetb0.h5"):
        theirs = keras.applications.EfficientNetB0(weights="imagenet")
    ours = en.EfficientNetB0(weights=str(path))
    np.testing.assert_allclose(ours.get_layer("normalization").variance.numpy(),
                               np.square(IMAGENET_STD), rtol=1e-6)
    x = _images(224)
    want = theirs(x, training=False).numpy()
    got = ours(x, training=False).numpy()
    assert want.max() < 0.99 and np.abs(want[0] - want[1]).max() > 0.01  # image-dependent
    np.testing.assert_allclose(got, want, atol=1e-5)
    # The quirk matters: keras weights=None + load_weights of the same file is different.
    files["keras_top"].load_weights(str(path))
    _assert_sensitive(want, got, files["keras_top"](x, training=False).numpy())


def test_plain_files_give_keras_load_weights_outputs(files, ours_top, ours_notop):
    x224, x64 = _images(224), _images(64)
    ref_top = files["keras_top"]
    ref_top.load_weights(str(files["plain_top.h5"]))
    want = ref_top(x224, training=False).numpy()
    assert want.max() < 0.99 and np.abs(want[0] - want[1]).max() > 0.01  # image-dependent
    for name in ("plain_top.h5", "plain_top_k3.h5", "plain_top.weights.h5"):
        ours_top.set_weights([np.zeros_like(w) for w in ours_top.get_weights()])
        report = W.load_weights(ours_top, files[name])
        assert not report.imagenet_variance_fixed and report.skipped == []
        np.testing.assert_allclose(ours_top(x224, training=False), want, atol=1e-5, err_msg=name)

    ref_notop = files["keras_notop"]
    ref_notop.load_weights(str(files["plain_notop.weights.h5"]))
    want = ref_notop(x64, training=False).numpy()
    assert np.abs(want[0] - want[1]).max() > 0.1 * np.abs(want).max()  # depends on the image
    for name in ("plain_notop.h5", "plain_notop_tf2.h5", "plain_notop.weights.h5",
                 "plain_notop.keras", "plain_notop_full.h5", "plain_top.h5",
                 "plain_top.weights.h5"):
        ours_notop.set_weights([np.zeros_like(w) for w in ours_notop.get_weights()])
        report = W.load_weights(ours_notop, files[name])
        assert report.skipped == (["predictions"] if name.startswith("plain_top") else []), name
        np.testing.assert_allclose(ours_notop(x64, training=False), want, rtol=1e-5, atol=1e-5,
                                   err_msg=name)


def test_constructor_weights_path_and_our_own_weights_file(files, ours_notop, tmp_path):
    ours = en.EfficientNetB0(include_top=False, input_shape=SMALL,
                             weights=str(files["plain_notop.weights.h5"]))
    ours.save_weights(tmp_path / "ours.weights.h5")
    again = ours_notop
    W.load_weights(again, files["imagenet_notop.h5"])
    W.load_weights(again, tmp_path / "ours.weights.h5")
    x = _images(64)
    np.testing.assert_array_equal(again(x, training=False), ours(x, training=False))
    for a, b in zip(again.weights, ours.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_keras3_file_without_layer_names_maps_by_class_order(files, ours_notop, tmp_path):
    # Keras 3 before layer names were stored in .weights.h5: only class-based keys remain.
    path = tmp_path / "nonames.weights.h5"
    shutil.copy(files["plain_notop.weights.h5"], path)
    with h5py.File(path, "a") as f:
        for key in f["layers"]:
            v = f["layers"][key].get("vars")
            if v is not None and "name" in v.attrs:
                del v.attrs["name"]
    W.load_weights(ours_notop, files["imagenet_notop.h5"])
    W.load_weights(ours_notop, path)
    theirs = files["keras_notop"]
    theirs.load_weights(str(path))
    ref = {w.path: w.numpy() for w in theirs.weights}
    for w in ours_notop.weights:
        key = w.path.replace("normalization/", _norm_layer(theirs).name + "/")
        np.testing.assert_array_equal(w.numpy(), ref[key], err_msg=w.path)


# ----------------------------------------------------------------------------- mismatches

def test_wrong_variant_fails_and_leaves_model_untouched(ours_notop, tmp_path):
    b1 = keras.applications.EfficientNetB1(weights=None, include_top=False, input_shape=SMALL)
    _write_legacy_keras3(b1, tmp_path / "b1_notop.h5")
    b1.save_weights(tmp_path / "b1_notop.weights.h5")
    before = [w.numpy().copy() for w in ours_notop.weights]
    for name in ("b1_notop.h5", "b1_notop.weights.h5"):
        # Every B0 layer exists in B1 with the same shape: only the extra blocks tell.
        with pytest.raises(ValueError, match=r"has layer 'block\d[a-z]_\w+'.*another architecture"):
            W.load_weights(ours_notop, tmp_path / name)
    for w, b in zip(ours_notop.weights, before):
        np.testing.assert_array_equal(w.numpy(), b)


def test_notop_file_into_top_model_fails(files, ours_top):
    for name in ("plain_notop.h5", "plain_notop.weights.h5"):
        with pytest.raises(ValueError, match=r"no layer 'predictions'.*include_top=False"):
            W.load_weights(ours_top, files[name])


def test_missing_layer_and_shape_mismatch_fail(files, ours_notop, tmp_path):
    path = tmp_path / "missing.h5"
    shutil.copy(files["plain_notop_tf2.h5"], path)
    with h5py.File(path, "a") as f:
        drop = ("block3a_se_reduce", b"block3a_se_reduce")  # h5py gives str or bytes
        f.attrs["layer_names"] = [n for n in f.attrs["layer_names"] if n not in drop]
        del f["block3a_se_reduce"]
    with pytest.raises(ValueError, match=r"no layer 'block3a_se_reduce'.*block3a_se_reduce/kernel"):
        W.load_weights(ours_notop, path)
    with pytest.raises(ValueError, match=r"predictions/kernel.*\(1280, 1000\).*\(1280, 10\)"):
        en.EfficientNetB0(classes=10, weights=str(files["plain_top.h5"]))
    junk = tmp_path / "junk.h5"
    junk.write_text("not weights")
    with pytest.raises(ValueError, match="not an HDF5 weights file"):
        W.load_weights(ours_notop, junk)
    with pytest.raises(ValueError, match="file not found"):
        en.EfficientNetB0(weights=str(tmp_path / "nope.h5"))


def test_imagenet_for_custom_scaling_is_rejected():
    with pytest.raises(ValueError, match="only for the published variants"):
        W.check_weights_argument("imagenet", True, 1000, variant=None)
    with pytest.raises(ValueError, match="only for the published variants"):
        en.EfficientNet(0.25, 0.34, 32, include_top=False, input_shape=(32, 32, 3),
                        weights="imagenet")
    # keras.applications has no B8 / L2 files: refused before anything is built.
    for ctor, key in ((en.EfficientNetB8, "b8"), (en.EfficientNetL2, "l2")):
        with pytest.raises(ValueError, match=f"only for the published variants b0, .*not for {key}"):
            ctor(weights="imagenet")


# ----------------------------------------------------------------------------- download

@pytest.fixture
def server():
    s = Server({})
    yield s
    s.close()


def test_download_is_verified_cached_and_reused(server, tmp_path):
    body = np.random.default_rng(3).bytes(50_000)
    server.files["/weights/efficientnetb0_notop.h5"] = body
    sha = hashlib.sha256(body).hexdigest()
    cache = tmp_path / "cache"
    path = W.fetch_weights("b0", include_top=False, base_url=server.url, file_hash=sha,
                           cache_dir=str(cache))
    assert path == str(cache / "efficientnetb0_notop.h5")
    assert open(path, "rb").read() == body and os.listdir(cache) == ["efficientnetb0_notop.h5"]
    assert len(server.requests) == 1
    again = W.fetch_weights("b0", include_top=False, base_url=server.url, file_hash=sha,
                            cache_dir=str(cache))
    assert again == path and len(server.requests) == 1  # served from the cache
    # md5 (the published tables' algorithm) works too; a corrupted cache is re-downloaded.
    with open(path, "wb") as f:
        f.write(b"corrupt")
    with pytest.warns(UserWarning, match="expected hash"):
        W.fetch_weights("b0", include_top=False, base_url=server.url,
                        file_hash=hashlib.md5(body).hexdigest(), cache_dir=str(cache))
    assert open(path, "rb").read() == body and len(server.requests) == 2


def test_hash_mismatch_leaves_nothing_in_cache(server, tmp_path):
    server.files["/weights/efficientnetb0.h5"] = b"tampered" * 1000
    cache = tmp_path / "cache"
    with pytest.raises(W.WeightsHashError, match="discarded"):
        W.fetch_weights("b0", base_url=server.url, file_hash="0" * 64, cache_dir=str(cache))
    assert os.listdir(cache) == []
    with pytest.raises(W.WeightsDownloadError, match="404"):
        W.fetch_weights("b0", base_url=server.url + "missing/", cache_dir=str(cache))
    assert os.listdir(cache) == []


def test_offline_message_says_how_to_pass_a_local_file(tmp_path):
    dead = Server({})
    url = dead.url
    dead.close()  # nothing listens on that port any more
    with pytest.raises(W.WeightsDownloadError) as err:
        W.fetch_weights("b3", include_top=False, base_url=url, cache_dir=str(tmp_path))
    msg = str(err.value)
    assert 'weights="/path/to/efficientnetb3_notop.h5"' in msg
    assert url + "efficientnetb3_notop.h5" in msg and W.WEIGHTS_HASHES["b3"][1] in msg
    assert os.listdir(tmp_path) == []


def test_the_training_cli_words_an_offline_init_weights_in_flags(tmp_path, monkeypatch, capsys):
    from efficientnet_tf.train import main as train_main

    dead = Server({})
    url = dead.url
    dead.close()
    with pytest.raises(W.WeightsDownloadError) as err:
        W.fetch_weights("b0", base_url=url, cache_dir=str(tmp_path))

    def run():
        raise err.value
    monkeypatch.setattr(train_main, "run", run)
    with pytest.raises(SystemExit) as exit_:
        train_main.main([])
    assert exit_.value.code == 1
    msg = capsys.readouterr().err
    assert msg.startswith("efficientnet_tf.train: error: could not download " + url)
    assert "--init_weights=/path/to/efficientnetb0.h5" in msg and W.URL_ENV in msg
    assert str(tmp_path / "efficientnetb0.h5") in msg  # where a copied file is found
    assert "EfficientNetB0(" not in msg and "Traceback" not in msg


def test_cache_dir_defaults(monkeypatch, tmp_path):
    monkeypatch.delenv(W.CACHE_ENV, raising=False)
    monkeypatch.delenv("KERAS_HOME", raising=False)
    assert W.default_cache_dir() == os.path.expanduser("~/.keras/models")
    monkeypatch.setenv("KERAS_HOME", str(tmp_path / "kh"))
    assert W.default_cache_dir() == str(tmp_path / "kh" / "models")
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "mine"))
    assert W.default_cache_dir() == str(tmp_path / "mine")
    assert W.weights_file_name("b7", False) == "efficientnetb7_notop.h5"


def test_weights_imagenet_end_to_end_through_loopback(files, server, monkeypatch, tmp_path):
    """EfficientNetB0(weights="imagenet") downloads (env-overridden URL and cache), checks the
    hash and gives keras.applications(weights="imagenet")'s outputs for the same file."""
    path = files["imagenet_notop.h5"]
    body = path.read_bytes()
    server.files["/weights/efficientnetb0_notop.h5"] = body
    monkeypatch.setitem(W.WEIGHTS_HASHES, "b0", ("0" * 32, hashlib.md5(body).hexdigest()))
    monkeypatch.setenv(W.URL_ENV, server.url)
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "cache"))
    ours = en.EfficientNetB0(include_top=False, weights="imagenet", input_shape=SMALL)
    assert server.requests == ["/weights/efficientnetb0_notop.h5"]
    assert os.listdir(tmp_path / "cache") == ["efficientnetb0_notop.h5"]
    with _keras_imagenet_file(monkeypatch, path, "efficientnetb0_notop.h5"):
        theirs = keras.applications.EfficientNetB0(include_top=False, weights="imagenet",
                                                   input_shape=SMALL)
    x = _images(64)
    want = theirs(x, training=False).numpy()
    got = ours(x, training=False).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    files["keras_notop"].load_weights(str(path))
    _assert_sensitive(want, got, files["keras_notop"](x, training=False).numpy())


# ----------------------------------------------------------------------------- all variants

@pytest.mark.slow
@pytest.mark.parametrize("variant", ["b1", "b2", "b3", "b4", "b5", "b6", "b7"])
def test_every_variant_loads_keras_files_with_and_without_top(variant, tmp_path):
    """Random kernels and BN statistics, both file layouts, include_top True and False, 64 px."""
    keras.utils.set_random_seed(1)
    rng = np.random.default_rng(1)
    ctor = getattr(keras.applications, f"EfficientNet{variant.upper()}")
    theirs = ctor(weights=None, input_shape=SMALL)
    x = _images(64)
    calib = np.concatenate([x, rng.uniform(0, 255, (2,) + SMALL)]).astype("float32")
    variance = rng.uniform(0.03, 0.08, 3)
    _randomize(theirs, rng, rng.uniform(0.3, 0.6, 3), variance, calib, variance)
    want_top = theirs(x, training=False).numpy()
    want_notop = keras.Model(theirs.input, theirs.get_layer("top_activation").output)(
        x, training=False).numpy()
    assert want_top.max() < 0.99 and np.abs(want_top[0] - want_top[1]).max() > 0.01
    _write_legacy_keras3(theirs, tmp_path / "top.h5")
    _write_legacy_tf2(theirs, tmp_path / "notop.h5", skip=HEAD)
    theirs.save_weights(tmp_path / "top.weights.h5")
    ours_ctor = getattr(en, f"EfficientNet{variant.upper()}")
    for name in ("top.h5", "top.weights.h5"):
        ours = ours_ctor(input_shape=SMALL, weights=str(tmp_path / name))
        np.testing.assert_allclose(ours(x, training=False), want_top, atol=1e-4, err_msg=name)
    ours = ours_ctor(include_top=False, input_shape=SMALL)
    for name in ("notop.h5", "top.h5", "top.weights.h5"):
        ours.set_weights([np.zeros_like(w) for w in ours.get_weights()])
        W.load_weights(ours, tmp_path / name)
        np.testing.assert_allclose(ours(x, training=False), want_notop, rtol=1e-4,
                                   atol=1e-4 * np.abs(want_notop).max(), err_msg=name)


# ----------------------------------------------------------------------------- formats

def _tiny(classes=10, **kw):
    return en.EfficientNet(0.25, 0.34, 32, input_shape=(32, 32, 3), classes=classes, **kw)


def _toy_key(layer_name, weight_name):
    return f"toy/{layer_name.replace('_', '-')}/{weight_name}"


def _write_toy(model, path, extra=None):
    """An .npz with keys 'toy/<layer name, '-' for '_'>/<weight>': a format no built-in reads."""
    arrays = {_toy_key(l.name, w.path.split("/")[-1]): w.numpy()
              for l in model.layers for w in l.weights}
    np.savez(path, **arrays, **(extra or {}))


def _read_toy(path):
    groups = {}
    with np.load(path) as z:
        for key in z.files:
            layer, weight = key.rsplit("/", 1)
            groups.setdefault(layer, []).append((weight, z[key]))
    norm = {"mean", "variance", "count"}
    return [W.FileLayer(name, ws, is_normalization={n for n, _ in ws} == norm)
            for name, ws in groups.items()]


@pytest.fixture
def toy_format():
    """Registers the toy format for one test and removes it afterwards."""
    before = W.formats()
    fmt = W.register_format(W.WeightFormat(
        "toy_npz", lambda p: p.endswith(".npz"), _read_toy,
        lambda fls, model: [fl.name.removeprefix("toy/").replace("-", "_") for fl in fls],
        "an .npz with 'toy/<layer>/<weight>' keys"))
    try:
        yield fmt
    finally:
        W.unregister_format("toy_npz")
        assert W.formats() == before


def test_a_new_format_plugs_in_through_the_registry(toy_format, tmp_path):
    keras.utils.set_random_seed(2)
    rng = np.random.default_rng(2)
    src = _tiny()
    src.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in src.get_weights()])
    src.get_layer("normalization").variance.assign(IMAGENET_STD)  # the std-as-variance quirk
    path = str(tmp_path / "tiny.npz")
    _write_toy(src, path)
    assert W.read_weights_file(path)[0] == "toy_npz"

    dst = _tiny()
    report = W.load_weights(dst, path)
    weighted = [l for l in dst.layers if l.weights]
    # The mean is random, so the normalization is reported as "custom".
    assert report == W.LoadReport("toy_npz", len(weighted), [], True, normalization="custom",
                                  path=path)
    for a, b in zip(dst.weights, src.weights):
        want = np.square(IMAGENET_STD) if a.path == "normalization/variance" else b.numpy()
        np.testing.assert_allclose(a.numpy(), want, rtol=1e-6, err_msg=a.path)
    built = _tiny(weights=path)  # the constructor goes through the same registry
    for a, b in zip(built.weights, dst.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy(), err_msg=a.path)

    # Mismatches are the matcher's usual all-or-nothing errors, under our names and the file's.
    before = [w.numpy().copy() for w in dst.weights]
    extra = {_toy_key("block9a_project_conv", "kernel"): np.zeros((1, 1, 8, 8), "float32")}
    _write_toy(src, path, extra)
    with pytest.raises(ValueError, match=r"layer 'block9a_project_conv' \(stored as "
                                         r"'toy/block9a-project-conv'\).*another architecture"):
        W.load_weights(dst, path)
    bad = _tiny(classes=7)
    bad.set_weights([rng.uniform(0.5, 1.5, w.shape).astype(w.dtype) for w in bad.get_weights()])
    _write_toy(bad, path)
    with pytest.raises(ValueError, match=r"predictions/kernel.*\(\d+, 7\).*\(\d+, 10\)"):
        W.load_weights(dst, path)
    for w, b in zip(dst.weights, before):
        np.testing.assert_array_equal(w.numpy(), b, err_msg=w.path)


def test_format_registry_order_and_errors(files, toy_format, tmp_path):
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"\0" * 64)
    with pytest.raises(ValueError, match=r"Known formats: keras \(.*\); legacy_h5 \(.*\); "
                                         r"keras_weights_h5 \(.*\); tf1_checkpoint \(.*\); "
                                         r"toy_npz \(.*\)\."):
        W.load_weights(_tiny(), junk)
    assert [f.name for f in W.formats()] == ["keras", "legacy_h5", "keras_weights_h5",
                                             "tf1_checkpoint", "toy_npz"]
    with pytest.raises(ValueError, match="already registered"):
        W.register_format(toy_format)
    with pytest.raises(ValueError, match="No weights format named 'nope'"):
        W.unregister_format("nope")
    # The first sniff that accepts a file wins; first=True puts a format ahead of the others.
    everything = W.WeightFormat("everything", lambda p: True, _read_toy)
    W.register_format(everything, first=True)
    try:
        assert W.find_format(files["plain_top.h5"]) is everything
    finally:
        W.unregister_format("everything")
    assert W.find_format(files["plain_top.h5"]).name == "legacy_h5"
    assert W.find_format(files["plain_notop.keras"]).name == "keras"
    assert W.find_format(files["plain_notop.weights.h5"]).name == "keras_weights_h5"
    assert W.find_format(files["plain_notop_full.h5"]).name == "legacy_h5"
    # A mapping that sends two file layers to one of ours is refused before the matcher runs.
    path = str(tmp_path / "two.npz")
    np.savez(path, **{"toy/a/kernel": np.zeros(1), "toy/b/kernel": np.zeros(1)})
    W.register_format(W.WeightFormat("collide", lambda p: True, _read_toy,
                                     lambda fls, model: ["stem_conv"] * len(fls)), first=True)
    try:
        with pytest.raises(ValueError, match="'toy/a' and 'toy/b' both map to layer 'stem_conv'"):
            W.load_weights(_tiny(), path)
    finally:
        W.unregister_format("collide")
