"""Named published weights (weights="advprop", ...): the set registry, and the download of a
checkpoint archive from a loopback server: cache, verification, pinned sha256, safe extraction."""
import hashlib
import io
import os
import tarfile

import numpy as np
import pytest

import efficientnet_tf as en
from efficientnet_tf import weights as W
from loopback import Server
from reference_ckpt import SIZE, reference_logits, write_checkpoint


def _tar_gz(folder, arcname, extra=None) -> bytes:
    """A .tar.gz of `folder` under `arcname`, as the reference's archives are laid out.
    extra: [tarfile.TarInfo, bytes or None] members to append (hostile ones)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(str(folder), arcname=arcname)
        for info, data in extra or []:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


@pytest.fixture(scope="module")
def archives(tmp_path_factory):
    """(b0 archive bytes, b1 archive bytes, b0 EMA values), built once."""
    root = tmp_path_factory.mktemp("published")
    _, _, ema = write_checkpoint(root / "b0", "b0", classes=1000)
    write_checkpoint(root / "b1", "b1", classes=1000)
    return (_tar_gz(root / "b0", "efficientnet-b0"), _tar_gz(root / "b1", "efficientnet-b1"),
            ema)


@pytest.fixture
def server():
    s = Server({})
    yield s
    s.close()


def test_every_set_names_its_variants_archives_and_settings():
    sets = W.weight_sets()
    assert list(sets) == ["baseline", "autoaugment", "randaugment", "advprop", "noisy-student",
                          "lite", "noisy-student-475"]
    assert sets["lite"].archives["lite4"] == "lite/efficientnet-lite4.tar.gz"
    assert sets["lite"].normalization == "lite" and sets["lite"].top1["lite0"] == 75.1
    assert sets["advprop"].archives["b8"] == "advprop/efficientnet-b8.tar.gz"
    assert sets["advprop"].normalization == "advprop" and sets["advprop"].top1["b0"] == 77.6
    assert sets["noisy-student"].archives["b7"] == "noisystudent/noisy_student_efficientnet-b7.tar.gz"
    assert sets["noisy-student-475"].image_size == 475 and list(sets["noisy-student-475"].top1) == ["l2"]
    assert sets["randaugment"].archives == {"b5": "randaug/efficientnet-b5-randaug.tar.gz",
                                            "b7": "randaug/efficientnet-b7-randaug.tar.gz"}
    assert W.published.archive_url(sets["baseline"], "b3") == (
        "https://storage.googleapis.com/cloud-tpu-checkpoints/efficientnet/ckpts/efficientnet-b3.tar.gz")
    for ws in sets.values():
        assert set(ws.archives) <= set(en.VARIANTS)


def test_a_set_refuses_variants_it_lacks_and_other_class_counts():
    with pytest.raises(ValueError, match=r"weights='randaugment' .* exists for b5, b7, not for b0"):
        en.EfficientNetB0(weights="randaugment")
    with pytest.raises(ValueError, match="not for a custom scaling"):
        en.EfficientNet(phi=0.5, weights="advprop")
    with pytest.raises(ValueError, match="needs classes=1000"):
        en.EfficientNetB0(weights="advprop", classes=10)
    with pytest.raises(ValueError, match="trained with normalization='advprop'"):
        en.EfficientNetB0(weights="advprop", normalization="imagenet")


def test_named_weights_download_verify_cache_and_match_the_reference(archives, server, tmp_path,
                                                                     monkeypatch):
    b0, _, ema = archives
    server.files["/weights/advprop/efficientnet-b0.tar.gz"] = b0
    monkeypatch.setenv(W.CHECKPOINTS_URL_ENV, server.url)
    monkeypatch.setenv(W.CACHE_ENV, str(tmp_path / "cache"))
    model = en.EfficientNetB0(weights="advprop", include_top=False, pooling=None,
                              input_shape=(SIZE, SIZE, 3))
    assert W.model_normalization(model) == "advprop"  # the set's setting, by default
    assert len(server.requests) == 1
    folder = tmp_path / "cache" / "efficientnet_tf" / "advprop" / "b0"
    assert sorted(os.listdir(folder.parent)) == ["b0"]  # no archive or .part left behind
    assert (folder / "ARCHIVE_SHA256").read_text().strip() == hashlib.sha256(b0).hexdigest()
    # The same as the checkpoint read directly, with advprop inputs (checked against the
    # reference computation in test_tf1_checkpoint.py).
    direct = en.EfficientNetB0(include_top=True, input_shape=(SIZE, SIZE, 3), classes=1000,
                               classifier_activation=None, normalization="advprop",
                               weights=str(folder / "efficientnet-b0"))
    images = np.random.default_rng(0).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    np.testing.assert_allclose(model(images).numpy(), _features(direct, images), rtol=1e-6,
                               atol=1e-6)
    logits = direct(images).numpy()
    want = reference_logits(ema, "b0", images, "advprop")
    np.testing.assert_allclose(logits, want, rtol=1e-4, atol=1e-4 * np.abs(want).max())
    again = W.load_weights(en.EfficientNetB0(include_top=False, input_shape=(SIZE, SIZE, 3),
                                             normalization="advprop"), "advprop", variant="b0")
    assert len(server.requests) == 1 and again.ema is True and again.skipped == ["predictions"]
    # The converter takes the set's normalization by default and the caller's when given one
    # (None: for inputs that come normalized), from the cache.
    from efficientnet_tf.weights.write import build_for

    assert W.model_normalization(build_for("advprop", "b0", image_size=SIZE)[0]) == "advprop"
    plain, report = build_for("advprop", "b0", normalization=None, image_size=SIZE)
    assert W.model_normalization(plain) is None and report.ema is True
    assert len(server.requests) == 1
    assert again.path == str(folder / "efficientnet-b0" / "model.ckpt-1234")
    with pytest.raises(W.WeightsHashError):  # the constructor's pin: not the cached archive's
        en.EfficientNetB0(weights="advprop", include_top=False, input_shape=(SIZE, SIZE, 3),
                          weights_hash="0" * 64)


def test_training_configs_carry_the_normalization():
    from efficientnet_tf.config import ModelConfig
    from efficientnet_tf.factory import build_model

    m = ModelConfig(width_coefficient=0.1, depth_coefficient=0.1, normalization="advprop")
    assert W.model_normalization(build_model(m, 32, 3)) == "advprop"
    with pytest.raises(ValueError, match="model.normalization must be auto, imagenet"):
        ModelConfig(normalization="inception")


def _features(model, images):
    import keras

    return keras.Model(model.input, model.get_layer("top_activation").output)(images).numpy()


def test_a_pinned_sha256_is_checked_on_download_and_against_the_cache(archives, server,
                                                                      tmp_path):
    b0, _, _ = archives
    server.files["/weights/ckpts/efficientnet-b0.tar.gz"] = b0
    cache = tmp_path / "cache"
    kw = dict(base_url=server.url, cache_dir=str(cache))
    with pytest.raises(W.WeightsHashError, match="discarded"):
        W.fetch_checkpoint("baseline", "b0", file_hash="0" * 64, **kw)
    assert os.listdir(cache / "efficientnet_tf" / "baseline") == []
    good = hashlib.sha256(b0).hexdigest()
    prefix = W.fetch_checkpoint("baseline", "b0", file_hash=good, **kw)
    assert W.fetch_checkpoint("baseline", "b0", file_hash=good, **kw) == prefix
    assert len(server.requests) == 2  # the second good call came from the cache
    with pytest.raises(W.WeightsHashError):  # a cache of another archive than the pin: refetched
        W.fetch_checkpoint("baseline", "b0", file_hash="1" * 64, **kw)
    with pytest.raises(ValueError, match="sha256"):
        W.fetch_checkpoint("baseline", "b0", file_hash="abc", **kw)


def test_an_archive_of_another_variant_is_refused_and_not_cached(archives, server, tmp_path):
    _, b1, _ = archives
    server.files["/weights/ckptsaug/efficientnet-b0.tar.gz"] = b1  # wrong file on the mirror
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="checkpoint of efficientnet-b1 .* not of efficientnet-b0"):
        W.fetch_checkpoint("autoaugment", "b0", base_url=server.url, cache_dir=str(cache))
    assert os.listdir(cache / "efficientnet_tf" / "autoaugment") == []


def test_a_truncated_archive_is_refused(archives, server, tmp_path):
    b0, _, _ = archives
    server.files["/weights/ckpts/efficientnet-b0.tar.gz"] = b0[: len(b0) // 2]
    cache = tmp_path / "cache"
    with pytest.raises(ValueError, match="not a readable tar archive|truncated or corrupt"):
        W.fetch_checkpoint("baseline", "b0", base_url=server.url, cache_dir=str(cache))
    assert os.listdir(cache / "efficientnet_tf" / "baseline") == []


def _member(name, kind=tarfile.REGTYPE, data=b"x", link=""):
    info = tarfile.TarInfo(name)
    info.type, info.linkname = kind, link
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    return info, data if kind == tarfile.REGTYPE else None


@pytest.mark.parametrize("member,why", [
    (("../evil", tarfile.REGTYPE), "'..'"),
    (("/etc/evil", tarfile.REGTYPE), "absolute"),
    (("ckpt/link", tarfile.SYMTYPE, b"", "/etc/passwd"), "a link"),
    (("ckpt/hard", tarfile.LNKTYPE, b"", "ckpt/checkpoint"), "a link"),
])
def test_safe_extract_refuses_hostile_members(tmp_path, member, why):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "checkpoint").write_text("x")
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_gz(tmp_path / "ckpt", "ckpt", [_member(*member)]))
    dest = tmp_path / "out"
    dest.mkdir()
    with pytest.raises(ValueError, match=why):
        W.safe_extract(str(archive), str(dest))
    assert os.listdir(dest) == [] and not (tmp_path / "evil").exists()


def test_safe_extract_bounds_the_size(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "model.ckpt.data-00000-of-00001").write_bytes(b"0" * 100)
    archive = tmp_path / "a.tar.gz"
    archive.write_bytes(_tar_gz(tmp_path / "ckpt", "ckpt"))
    with pytest.raises(ValueError, match="more than 10 bytes"):
        W.safe_extract(str(archive), str(tmp_path / "out"), max_bytes=10)
    assert not (tmp_path / "out").exists() or os.listdir(tmp_path / "out") == []
    W.safe_extract(str(archive), str(tmp_path / "out"))
    assert (tmp_path / "out" / "ckpt" / "model.ckpt.data-00000-of-00001").read_bytes() == b"0" * 100


def test_offline_message_says_how_to_get_the_archive(tmp_path):
    dead = Server({})
    url = dead.url
    dead.close()  # nothing listens there any more
    with pytest.raises(W.WeightsDownloadError) as err:
        W.fetch_checkpoint("noisy-student", "b3", base_url=url, cache_dir=str(tmp_path))
    msg = str(err.value)
    assert url + "noisystudent/noisy_student_efficientnet-b3.tar.gz" in msg
    assert "pass the checkpoint directory as weights=" in msg and W.CHECKPOINTS_URL_ENV in msg
    assert os.listdir(tmp_path / "efficientnet_tf" / "noisy-student") == []
    from efficientnet_tf.train.main import download_hint  # the training CLI's wording
    cli = download_hint(err.value)
    assert "tar xzf noisy_student_efficientnet-b3.tar.gz" in cli
    assert "--init_weights=/path/to/the/extracted/folder" in cli and W.CHECKPOINTS_URL_ENV in cli
