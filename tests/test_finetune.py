"""Fine-tuning: init_weights loaded once into a fresh run, freeze specs (frozen kernels and BN
statistics bit for bit), the two-phase switch, layer-wise learning-rate decay, image folders as
data_dir, and every bad input stopping before anything is written."""
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_NETWORK
from efficientnet_tf import config as cfglib
from efficientnet_tf.factory import build_model_from_config
from efficientnet_tf.train import finetune
from efficientnet_tf.train.loop import Trainer
from efficientnet_tf.train.main import prepare_finetuning

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = [*TINY_NETWORK, "data.synthetic=true",
        "data.synthetic_examples=32", "data.image_size=32", "train_batch_size=8",
        "eval_batch_size=8", "steps_per_execution=2", "optimizer.warmup_epochs=0",
        "optimizer.ema_decay=0", "seed=3", "model.bn_momentum=0.5"]


def _config(*overrides, classes=3):
    return cfglib.apply_overrides(cfglib.load_config("fashion_mnist"),
                                  TINY + [f"data.num_classes={classes}", *overrides])


@pytest.fixture(scope="module")
def source(tmp_path_factory):
    """A 5-class tiny model's weights, trained a little (non-trivial BN statistics)."""
    d = tmp_path_factory.mktemp("source")
    cfg = _config("train_steps=2", classes=5)
    t = Trainer(cfg, str(d / "run"), log=lambda *_: None)
    t.train()
    cfglib.save_config(cfg, str(d / "run"))  # as the training job does: a model_dir source
    path = str(d / "source.weights.h5")
    t.model.save_weights(path)
    return {"path": path, "weights": {v.path: v.numpy() for v in t.model.weights},
            "run": str(d / "run")}


def _logs():
    lines = []
    return lines, lines.append


def _weights(model):
    return {v.path: v.numpy() for v in model.weights}


def _restored(cfg, checkpoint):
    """The model weights a checkpoint holds, by our variable paths."""
    model = build_model_from_config(cfg)
    tf.train.Checkpoint(model=model).restore(checkpoint).expect_partial()
    return _weights(model)


def _backbone(path):
    return not path.startswith("predictions/") and "seed_generator" not in path


def test_freeze_backbone_keeps_the_source_bit_for_bit_with_a_new_head(source, tmp_path):
    lines, log = _logs()
    cfg = _config("train_steps=4", f"finetune.init_weights={source['path']}",
                  "finetune.freeze=backbone")
    t = Trainer(cfg, str(tmp_path), log=log)
    assert t.init_report is not None and t.init_report.reinitialized == ["predictions"]
    assert any(line.startswith(f"Initialized from {source['path']}") and "re-initialized" in line
               for line in lines), lines
    assert [v.path for v in t.model.trainable_variables] == ["predictions/kernel",
                                                            "predictions/bias"]
    assert len(t.optimizer.variables) < 10  # slots only for the head (and the counters)
    head_before = t.model.get_layer("predictions").kernel.numpy().copy()
    t.train()
    after = _weights(t.model)
    for path, value in source["weights"].items():
        if _backbone(path):
            np.testing.assert_array_equal(after[path], value, err_msg=path)  # BN stats too
    assert after["predictions/kernel"].shape[-1] == 3
    assert not np.array_equal(after["predictions/kernel"], head_before)  # the head trained
    saved = _restored(cfg, t.manager.latest_checkpoint)
    for path in ("stem_conv/kernel", "stem_bn/moving_mean", "block7a_project_bn/moving_variance"):
        np.testing.assert_array_equal(saved[path], source["weights"][path], err_msg=path)
    np.testing.assert_array_equal(saved["predictions/kernel"], after["predictions/kernel"])


def test_freeze_none_trains_everything_and_a_restart_never_reloads_the_source(source, tmp_path):
    src = str(tmp_path / "copy.weights.h5")
    tf.io.gfile.copy(source["path"], src)
    cfg = _config("train_steps=2", f"finetune.init_weights={src}")
    t = Trainer(cfg, str(tmp_path / "run"), log=lambda *_: None)
    t.train()
    after = _weights(t.model)
    changed = [p for p, v in source["weights"].items() if _backbone(p)
               and not np.array_equal(after[p], v)]
    assert "stem_conv/kernel" in changed and "stem_bn/moving_mean" in changed
    os.remove(src)  # the source is gone: a restart must not need it
    lines, log = _logs()
    again = Trainer(_config("train_steps=4", f"finetune.init_weights={src}"),
                    str(tmp_path / "run"), log=log)
    assert again.init_report is None
    again.train()
    assert any(line.startswith("Restored ") and "(step 2)" in line for line in lines), lines
    assert not any("Initialized from" in line for line in lines)


