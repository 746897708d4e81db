"""Export: SavedModel signatures for TF Serving, graph hygiene, requests, TFLite, CLI."""
from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest
import tensorflow as tf
from ai_edge_litert.interpreter import Interpreter

import keras
from conftest import tiny_config
from efficientnet_tf import EfficientNet
from efficientnet_tf.data import preprocessing
from efficientnet_tf.export import export_saved_model, model_outputs_logits, next_version

SIZE = 32
CLASSES = 10
TOP_K = 3
LABELS = [f"class_{i}" for i in range(CLASSES)]
BIN = os.path.dirname(sys.executable)


def _tiny_model(classifier_activation=None, **kw):
    return EfficientNet(width_coefficient=0.25, depth_coefficient=0.25, default_size=SIZE,
                        classes=CLASSES, weights=None, classifier_activation=classifier_activation,
                        **kw)


def _train_a_few_steps(model, steps=3):
    """SGD on random data so the BN moving statistics are not their initial 0/1."""
    rng = np.random.default_rng(0)
    opt = keras.optimizers.SGD(0.05)
    for _ in range(steps):
        x = rng.uniform(0, 255, (8, SIZE, SIZE, 3)).astype("float32")
        y = rng.integers(0, CLASSES, 8)
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(y, logits))
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))


@pytest.fixture(scope="module")
def model():
    keras.utils.set_random_seed(1)
    m = _tiny_model(bn_momentum=0.5)
    _train_a_few_steps(m)
    bn = m.get_layer("stem_bn")
    assert np.abs(bn.moving_mean.numpy()).max() > 1e-3  # non-trivial BN statistics
    return m


def _jpeg(image):
    return tf.io.encode_jpeg(image, quality=90).numpy()


def _png(image):
    return tf.io.encode_png(image).numpy()


@pytest.fixture(scope="module")
def images():
    from skimage import data

    astronaut = data.astronaut()  # 512x512x3
    coffee = data.coffee()  # 400x600x3
    camera = data.camera()[..., None]  # 512x512 grayscale
    return {
        "bytes": [_jpeg(astronaut), _png(coffee), _jpeg(camera), _png(camera[::2, ::3])],
        "tensor": np.stack([coffee[:300, :350], astronaut[100:400, 50:400]]).astype(np.uint8),
        "float": np.random.default_rng(2).uniform(0, 255, (3, SIZE, SIZE, 3)).astype(np.float32),
    }


def _probs(model, x):
    return tf.nn.softmax(model(tf.constant(x), training=False)).numpy()


@pytest.fixture(scope="module")
def expected(model, images):
    """Keras predictions on the same preprocessing the signatures run in the graph."""
    pre_bytes = np.stack([preprocessing.preprocess_for_eval(b, SIZE).numpy()
                          for b in images["bytes"]])
    pre_tensor = np.stack([preprocessing.preprocess_image_tensor_for_eval(t, SIZE).numpy()
                           for t in images["tensor"]])
    out = {"serving_default": _probs(model, pre_bytes),
           "serving_image_tensor": _probs(model, pre_tensor),
           "serving_float": _probs(model, images["float"])}
    for p in out.values():  # spread out, so the comparisons below can fail
        assert (p.max(axis=1) - p.min(axis=1)).min() > 0.05
    return out


@pytest.fixture(scope="module")
def export_path(model, tmp_path_factory):
    base = str(tmp_path_factory.mktemp("serving") / "efficientnet")
    path = export_saved_model(model, base, image_size=SIZE, top_k=TOP_K, label_names=LABELS)
    assert path == os.path.join(base, "1")
    assert os.path.isfile(os.path.join(path, "saved_model.pb"))
    assert sorted(os.listdir(base)) == ["1"]  # no temporary directory left behind
    return path


@pytest.fixture(scope="module")
def loaded(export_path):
    return tf.saved_model.load(export_path)


def _check_outputs(out, probs, atol=1e-5):
    np.testing.assert_allclose(out["probabilities"], probs, rtol=0, atol=atol)
    order = np.argsort(-probs, axis=1)[:, :TOP_K]
    np.testing.assert_array_equal(out["classes"], order[:, 0])
    np.testing.assert_array_equal(out["top_k_classes"], order)
    np.testing.assert_allclose(out["top_k_scores"], np.take_along_axis(probs, order, 1), atol=atol)
    names = [n.decode() if isinstance(n, bytes) else n for n in np.asarray(out["class_names"])]
    assert names == [LABELS[i] for i in order[:, 0]]
    assert np.asarray(out["top_k_names"]).shape == order.shape


