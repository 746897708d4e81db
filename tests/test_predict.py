"""export.Predictor and python -m efficientnet_tf.predict: a .tflite (ai_edge_litert) or a
SavedModel on files, bytes and arrays of real photos, any batch size, bad files reported."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from skimage import data

from efficientnet_tf import EfficientNet
from efficientnet_tf.data import preprocessing
from efficientnet_tf.export import Predictor, export_saved_model, export_tflite
from fmnist import needs

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIZE, CLASSES = 48, 6
LABELS = [f"thing_{i}" for i in range(CLASSES)]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    d = tmp_path_factory.mktemp("predict")
    model = EfficientNet(0.25, 0.25, default_size=SIZE, classes=CLASSES,
                         classifier_activation="softmax", drop_connect_rate=0.0)
    rng = np.random.default_rng(0)  # non-trivial BN statistics
    for layer in model.layers:
        if hasattr(layer, "moving_variance"):
            layer.moving_mean.assign(rng.normal(0, 0.2, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 2, layer.moving_variance.shape))
    tfl = export_tflite(model, str(d / "m.tflite"), crop_padding=8, resize_method="bilinear",
                        label_names=LABELS)
    saved = export_saved_model(model, str(d / "serving"), image_size=SIZE, crop_padding=8,
                               resize_method="bilinear", label_names=LABELS, top_k=CLASSES)
    photos = {"astronaut.jpg": data.astronaut(), "coffee.png": data.coffee(),
              "chelsea.jpg": data.chelsea()}
    files = []
    for name, image in photos.items():
        path = str(d / name)
        enc = tf.io.encode_png(image) if name.endswith(".png") else tf.io.encode_jpeg(image)
        tf.io.write_file(path, enc)
        files.append(path)
    bad = str(d / "notes.jpg")
    with open(bad, "w") as f:
        f.write("not an image")
    want = model(np.stack([preprocessing.preprocess_for_eval(
        tf.io.read_file(p), SIZE, 8, resize_method="bilinear").numpy() for p in files])).numpy()
    return {"tflite": tfl, "saved": saved, "files": files, "bad": bad, "want": want,
            "camera": data.camera(), "dir": d, "model": model}


def test_tflite_on_files_bytes_and_arrays_matches_keras(exported):
    p = Predictor(exported["tflite"], num_threads=2, top_k=3)
    assert p.runtime == "ai_edge_litert" and p.image_size == SIZE and p.crop_padding == 8
    assert p.resize_method == "bilinear" and p.label_names == LABELS  # from m.tflite.json
    f = exported["files"]
    items = [f[0], exported["bad"], open(f[1], "rb").read(), f[2], exported["camera"]]
    results = p.predict(items, batch_size=2)  # batches of 2: the interpreter input is resized
    assert [r.ok for r in results] == [True, False, True, True, True]
    assert "notes.jpg" in results[1].source and results[1].error
    for r, want in zip([results[0], results[2], results[3]], exported["want"]):
        assert r.classes[0] == int(np.argmax(want))
        np.testing.assert_allclose(r.probabilities, np.sort(want)[::-1][:3], atol=1e-4)
        assert r.names[0] == LABELS[r.classes[0]]
    assert results[4].ok and len(results[4].classes) == 3  # grayscale array, repeated to RGB
    one = p.predict([f[0]], batch_size=1)[0]
    np.testing.assert_allclose(one.probabilities, results[0].probabilities, atol=1e-6)


def test_saved_model_gives_the_same_answers_and_names(exported):
    p = Predictor(exported["saved"], top_k=3)
    assert p.runtime == "saved_model" and p.image_size == SIZE
    results = p.predict(exported["files"])
    for r, want in zip(results, exported["want"]):
        assert r.classes[0] == int(np.argmax(want))
        np.testing.assert_allclose(r.probabilities, np.sort(want)[::-1][:3], atol=1e-4)
        assert r.names == [LABELS[c] for c in r.classes]


def test_cli_prints_names_and_reports_the_bad_file(exported):
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "efficientnet_tf.predict", f"--model={exported['tflite']}",
           "--top_k=2", exported["files"][0], exported["bad"], exported["files"][1]]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]
    lines = [line for line in p.stdout.splitlines() if not line.startswith("#")]
    assert lines[0].startswith(exported["files"][0] + ": thing_") and "%" in lines[0]
    assert lines[1].startswith(exported["bad"] + ": ERROR")
    assert lines[2].startswith(exported["files"][1] + ": thing_")
    assert "1 of 3 file(s) failed" in p.stderr
    js = subprocess.run(cmd[:5] + ["--json", exported["files"][2]], capture_output=True,
                        text=True, env=env, timeout=300)
    assert js.returncode == 0, js.stderr[-2000:]
    out = json.loads(js.stdout)
    assert out[0]["names"][0].startswith("thing_") and len(out[0]["probabilities"]) == 2
    none = subprocess.run(cmd[:5], capture_output=True, text=True, env=env, timeout=300)
    assert none.returncode == 2 and "image files" in none.stderr


def test_float16_file_is_smaller_and_agrees(exported, tmp_path):
    path = export_tflite(exported["model"], str(tmp_path / "m16.tflite"), quantization="float16",
                         crop_padding=8, resize_method="bilinear")
    f32, f16 = Predictor(exported["tflite"], top_k=CLASSES), Predictor(path, top_k=CLASSES)
    for x, y in zip(f32.predict(exported["files"]), f16.predict(exported["files"])):
        np.testing.assert_allclose(sorted(x.probabilities), sorted(y.probabilities), atol=5e-3)
    assert os.path.getsize(path) < 0.6 * os.path.getsize(exported["tflite"])


@needs
def test_predict_cli_on_the_demos_own_exports_with_a_bad_file_among_photos(exported, tmp_path,
                                                                          capsys):
    """The demo (on 256 images, one epoch) exports a SavedModel and a LiteRT file; the predict
    command classifies skimage's photos with each, in Fashion-MNIST's names, and reports the
    non-image file by name without stopping the others."""
    from efficientnet_tf import demo

    out = tmp_path / "demo"
    args = [f"--out={out}", "--max_images=256", "--epochs=1", "--show=0"]
    assert demo.main(args) == 0
    result = json.loads((out / "demo_result.json").read_text())
    # A second run keeps what the first trained: it resumes the finished model (nothing to
    # train) and exports again; another recipe in the same --out is refused, pointing at --fresh.
    model_dir = out / "model-first256"
    checkpoint = tf.train.latest_checkpoint(str(model_dir))
    stamp = os.path.getmtime(checkpoint + ".index")
    capsys.readouterr()
    assert demo.main(args) == 0
    assert f"resuming {checkpoint} (--fresh starts over)" in capsys.readouterr().out
    assert tf.train.latest_checkpoint(str(model_dir)) == checkpoint
    assert os.path.getmtime(checkpoint + ".index") == stamp
    assert demo.main([*args, "--config=fashion_mnist_long"]) == 2
    err = capsys.readouterr().err
    assert "cannot change on a restart" in err and "--fresh" in err
    assert tf.train.latest_checkpoint(str(model_dir)) == checkpoint
    result = json.loads((out / "demo_result.json").read_text())
    names = [c["name"] for c in json.loads((out / "data-first256" / "labels.json").read_text())["classes"]]
    photos = exported["files"]
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "efficientnet_tf.predict", f"--model={result['tflite']}",
           "--top_k=3", "--json", photos[0], exported["bad"], *photos[1:]]
    p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert p.returncode == 1, p.stderr[-2000:]  # one file failed, the others answered
    rows = json.loads(p.stdout)
    assert [r["source"] for r in rows] == [photos[0], exported["bad"], *photos[1:]]
    assert rows[1]["error"] and not rows[1]["classes"]
    good = [rows[0], *rows[2:]]
    for r in good:
        assert r["error"] is None and len(r["classes"]) == 3
        assert r["names"] == [names[c] for c in r["classes"]]  # Fashion-MNIST's, from the export
        assert sum(r["probabilities"]) <= 1 + 1e-5 and r["probabilities"][0] > 0
    # The demo's SavedModel answers too, with the same Fashion-MNIST names. (Its agreement with
    # the LiteRT file is tested on a model with settled BN statistics above; a 2-step model's
    # raw statistics amplify float differences to ~2e-4.)
    for r in Predictor(result["export"], top_k=3).predict(photos):
        assert r.ok and len(r.classes) == 3 and list(r.names) == [names[c] for c in r.classes]


def test_arrays_must_be_pixels_0_to_255(exported):
    """A float array in [0, 1] used to be cast to uint8 (a black image, a confident answer) and a
    uint16 array kept its low byte; both now raise, naming the problem and the fix."""
    p = Predictor(exported["tflite"], top_k=3)
    photo = data.chelsea()[::4, ::4]  # uint8 [75, 113, 3]
    want = p.predict([photo])[0]
    assert want.ok
    same = [photo.astype(np.float32), photo.astype(np.uint16), photo.astype(np.int32)]
    for r in p.predict(same):
        assert r.classes == want.classes
        np.testing.assert_allclose(r.probabilities, want.probabilities, atol=1e-6)
    bad = {"multiply it by 255": photo.astype(np.float32) / 255,
           f"values 0..{int(photo.max()) * 257}, outside 0..255": photo.astype(np.uint16) * 257,
           r"outside \[0, 255\]": photo.astype(np.float32) + 100,
           "NaN or infinite": np.where(photo == photo.max(), np.nan, photo.astype(np.float32)),
           "dtype bool": photo > 100,
           "expected \\[height, width, 3\\]": np.zeros((2, 2, 2, 8, 3), np.uint8)}
    for message, array in bad.items():
        with pytest.raises(ValueError, match="item 1: .*" + message):
            p.predict([photo, array])
    black = p.predict([np.zeros((20, 30, 3), np.float32), np.zeros((20, 30, 3), np.uint8)])
    assert black[0].ok and black[0].probabilities == black[1].probabilities
    assert len(p.predict(np.stack([photo, photo]))) == 2  # [n, h, w, 3]: n images
    one = p.predict(photo)  # [h, w, 3]: one image
    assert len(one) == 1 and one[0].classes == want.classes


def test_top_k_and_batch_size_must_be_at_least_1(exported):
    for k in (0, -1):
        with pytest.raises(ValueError, match=f"top_k must be an integer >= 1, got {k}"):
            Predictor(exported["tflite"], top_k=k)
    with pytest.raises(ValueError, match="batch_size must be an integer >= 1, got 0"):
        Predictor(exported["tflite"]).predict(exported["files"], batch_size=0)


def test_cli_refuses_top_k_below_1(exported):
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    for k in ("0", "-1"):
        cmd = [sys.executable, "-m", "efficientnet_tf.predict", f"--model={exported['tflite']}",
               f"--top_k={k}", exported["files"][0]]
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert p.returncode == 2, p.stderr[-2000:]
        assert p.stderr.strip().splitlines()[-1] == (
            f"efficientnet_tf.predict: error: --top_k must be an integer >= 1, got {k}.")
        assert "Traceback" not in p.stderr and p.stdout == ""
