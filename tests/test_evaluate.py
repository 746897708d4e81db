"""The evaluator (python -m efficientnet_tf.evaluate): the same top-1 as the training job's own
evaluation on small TFRecords, from a model_dir and from a converted weights file; and the
settings it takes from published weights."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from efficientnet_tf import config as cfglib
from efficientnet_tf import evaluate as ev

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLASSES, SIZE = 3, 32
TINY = ["model.width_coefficient=0.1", "model.depth_coefficient=0.1"]


def _write_records(directory):
    """train-* and validation-* of noisy colour patches (class k: a colour), 1-based labels."""
    from efficientnet_tf.data import tfrecord

    rng = np.random.default_rng(0)
    colours = np.array([[200, 40, 40], [40, 200, 40], [40, 40, 200]])
    os.makedirs(directory, exist_ok=True)
    for split, n in (("train", 48), ("validation", 21)):
        with tf.io.TFRecordWriter(os.path.join(directory, f"{split}-00000-of-00001")) as w:
            for i in range(n):
                k = i % CLASSES
                h, wd = rng.integers(36, 60, 2)
                img = np.clip(colours[k] + rng.normal(0, 60, (h, wd, 3)), 0, 255).astype(np.uint8)
                jpeg = tf.io.encode_jpeg(img, quality=90).numpy()
                w.write(tfrecord.make_example(jpeg, label=k + 1, height=int(h),
                                              width=int(wd)).SerializeToString())
            if split == "validation":  # one unreadable image: skipped and counted, not fatal
                w.write(tfrecord.make_example(b"not a jpeg", label=1, height=40,
                                              width=40).SerializeToString())
    with open(os.path.join(directory, "dataset_info.json"), "w") as f:
        json.dump({"num_classes": CLASSES, "label_offset": 1}, f)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    from efficientnet_tf.train.loop import Trainer

    root = tmp_path_factory.mktemp("eval")
    data_dir, model_dir = str(root / "data"), str(root / "model")
    _write_records(data_dir)
    config = cfglib.apply_overrides(cfglib.load_config("efficientnet-b0"), TINY + [
        f"data.data_dir={data_dir}", f"data.image_size={SIZE}", f"data.num_classes={CLASSES}",
        "data.augment_name=none", "use_bfloat16=false", "data.image_dtype=bfloat16",
        "data.deterministic=true",  # the same run on a busy machine (it trains 32 steps only)
        "train_batch_size=8",
        "eval_batch_size=8", "train_steps=32", "steps_per_execution=4", "seed=2",
        "optimizer.warmup_epochs=0", "optimizer.lr=0.2", "optimizer.ema_decay=0.9",
        "model.bn_momentum=0.5"])
    trainer = Trainer(config, model_dir, log=lambda *_: None)
    trainer.train()
    cfglib.save_config(config, model_dir)
    return {"data_dir": data_dir, "model_dir": model_dir, "job": trainer.evaluate(),
            "root": root}


def test_same_top1_as_the_training_job_from_a_model_dir_and_a_weights_file(run):
    job = run["job"]
    assert job["examples"] == 21 and job["ema"]
    assert job["top1"] > 0.5  # above chance (1/3): it learned something of the colours
    from_dir = ev.evaluate_run(run["model_dir"])
    assert from_dir["examples"] == 21 and from_dir["ema"] and from_dir["step"] == 32
    assert from_dir["skipped"] == job["skipped"] == 1
    assert from_dir["top1"] == job["top1"] and from_dir["top5"] == job["top5"]
    np.testing.assert_allclose(from_dir["loss"], job["loss"], rtol=1e-6)
    raw = ev.evaluate_run(run["model_dir"], use_ema=False)  # the weights are what is measured
    assert not raw["ema"] and abs(raw["loss"] - job["loss"]) > 1e-4

    from efficientnet_tf.export.load_run import load_model_for_export

    path = str(run["root"] / "ema.weights.h5")
    load_model_for_export(run["model_dir"]).model.save_weights(path)
    from_file = ev.evaluate_weights(path, "efficientnet-b0", run["data_dir"], image_size=SIZE,
                                    batch_size=8, overrides=TINY)
    assert from_file["examples"] == 21 and from_file["top1"] == job["top1"]
    assert from_file["crop_padding"] == 32 and from_file["resize_method"] == "bicubic_tf1"
    assert from_file["normalization"] == "imagenet"


def test_cli_prints_and_writes_json(run, tmp_path):
    out = tmp_path / "res" / "result.json"
    env = {**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"}
    p = subprocess.run([sys.executable, "-m", "efficientnet_tf.evaluate",
                        f"--model_dir={run['model_dir']}", f"--output={out}"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    result = json.loads(out.read_text())
    assert result["top1"] == run["job"]["top1"] and result["examples"] == 21
    assert f"top-1 {100 * run['job']['top1']:.2f}%" in p.stdout
    bad = subprocess.run([sys.executable, "-m", "efficientnet_tf.evaluate",
                          "--weights=advprop"], capture_output=True, text=True, env=env,
                         timeout=300)
    assert bad.returncode == 2 and "--model_name" in bad.stderr


def test_eval_config_takes_the_published_settings(tmp_path):
    l2 = ev.eval_config("efficientnet-l2", str(tmp_path), weights="noisy-student-475")
    assert l2.data.image_size == 475 and l2.model.normalization == "imagenet"
    assert ev.eval_config("l2", str(tmp_path), weights="noisy-student").data.image_size == 800
    adv = ev.eval_config("efficientnet-b8", str(tmp_path), weights="advprop")
    assert adv.model.normalization == "advprop" and adv.data.image_size == 672
    assert adv.data.crop_padding == 32 and adv.data.resize_method == "bicubic_tf1"
    assert adv.data.num_classes == 1000 and adv.data.label_offset == 1
    with pytest.raises(ValueError, match="Unknown EfficientNet variant"):
        ev.eval_config("efficientnet-b9", str(tmp_path))