def test_our_model_dir_is_a_source_too(source, tmp_path):
    lines, log = _logs()
    t = Trainer(_config("train_steps=2", f"finetune.init_weights={source['run']}",
                        classes=5), str(tmp_path), log=log)
    assert t.init_report.reinitialized == []  # same classes: the head is kept
    np.testing.assert_array_equal(t.model.get_layer("predictions").kernel.numpy(),
                                  source["weights"]["predictions/kernel"])
    assert "ckpt-2" in t.init_report.path


def test_two_phases_switch_at_the_configured_step(source, tmp_path):
    lines, log = _logs()
    # 32 synthetic examples / batch 8 = 4 steps per epoch: the switch is at step 4.
    cfg = _config("train_steps=6", f"finetune.init_weights={source['path']}",
                  "finetune.freeze=backbone", "finetune.unfreeze_at_epoch=1",
                  "finetune.unfreeze_to=block5", "finetune.unfreeze_lr_scale=0.1",
                  "checkpoint_every_steps=2")
    t = Trainer(cfg, str(tmp_path), log=log)
    t.train()
    assert any("Fine-tuning phase from step 0: freeze=backbone" in line for line in lines)
    assert any("Fine-tuning phase from step 4: freeze=block5" in line for line in lines), lines
    ckpt4 = _restored(cfg, os.path.join(str(tmp_path), "ckpt-4"))
    final = _weights(t.model)
    np.testing.assert_array_equal(ckpt4["block6a_project_conv/kernel"], source["weights"][
        "block6a_project_conv/kernel"])  # frozen in phase 1
    assert not np.array_equal(final["block6a_project_conv/kernel"],
                              source["weights"]["block6a_project_conv/kernel"])  # trains in 2
    np.testing.assert_array_equal(final["stem_conv/kernel"], source["weights"]["stem_conv/kernel"])
    lr = t.lr_schedule
    assert float(lr(5)) == pytest.approx(0.1 * float(lr.schedule(5)))
    assert float(lr(3)) == pytest.approx(float(lr.schedule(3)))


def test_layer_decay_scales_each_stage_update(tmp_path):
    def one_step(decay):
        cfg = _config("train_steps=1", "optimizer.name=sgd", "optimizer.momentum=0",
                      "optimizer.lr=50",  # one big step: updates far above float32 rounding
                      "optimizer.weight_decay=0", "optimizer.nesterov=false",
                      *([f"finetune.layer_decay={decay}"] if decay else []))
        t = Trainer(cfg, str(tmp_path / str(decay)), log=lambda *_: None)
        before = _weights(t.model)
        t.train()
        return {p: v - before[p] for p, v in _weights(t.model).items()
                if p.endswith("kernel")}

    plain, decayed = one_step(None), one_step(0.5)
    stages = 7
    for path, depth in (("predictions/kernel", 0), ("top_conv/kernel", 0),
                        ("block7a_project_conv/kernel", 1), ("block1a_dwconv/kernel", stages),
                        ("stem_conv/kernel", stages + 1)):
        # (new - old) in float32 rounds to ~1e-8 of weights ~0.1: atol covers that.
        np.testing.assert_allclose(decayed[path], plain[path] * 0.5 ** depth, rtol=1e-3,
                                   atol=5e-8, err_msg=path)
        assert np.abs(plain[path] * 0.5 ** depth).max() > 1e-5, path
        assert np.abs(plain[path]).max() > 0, path


def _folder(root, classes, per_class=6, bad=False):
    rng = np.random.default_rng(0)
    for c in range(classes):
        d = os.path.join(root, f"class_{c}")
        os.makedirs(d, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)
            with open(os.path.join(d, f"{i}.jpg"), "wb") as f:
                f.write(tf.io.encode_jpeg(img).numpy())
    if bad:
        with open(os.path.join(root, "class_0", "broken.jpg"), "wb") as f:
            f.write(b"not a jpeg")
    return str(root)