SUBPROCESS = textwrap.dedent("""
    import importlib.abc, json, sys
    class Block(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "efficientnet_tf":
                raise ImportError("the SavedModel must load without efficientnet_tf")
    sys.meta_path.insert(0, Block())
    import numpy as np, tensorflow as tf
    export_path, inputs_path, outputs_path = sys.argv[1:]
    inputs = np.load(inputs_path, allow_pickle=True)
    loaded = tf.saved_model.load(export_path)
    feeds = {"serving_default": {"image_bytes": tf.constant(list(inputs["bytes"]))},
             "serving_image_tensor": {"image_tensor": tf.constant(inputs["tensor"])},
             "serving_float": {"images": tf.constant(inputs["float"])}}
    result = {}
    for name, feed in feeds.items():
        for key, value in loaded.signatures[name](**feed).items():
            result[name + "/" + key] = value.numpy()
    np.savez(outputs_path, **result)
    print(json.dumps({"signatures": sorted(loaded.signatures),
                      "imported": sorted(m for m in sys.modules if m.split(".")[0] == "efficientnet_tf")}))
""")


def test_signatures_match_keras_in_fresh_subprocess(export_path, images, expected, tmp_path):
    inputs = tmp_path / "inputs.npz"
    np.savez(inputs, bytes=np.array(images["bytes"], dtype=object), tensor=images["tensor"],
             float=images["float"])
    outputs = tmp_path / "outputs.npz"
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    proc = subprocess.run([sys.executable, "-c", SUBPROCESS, export_path, str(inputs),
                           str(outputs)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    assert report == {"signatures": sorted(expected), "imported": []}
    got = np.load(outputs, allow_pickle=True)
    for name, probs in expected.items():
        out = {k.split("/", 1)[1]: got[k] for k in got.files if k.startswith(name + "/")}
        assert out["classes"].dtype == np.int64 and out["top_k_classes"].dtype == np.int64
        assert out["probabilities"].dtype == np.float32
        _check_outputs(out, probs)


def _parse_show_all(text):
    """saved_model_cli show --all -> {signature: {"inputs"|"outputs": {name: (dtype, shape)}}}."""
    text = text.split("Concrete Functions:")[0]
    result = {}
    for block in text.split("signature_def['")[1:]:
        name = block.split("'", 1)[0]
        entry = {"inputs": {}, "outputs": {}}
        for kind, key, dtype, shape in re.findall(
                r"(inputs|outputs)\['(\w+)'\] tensor_info:\s+dtype: (\w+)\s+shape: (\([^)]*\))",
                block):
            entry[kind][key] = (dtype, shape)
        result[name] = entry
    return result


CLI = os.path.join(BIN, "saved_model_cli")


def test_saved_model_cli_show_all(export_path):
    cli = CLI
    show = subprocess.run([cli, "show", "--dir", export_path, "--all"], capture_output=True,
                          text=True, timeout=120)
    assert show.returncode == 0, show.stderr[-2000:]
    sigs = _parse_show_all(show.stdout)
    outputs = {"classes": ("DT_INT64", "(-1)"),
               "probabilities": ("DT_FLOAT", f"(-1, {CLASSES})"),
               "top_k_classes": ("DT_INT64", f"(-1, {TOP_K})"),
               "top_k_scores": ("DT_FLOAT", f"(-1, {TOP_K})"),
               "class_names": ("DT_STRING", "(-1)"),
               "top_k_names": ("DT_STRING", f"(-1, {TOP_K})")}
    assert sigs["serving_default"] == {"inputs": {"image_bytes": ("DT_STRING", "(-1)")},
                                       "outputs": outputs}
    assert sigs["serving_image_tensor"] == {
        "inputs": {"image_tensor": ("DT_UINT8", "(-1, -1, -1, 3)")}, "outputs": outputs}
    assert sigs["serving_float"] == {
        "inputs": {"images": ("DT_FLOAT", f"(-1, {SIZE}, {SIZE}, 3)")}, "outputs": outputs}



def test_saved_model_cli_run_with_a_real_jpeg(export_path, images, expected, tmp_path):
    """saved_model_cli run loads through a TF1 Session, as TF Serving does."""
    cli = CLI
    # A real JPEG as a numpy 'S' array (no pickle needed).
    jpeg = images["bytes"][0]
    assert jpeg[-2:] == b"\xff\xd9"  # ends with EOI, so numpy's 'S' dtype keeps every byte
    np.save(tmp_path / "jpeg.npy", np.array([jpeg]))
    outdir = tmp_path / "out"
    run = subprocess.run([cli, "run", "--dir", export_path, "--tag_set", "serve",
                          "--signature_def", "serving_default",
                          "--inputs", f"image_bytes={tmp_path / 'jpeg.npy'}",
                          "--outdir", str(outdir)], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    probs = np.load(outdir / "probabilities.npy")
    np.testing.assert_allclose(probs, expected["serving_default"][:1], atol=1e-5)
    assert np.load(outdir / "classes.npy").tolist() == [int(expected["serving_default"][0].argmax())]


FORBIDDEN = re.compile(r"Random|TruncatedNormal|Multinomial|Shuffle|Dropout")
WRITES = {"AssignVariableOp", "AssignAddVariableOp", "AssignSubVariableOp"}


def training_only_ops(graph_def) -> list[str]:
    """Random ops, training-mode fused BN and variable writes (BN moving-average updates)."""
    nodes = list(graph_def.node)
    for function in graph_def.library.function:
        nodes.extend(function.node_def)
    bad = []
    for node in nodes:
        if FORBIDDEN.search(node.op) or node.op in WRITES:
            bad.append(node.op)
        elif node.op.startswith("FusedBatchNorm") and node.attr["is_training"].b:
            bad.append(f"{node.op}(is_training=True)")
    return sorted(set(bad))


def test_exported_graph_has_no_training_ops(model, loaded):
    for name in ("serving_default", "serving_image_tensor", "serving_float"):
        graph_def = loaded.signatures[name].graph.as_graph_def()
        assert len(graph_def.library.function) > 0
        ops = {n.op for f in graph_def.library.function for n in f.node_def}
        assert "Conv2D" in ops and "DepthwiseConv2dNative" in ops  # we walked the model's graph
        assert training_only_ops(graph_def) == [], name
    # The walk does catch training mode: the same model traced with training=True.
    train_fn = tf.function(lambda x: model(x, training=True)).get_concrete_function(
        tf.TensorSpec([None, SIZE, SIZE, 3], tf.float32))
    found = training_only_ops(train_fn.graph.as_graph_def())
    assert any("Random" in op for op in found) and "AssignVariableOp" in found, found


def test_signature_table_defines_the_signatures(loaded, images):
    from efficientnet_tf.export.saved_model import SIGNATURE_TABLE, SIGNATURES

    assert SIGNATURES == tuple(e.name for e in SIGNATURE_TABLE)
    assert sorted(loaded.signatures) == sorted(SIGNATURES)
    feeds = {"image_bytes": images["bytes"], "image_tensor": images["tensor"],
             "images": images["float"]}
    assert sorted(feeds) == sorted(e.input_name for e in SIGNATURE_TABLE)
    for entry in SIGNATURE_TABLE:
        assert loaded.signatures[entry.name].structured_input_signature == (
            (), {entry.input_name: entry.spec(SIZE)})
        feed = {entry.input_name: tf.constant(feeds[entry.input_name])}
        want = loaded.signatures[entry.name](**feed)["probabilities"]
        got = getattr(loaded, entry.attr)(**feed)["probabilities"]  # the module's tf.function
        np.testing.assert_array_equal(got, want)


def _from_rest(body: dict, input_name: str) -> dict:
    """Decodes a TF Serving REST predict body ({"instances": ...} or {"inputs": ...}) the way
    the server does: {"b64": ...} objects become bytes."""
    def decode(value):
        if isinstance(value, dict) and set(value) == {"b64"}:
            return base64.b64decode(value["b64"])
        if isinstance(value, list):
            return [decode(v) for v in value]
        return value

    if "instances" in body:
        rows = body["instances"]
        if all(isinstance(r, dict) and set(r) != {"b64"} for r in rows):
            return {k: decode([r[k] for r in rows]) for k in rows[0]}
        return {input_name: decode(rows)}
    inputs = body["inputs"]
    if isinstance(inputs, dict) and set(inputs) != {"b64"}:
        return {k: decode(v) for k, v in inputs.items()}
    return {input_name: decode(inputs)}


def test_predict_request_and_rest_json(loaded, images, expected):
    from tensorflow_serving.apis import predict_pb2

    data = images["bytes"]
    request = predict_pb2.PredictRequest()
    request.model_spec.name = "efficientnet"
    request.model_spec.signature_name = "serving_default"
    request.inputs["image_bytes"].CopyFrom(tf.make_tensor_proto(data, dtype=tf.string))
    wire = request.SerializeToString()
    received = predict_pb2.PredictRequest.FromString(wire)  # what the server parses
    signature = loaded.signatures[received.model_spec.signature_name]
    feed = {k: tf.constant(tf.make_ndarray(v)) for k, v in received.inputs.items()}
    assert feed["image_bytes"].numpy().tolist() == data
    out = {k: v.numpy() for k, v in signature(**feed).items()}
    _check_outputs(out, expected["serving_default"])

    b64 = [{"b64": base64.b64encode(d).decode("ascii")} for d in data]
    for body in ({"signature_name": "serving_default", "instances": b64},
                 {"signature_name": "serving_default", "instances": [{"image_bytes": x} for x in b64]},
                 {"signature_name": "serving_default", "inputs": {"image_bytes": b64}}):
        body = json.loads(json.dumps(body))  # through real JSON text
        feed = _from_rest(body, "image_bytes")
        assert feed["image_bytes"] == data
        out = {k: v.numpy() for k, v in loaded.signatures[body["signature_name"]](
            image_bytes=tf.constant(feed["image_bytes"])).items()}
        _check_outputs(out, expected["serving_default"])


def test_bad_bytes_are_invalid_argument_errors(loaded, images):
    serve = loaded.signatures["serving_default"]
    cases = {b"this is not an image": "Unknown image file format",
             b"": "empty string",
             images["bytes"][0][:200]: "JPEG"}  # truncated JPEG
    for bad, message in cases.items():
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            serve(image_bytes=tf.constant([images["bytes"][1], bad]))
    # still serves after the errors
    assert serve(image_bytes=tf.constant(images["bytes"][:1]))["classes"].shape == (1,)


def test_serving_float_refuses_another_image_size(loaded, images):
    """Before, the loaded signature ran a 40x40 batch through the model without a word."""
    serve = loaded.signatures["serving_float"]
    wrong = tf.zeros([2, SIZE + 8, SIZE + 8, 3])
    with pytest.raises(tf.errors.InvalidArgumentError,
                       match=rf"images must be \[batch, {SIZE}, {SIZE}, 3\].*got shape\] "
                             rf"\[2 {SIZE + 8} {SIZE + 8} 3\]"):
        serve(images=wrong)
    assert serve(images=tf.constant(images["float"]))["classes"].shape == (3,)


def test_empty_batch_gives_empty_outputs(loaded, export_path, tmp_path):
    """Before, 0 images failed inside the model ("Incompatible shapes: [8] vs. [0,32,32,3]")."""
    feeds = {"serving_default": {"image_bytes": tf.zeros([0], tf.string)},
             "serving_image_tensor": {"image_tensor": tf.zeros([0, 50, 60, 3], tf.uint8)},
             "serving_float": {"images": tf.zeros([0, SIZE, SIZE, 3])}}
    want = {"classes": ((0,), tf.int64), "probabilities": ((0, CLASSES), tf.float32),
            "top_k_classes": ((0, TOP_K), tf.int64), "top_k_scores": ((0, TOP_K), tf.float32),
            "class_names": ((0,), tf.string), "top_k_names": ((0, TOP_K), tf.string)}
    for name, feed in feeds.items():
        out = loaded.signatures[name](**feed)
        assert {k: (tuple(v.shape), v.dtype) for k, v in out.items()} == want, name
    # Through a TF1 Session too, as TF Serving runs it.
    np.save(tmp_path / "empty.npy", np.zeros([0, SIZE, SIZE, 3], np.float32))
    run = subprocess.run([CLI, "run", "--dir", export_path, "--tag_set", "serve",
                          "--signature_def", "serving_float",
                          "--inputs", f"images={tmp_path / 'empty.npy'}",
                          "--outdir", str(tmp_path / "out")], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert np.load(tmp_path / "out" / "probabilities.npy").shape == (0, CLASSES)


def test_softmax_models_are_not_softmaxed_twice():
    assert model_outputs_logits(_tiny_model(None)) is True
    soft = _tiny_model("softmax")
    assert model_outputs_logits(soft) is False
    inputs = keras.Input((SIZE, SIZE, 3))
    odd = keras.Model(inputs, keras.layers.Activation("relu")(keras.layers.Flatten()(inputs)))
    with pytest.raises(ValueError, match="outputs_are_logits"):
        model_outputs_logits(odd)
    from efficientnet_tf.export import ServingModule

    x = np.random.default_rng(3).uniform(0, 255, (2, SIZE, SIZE, 3)).astype(np.float32)
    module = ServingModule(soft, SIZE, outputs_are_logits=False)
    np.testing.assert_allclose(module.serve_float(tf.constant(x))["probabilities"],
                               soft(x, training=False), atol=1e-6)


def test_versions_and_bad_arguments(model, tmp_path):
    base = tmp_path / "m"
    assert next_version(str(base)) == 1
    for name in ("1", "3", "7_tflite", ".tmp-9-1", "variables"):
        (base / name).mkdir(parents=True)
    assert next_version(str(base)) == 4
    with pytest.raises(FileExistsError, match="overwrite"):
        export_saved_model(model, str(base), version=3)
    with pytest.raises(ValueError, match="version"):
        export_saved_model(model, str(base), version="latest")
    with pytest.raises(ValueError, match="label_names has 2 names"):
        export_saved_model(model, str(base), version=5, label_names=["a", "b"])
    with pytest.raises(ValueError, match="resize_method"):
        export_saved_model(model, str(base), version=5, resize_method="nearest")
    assert not (base / "5").exists()


def _dead_pid():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_next_export_removes_stale_temp_dirs_only(model, tmp_path, caplog):
    """A crashed export's .tmp-<version>-<pid> folder used to stay forever. The next export
    removes it once its process is gone and it is unchanged for 10 minutes; a live export's
    folder, and a recent one (maybe another host's), are kept."""
    from efficientnet_tf.export import remove_stale_temp_dirs

    base = tmp_path / "serving"
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        old = time.time() - 3600
        dirs = {"crashed": base / f".tmp-1-{_dead_pid()}",
                "live": base / f".tmp-2-{live.pid}",
                "recent": base / f".tmp-3-{_dead_pid()}"}
        for name, d in dirs.items():
            (d / "variables").mkdir(parents=True)
            (d / "variables" / "variables.index").write_bytes(b"x")
            if name != "recent":
                for p in (d / "variables" / "variables.index", d / "variables", d):
                    os.utime(p, (old, old))
        with caplog.at_level("WARNING"):
            path = export_saved_model(model, str(base), image_size=SIZE, version=4)
        assert path == str(base / "4") and (base / "4" / "saved_model.pb").exists()
        assert not dirs["crashed"].exists()
        assert dirs["live"].exists() and dirs["recent"].exists()
        removed = [r.getMessage() for r in caplog.records if "Removed" in r.getMessage()]
        assert len(removed) == 1 and str(dirs["crashed"]) in removed[0]
        assert remove_stale_temp_dirs(str(base)) == []  # nothing else is stale
    finally:
        live.kill()
        live.wait()
    assert remove_stale_temp_dirs(str(base)) == [str(dirs["live"])]  # its process is gone now
    assert remove_stale_temp_dirs(str(base), stale_after_s=0) == [str(dirs["recent"])]


def test_check_export_dir(tmp_path):
    from efficientnet_tf.export import check_export_dir

    check_export_dir(str(tmp_path / "new" / "serving"))  # made, probed, removed again
    assert not os.path.exists(tmp_path / "new")
    (tmp_path / "file").write_text("x")
    with pytest.raises(ValueError, match="--export_dir=.*file is a file, not a folder"):
        check_export_dir(str(tmp_path / "file"))
    with pytest.raises(ValueError, match="--export_dir=.*file/sub cannot be written"):
        check_export_dir(str(tmp_path / "file" / "sub"))


def test_export_cli_checks_export_dir_before_loading(tmp_path):
    """model_dir does not exist either: the export_dir error shows the check runs first."""
    (tmp_path / "file").write_text("x")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2",
           "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    for export_dir, problem in ((tmp_path / "file", "is a file, not a folder"),
                                (tmp_path / "file" / "sub", "cannot be written (")):
        cmd = [sys.executable, "-m", "efficientnet_tf.export",
               f"--model_dir={tmp_path / 'no_such_run'}", f"--export_dir={export_dir}"]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
        assert proc.returncode == 2, proc.stderr[-3000:]
        last = proc.stderr.strip().splitlines()[-1]
        assert last.startswith(f"efficientnet_tf.export: error: --export_dir={export_dir} "
                               f"{problem}")
        assert "Traceback" not in proc.stderr and proc.stdout == ""


def _write_validation_tfrecords(directory, images_uint8):
    from efficientnet_tf.data import tfrecord

    os.makedirs(directory, exist_ok=True)
    with tf.io.TFRecordWriter(os.path.join(directory, "validation-00000-of-00001")) as w:
        for i, image in enumerate(images_uint8):
            ex = tfrecord.make_example(_jpeg(image), label=i % CLASSES + 1,
                                       height=image.shape[0], width=image.shape[1])
            w.write(ex.SerializeToString())


def test_tflite_float32_matches_keras(model, images, expected, tmp_path):
    from efficientnet_tf.export import tflite

    if not tflite.tflite_available():
        pytest.skip("this TensorFlow has no tf.lite.TFLiteConverter")
    path = tflite.export_tflite(model, str(tmp_path / "m.tflite"), image_size=SIZE)
    got = tflite.run_tflite(path, images["float"])
    np.testing.assert_allclose(got, expected["serving_float"], rtol=0, atol=1e-5)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.tflite", "m.tflite.json"]  # no temp file


def test_tflite_interface_is_serving_float(model, loaded, images, tmp_path):
    from efficientnet_tf.export import tflite

    if not tflite.tflite_available():
        pytest.skip("this TensorFlow has no tf.lite.TFLiteConverter")
    path = tflite.export_tflite(model, str(tmp_path / "m.tflite"), image_size=SIZE)
    interpreter = Interpreter(model_path=path)  # ai_edge_litert, the supported interpreter
    (inp,), (out,) = interpreter.get_input_details(), interpreter.get_output_details()
    assert inp["dtype"] == np.float32 and inp["shape"].tolist() == [1, SIZE, SIZE, 3]
    assert out["dtype"] == np.float32 and out["shape"].tolist() == [1, CLASSES]
    (runner,) = interpreter.get_signature_list().values()
    assert runner == {"inputs": ["images"], "outputs": ["probabilities"]}
    serving_float = loaded.signatures["serving_float"]
    assert list(serving_float.structured_input_signature[1]) == runner["inputs"]
    want = serving_float(images=tf.constant(images["float"]))["probabilities"].numpy()
    np.testing.assert_allclose(tflite.run_tflite(path, images["float"]), want, rtol=0, atol=1e-5)


INT8_ATOL = 0.1  # probabilities; int8 weights and activations of a barely trained tiny net


def test_tflite_int8_calibrated_on_tfrecords(model, images, expected, tmp_path):
    from efficientnet_tf.export import tflite

    if not tflite.tflite_available():
        pytest.skip("this TensorFlow has no tf.lite.TFLiteConverter")
    from skimage import data

    photos = [data.astronaut(), data.coffee(), data.chelsea(), data.rocket(), data.immunohistochemistry()]
    _write_validation_tfrecords(tmp_path / "records", photos)
    calib = tflite.tfrecord_calibration_images(str(tmp_path / "records"), SIZE, CLASSES,
                                               num_images=5)
    assert len(list(calib())) == 5
    path = tflite.export_tflite(model, str(tmp_path / "int8.tflite"), quantization="int8",
                                representative_data=calib, image_size=SIZE)
    interpreter = Interpreter(model_path=path)  # ai_edge_litert, the supported interpreter
    kinds = {d["dtype"] for d in interpreter.get_tensor_details()}
    assert np.int8 in kinds  # really quantized inside
    pre = np.stack([preprocessing.preprocess_for_eval(_jpeg(p), SIZE).numpy() for p in photos])
    want = _probs(model, pre)
    got = tflite.run_tflite(path, pre)
    err = np.abs(got - want).max()
    print(f"int8 TFLite vs Keras: max |probability difference| {err:.4f}")
    assert err < INT8_ATOL
    assert os.path.getsize(path) < os.path.getsize(
        tflite.export_tflite(model, str(tmp_path / "f.tflite"), image_size=SIZE)) / 2


@pytest.fixture(scope="module")
def trained_model_dir(tmp_path_factory):
    """A real training job's model_dir: config.yaml + CheckpointManager checkpoints with EMA."""
    from efficientnet_tf import config as cfglib
    from efficientnet_tf.train.loop import Trainer

    model_dir = tmp_path_factory.mktemp("model_dir")
    config = tiny_config(
        "data.synthetic=true",
        "data.synthetic_examples=32", "train_batch_size=8", "eval_batch_size=8",
        "train_steps=4", "steps_per_execution=2", "checkpoint_every_steps=2", "seed=3")
    assert config.optimizer.ema_decay
    trainer = Trainer(config, str(model_dir), log=lambda *_: None)
    trainer.train()
    cfglib.save_config(config, str(model_dir))
    x = np.random.default_rng(4).uniform(0, 255, (2, 32, 32, 3)).astype(np.float32)
    raw = _probs(trainer.model, x)
    with trainer.ema_weights():
        ema = _probs(trainer.model, x)
    assert np.abs(raw - ema).max() > 1e-4  # so the test can tell which weights were exported
    return {"dir": str(model_dir), "x": x, "raw": raw, "ema": ema}


def test_load_model_for_export_uses_ema_weights(trained_model_dir):
    from efficientnet_tf.export import load_model_for_export

    d = trained_model_dir
    loaded = load_model_for_export(d["dir"])
    assert loaded.ema and loaded.step == 4
    assert loaded.describe().startswith("EMA weights from step 4")
    np.testing.assert_allclose(_probs(loaded.model, d["x"]), d["ema"], atol=1e-6)
    raw = load_model_for_export(d["dir"], use_ema=False)
    assert not raw.ema and "raw weights" in raw.describe()
    np.testing.assert_allclose(_probs(raw.model, d["x"]), d["raw"], atol=1e-6)
    with pytest.raises(FileNotFoundError, match="config.yaml"):
        load_model_for_export(os.path.dirname(d["dir"]))


@pytest.mark.slow  # a whole export in a child process
def test_cli_exports_ema_weights_end_to_end(trained_model_dir, tmp_path):
    d = trained_model_dir
    export_dir = tmp_path / "serving"
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    cmd = [sys.executable, "-m", "efficientnet_tf.export", f"--model_dir={d['dir']}",
           f"--export_dir={export_dir}", "--top_k=2", "--tflite=float32"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "EMA weights from step 4" in proc.stdout
    path = export_dir / "1"
    assert (export_dir / "tflite" / "1_float32.tflite").is_file()
    loaded = tf.saved_model.load(str(path))
    out = loaded.signatures["serving_float"](images=tf.constant(d["x"]))
    np.testing.assert_allclose(out["probabilities"].numpy(), d["ema"], atol=1e-5)
    assert out["top_k_classes"].shape == (2, 2)
    # A second run (BN folded) adds version 2; bad flags exit 2 with a message.
    proc = subprocess.run(cmd[:5] + ["--fold_batch_norm"], capture_output=True, text=True,
                          env=env, timeout=300)
    assert proc.returncode == 0 and (export_dir / "2" / "saved_model.pb").is_file()
    out = tf.saved_model.load(str(export_dir / "2")).signatures["serving_float"](
        images=tf.constant(d["x"]))
    np.testing.assert_allclose(out["probabilities"].numpy(), d["ema"], atol=1e-5)
    proc = subprocess.run(cmd[:5] + ["--image_size=48", "--version=7"], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    spec = tf.saved_model.load(str(export_dir / "7")).signatures["serving_float"]
    assert spec.structured_input_signature[1]["images"].shape.as_list() == [None, 48, 48, 3]
    bad = subprocess.run(cmd[:5] + ["--version=1"],
                         capture_output=True, text=True, env=env, timeout=300)
    assert bad.returncode == 2 and "already exists" in bad.stderr


def test_fold_batch_norm_keeps_outputs(model, images, expected):
    from efficientnet_tf.export import fold_batch_norm
    from efficientnet_tf.export.fold import foldable_pairs

    n_bn = sum(isinstance(l, keras.layers.BatchNormalization) for l in model.layers)
    assert len(foldable_pairs(model)) == n_bn > 0  # every BN here follows a conv
    folded = fold_batch_norm(model)
    assert not any(isinstance(l, keras.layers.BatchNormalization) for l in folded.layers)
    assert folded.get_layer("stem_conv").use_bias and not model.get_layer("stem_conv").use_bias
    np.testing.assert_allclose(_probs(folded, images["float"]), expected["serving_float"],
                               rtol=0, atol=1e-5)
