"""Training configs: shipped recipes, YAML errors, overrides, config.yaml round trip."""
import dataclasses
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from efficientnet_tf.spec import VARIANTS
from efficientnet_tf.train import config as cfg

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_shipped_recipes_follow_the_paper():
    names = cfg.available_configs()
    assert {f"efficientnet-b{i}" for i in range(8)} | {"fashion_mnist"} <= set(names)
    for key, variant in VARIANTS.items():
        c = cfg.load_config(f"efficientnet-{key}")
        assert c.model.model_name == f"efficientnet-{key}"
        assert c.data.image_size == variant.resolution
        assert c.model.dropout_rate == variant.dropout_rate
        assert c.model.drop_connect_rate == 0.2
        assert c.model.width_coefficient is None and c.model.phi is None  # from the registry
        o = c.optimizer
        assert (o.name, o.lr, o.rho, o.momentum, o.epsilon) == ("rmsprop_tf1", 0.016, 0.9, 0.9, 1e-3)
        assert (o.schedule, o.warmup_epochs, o.decay_epochs, o.decay_rate) == (
            "exponential", 5.0, 2.4, 0.97)
        assert (o.weight_decay, o.label_smoothing, o.ema_decay) == (1e-5, 0.1, 0.9999)
        assert (c.train_batch_size, c.epochs, c.use_bfloat16) == (4096, 350.0, True)
        assert c.data.augment_name == "autoaugment" and c.data.label_offset == 1
        assert c.model.num_classes == c.data.num_classes == 1000
    # The shipped defaults equal the dataclass defaults for the recipe (one source of truth).
    assert cfg.load_config("efficientnet-b0").optimizer == cfg.OptimizerConfig()


def test_fashion_mnist_recipe():
    c = cfg.load_config("fashion_mnist")
    assert c.data.image_size == 32 and c.model.stem_strides == 1
    assert c.model.num_classes == c.data.num_classes == 10
    assert c.data.label_offset == 1  # the converter writes 1-based labels
    assert c.train_batch_size == 128 and c.use_bfloat16 is False
    scaled = (c.model.phi is not None and c.model.phi < 0) or (
        c.model.width_coefficient is not None and c.model.width_coefficient < 1)
    assert scaled


def test_name_aliases_paths_and_the_top_level_configs_dir(tmp_path):
    assert cfg.load_config("b3") == cfg.load_config("efficientnet-b3")
    assert cfg.load_config("efficientnetb3") == cfg.load_config("efficientnet-b3")
    path = os.path.join(REPO, "configs", "efficientnet-b2.yaml")
    assert os.path.samefile(path, os.path.join(cfg.CONFIG_DIR, "efficientnet-b2.yaml"))
    assert cfg.load_config(path) == cfg.load_config("efficientnet-b2")
    with pytest.raises(ValueError, match="Did you mean fashion_mnist"):
        cfg.load_config("fashion-mnist")
    with pytest.raises(ValueError, match="Shipped recipes: efficientnet-b0, "):
        cfg.load_config("resnet50")
    with pytest.raises(ValueError, match="does not exist"):
        cfg.load_config(str(tmp_path / "missing.yaml"))