def test_an_image_folder_is_converted_once_into_the_model_dir(tmp_path):
    data = _folder(tmp_path / "photos", 3, bad=True)
    model_dir = str(tmp_path / "run")
    lines, log = _logs()
    cfg = cfglib.apply_overrides(_config(), ["data.synthetic=false", f"data.data_dir={data}"])
    out = prepare_finetuning(cfg, model_dir, log=log)
    assert out.data.data_dir == os.path.join(model_dir, "data") and out.data.num_classes == 3
    assert any("broken.jpg" in line and "skipped 1 unreadable" in line for line in lines), lines
    import json

    info = json.load(open(os.path.join(model_dir, "data", "dataset_info.json")))
    assert info["num_classes"] == 3
    n_val, n_train = (info["splits"][k]["num_examples"] for k in ("validation", "train"))
    assert n_val + n_train == 18  # 19 files, the broken one skipped
    assert n_val in (2, 3)  # one file per class held out (10% of 6-7, at least 1)
    lines.clear()
    prepare_finetuning(cfg, model_dir, log=log)
    assert lines == [f"Reusing the TFRecords of {data} in {os.path.join(model_dir, 'data')} "
                     "(same files as when converted)."]
    # Another folder with the same classes, or this one changed, is refused, never reused.
    other = _folder(tmp_path / "other", 3, per_class=5)
    with pytest.raises(ValueError, match=r"holds the TFRecords of .*photos.*not of .*other"):
        prepare_finetuning(cfglib.apply_overrides(cfg, [f"data.data_dir={other}"]), model_dir,
                           log=log)
    os.remove(os.path.join(data, "class_1", "0.jpg"))
    with pytest.raises(ValueError, match="use a new --model_dir"):
        prepare_finetuning(cfg, model_dir, log=log)
    t = Trainer(cfglib.apply_overrides(out, ["train_steps=1"]), model_dir, log=lambda *_: None)
    t.train()
    assert t.evaluate()["examples"] == n_val


@pytest.mark.parametrize("case,message", [
    ("one_class", "needs at least two"),
    ("no_images", "no images in its class folders"),
    ("freeze_all", "freezes every stage"),
    ("freeze_syntax", "finetune.freeze must be none, backbone or blockN"),
    ("other_architecture", "shape mismatch"),
])
def test_bad_inputs_stop_before_anything_is_written(tmp_path, source, case, message):
    model_dir = tmp_path / "run"
    overrides = []
    if case == "one_class":
        overrides = ["data.synthetic=false", f"data.data_dir={_folder(tmp_path / 'p', 1)}"]
    elif case == "no_images":
        os.makedirs(tmp_path / "p" / "a")
        os.makedirs(tmp_path / "p" / "b")
        overrides = ["data.synthetic=false", f"data.data_dir={tmp_path / 'p'}"]
    elif case == "freeze_all":
        overrides = ["finetune.freeze=block7"]
    elif case == "freeze_syntax":
        overrides = ["finetune.freeze=stage5"]
    else:  # a 5-class source of width 0.1 into a width-0.2 model
        overrides = ["model.width_coefficient=0.2", f"finetune.init_weights={source['path']}"]
    with pytest.raises(ValueError, match=message):
        prepare_finetuning(_config(*overrides), str(model_dir), log=lambda *_: None)
    assert not model_dir.exists()


def test_cli_exits_2_on_bad_input_and_writes_nothing(tmp_path):
    model_dir = tmp_path / "run"
    p = subprocess.run(
        [sys.executable, "-m", "efficientnet_tf.train", "--config=fashion_mnist",
         f"--data_dir={_folder(tmp_path / 'p', 1)}", f"--model_dir={model_dir}",
         "--init_weights=imagenet"],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "PYTHONPATH": REPO, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert p.returncode == 2 and "needs at least two" in p.stderr, p.stderr[-2000:]
    assert not model_dir.exists()


def test_frozen_layers_and_stage_scales_follow_the_model():
    model = build_model_from_config(_config())
    assert finetune.frozen_layers(model, "none") == []
    names = {la.name for la in finetune.frozen_layers(model, "block5")}
    assert "stem_conv" in names and "block5a_project_bn" in names
    assert "block6a_expand_conv" not in names and "top_conv" not in names
    scales = finetune.layer_lr_scales(model, 0.5)
    assert scales[id(model.get_layer("block6a_expand_conv").kernel)] == 0.5 ** 2
    with pytest.raises(ValueError, match="use none, backbone, or blockN"):
        finetune.parse_freeze("top")
    keras.backend.clear_session()


def test_a_published_source_brings_its_normalization(tmp_path):
    lines, log = _logs()
    cfg = _config("finetune.init_weights=advprop", "finetune.freeze=backbone")
    with pytest.raises(ValueError, match="exists for b0, .*not for a custom scaling"):
        prepare_finetuning(cfg, str(tmp_path / "run"), log=log)  # checked, nothing fetched
    assert lines == ["model.normalization=advprop: what the 'advprop' weights were trained "
                     "with (the config said 'auto')."]
    assert not (tmp_path / "run").exists()