def _write(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(text)
    return str(path)


def test_yaml_unknown_keys_and_bad_values_name_key_and_file(tmp_path):
    path = _write(tmp_path, "optimizer:\n  learning_rate: 0.1\n")
    with pytest.raises(ValueError) as e:
        cfg.load_config(path)
    assert "optimizer.learning_rate" in str(e.value) and path in str(e.value)
    path = _write(tmp_path, "train_batch_sise: 8\n")
    with pytest.raises(ValueError, match="Did you mean train_batch_size"):
        cfg.load_config(path)
    path = _write(tmp_path, "data:\n  image_size: big\n")
    with pytest.raises(ValueError, match=r"data.image_size: cannot convert 'big' to int"):
        cfg.load_config(path)
    path = _write(tmp_path, "model: efficientnet-b0\n")
    with pytest.raises(ValueError, match="must be a mapping"):
        cfg.load_config(path)
    path = _write(tmp_path, "model:\n  model_name: efficientnet-b9\n")
    with pytest.raises(ValueError, match="Unknown EfficientNet variant"):
        cfg.load_config(path)
    path = _write(tmp_path, "data:\n  num_classes: 10\n")
    with pytest.raises(ValueError, match="model.num_classes .1000. and data.num_classes .10."):
        cfg.load_config(path)
    path = _write(tmp_path, "model: [1\n")
    with pytest.raises(ValueError, match="not valid YAML"):
        cfg.load_config(path)


def test_yaml_partial_file_takes_defaults_and_converts_types(tmp_path):
    # PyYAML reads 1e-4 (no dot) as a string; the float field still gets a float.
    path = _write(tmp_path, "optimizer:\n  lr: 1e-4\n  name: adam\nepochs: 3\ntrain_steps: '100'\n")
    c = cfg.load_config(path)
    assert c.optimizer.lr == 1e-4 and isinstance(c.optimizer.lr, float)
    assert c.optimizer.name == "adam" and c.epochs == 3.0 and c.train_steps == 100
    assert c.model == cfg.ModelConfig() and c.eval_batch_size == 1024


def test_overrides_convert_types():
    base = cfg.load_config("efficientnet-b0")
    c = cfg.apply_overrides(base, [
        "optimizer.lr=0.1", "data.image_size=64", "use_bfloat16=false", "train_steps=10",
        "data.augment_name=none", "model.phi=-1.5", "model.model_name=custom",
        "optimizer.weight_decay=1e-4", "data.seed=7", "checkpoint_every_steps=null"])
    assert c.optimizer.lr == 0.1 and c.data.image_size == 64 and c.use_bfloat16 is False
    assert c.train_steps == 10 and c.data.augment_name is None and c.model.phi == -1.5
    assert c.optimizer.weight_decay == 1e-4 and c.data.seed == 7
    assert base.optimizer.lr == 0.016  # the input is not modified
    # model.num_classes alone sets data.num_classes too; both together must agree.
    c = cfg.apply_overrides(base, ["model.num_classes=10"])
    assert c.model.num_classes == c.data.num_classes == 10
    with pytest.raises(ValueError, match="differ"):
        cfg.apply_overrides(base, ["model.num_classes=10", "data.num_classes=5"])
    assert cfg.apply_overrides(base, []) == base


@pytest.mark.parametrize("override, message", [
    ("optimizer.lrr=1", "Did you mean lr"),
    ("lr=0.1", "Did you mean optimizer.lr"),
    ("optimizr.lr=0.1", "Did you mean optimizer"),
    ("data.image_size=abc", "cannot convert 'abc' to int"),
    ("data.image_size=12.5", "cannot convert 12.5 to int"),
    ("use_bfloat16=maybe", "cannot convert 'maybe' to bool"),
    ("train_batch_size=none", "cannot be empty"),
    ("optimizer.name=lamb", "optimizer.name must be one of"),
    ("model=b1", "set single fields"),
    ("optimizer.lr", "key=value"),
    ("a.b.c=1", "too many dots"),
])
def test_override_errors(override, message):
    with pytest.raises(ValueError, match=message):
        cfg.apply_overrides(cfg.TrainConfig(), [override])


def test_save_config_round_trip_and_atomic(tmp_path):
    c = cfg.apply_overrides(cfg.load_config("fashion_mnist"),
                            ["data.data_dir=/data/fm", "optimizer.weight_decay=1e-5",
                             "train_steps=12", "data.augment_name=randaugment"])
    model_dir = tmp_path / "run"
    path = cfg.save_config(c, str(model_dir))
    assert path == str(model_dir / "config.yaml")
    assert cfg.load_config(path) == c
    c2 = cfg.apply_overrides(c, ["epochs=2"])
    cfg.save_config(c2, str(model_dir))  # overwrites
    assert cfg.load_config(path) == c2
    assert os.listdir(model_dir) == ["config.yaml"]  # no temp files left behind
    assert cfg.config_from_dict(cfg.config_to_dict(c2)) == c2


def test_failed_save_leaves_previous_file_intact(tmp_path, monkeypatch):
    c = cfg.TrainConfig()
    path = cfg.save_config(c, str(tmp_path))
    before = open(path).read()

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(cfg.os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        cfg.save_config(cfg.apply_overrides(c, ["epochs=1"]), str(tmp_path))
    assert open(path).read() == before
    assert os.listdir(tmp_path) == ["config.yaml"]


def test_data_section_matches_pipeline_data_config():
    from efficientnet_tf.data import pipeline

    ours = {f.name: f.default for f in dataclasses.fields(cfg.DataSection)}
    theirs = {f.name: f.default for f in dataclasses.fields(pipeline.DataConfig)}
    assert set(ours) == set(theirs), (
        f"DataSection and pipeline.DataConfig drifted: only here {set(ours) - set(theirs)}, "
        f"only there {set(theirs) - set(ours)}")
    assert ours == theirs
    section = cfg.apply_overrides(cfg.load_config("fashion_mnist"),
                                  ["data.synthetic=true", "data.image_size=40",
                                   "data.random_flip=false"]).data
    dc = section.to_data_config()
    assert isinstance(dc, pipeline.DataConfig) and dc.random_flip is False
    assert dataclasses.asdict(dc) == dataclasses.asdict(section)


def test_train_package_import_is_light():
    code = ("import sys, efficientnet_tf.train as t; "
            "print(sorted(m for m in sys.modules if m.startswith('efficientnet_tf.train.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO),
                         timeout=120)
    assert out.stdout.strip() == "[]", out.stderr[-2000:]


@pytest.mark.slow
def test_wheel_ships_the_recipes(tmp_path):
    """A non-editable install (a built wheel) contains the YAML recipes."""
    src = tmp_path / "src"  # build from a copy: setuptools writes build/ into the source tree
    shutil.copytree(REPO, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "build", "*.egg-info", "__pycache__", "runs", "demo_out"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                    "-w", str(tmp_path / "dist"), str(src)], check=True, capture_output=True,
                   timeout=600)
    wheel = next(p for p in os.listdir(tmp_path / "dist") if p.endswith(".whl"))
    names = zipfile.ZipFile(tmp_path / "dist" / wheel).namelist()
    for n in [f"efficientnet-b{i}" for i in range(8)] + ["fashion_mnist"]:
        assert f"efficientnet_tf/configs/{n}.yaml" in names
