"""Training configs (efficientnet_tf/config.py): shipped recipes, YAML errors, overrides, derived values, config.yaml."""
import dataclasses
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile

import pytest

from efficientnet_tf.spec import VARIANTS
from efficientnet_tf import config as cfg

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
        assert c.data.num_classes == 1000
    # The shipped defaults equal the dataclass defaults for the recipe (one source of truth).
    assert cfg.load_config("efficientnet-b0").optimizer == cfg.OptimizerConfig()


def test_fashion_mnist_recipe():
    c = cfg.load_config("fashion_mnist")
    assert c.data.image_size == 32 and c.model.stem_strides == 1
    assert c.data.num_classes == 10
    assert c.data.label_offset == 1  # the converter writes 1-based labels
    assert c.train_batch_size == 128 and c.use_bfloat16 is False
    scaled = (c.model.phi is not None and c.model.phi < 0) or (
        c.model.width_coefficient is not None and c.model.width_coefficient < 1)
    assert scaled


def test_name_aliases_paths_and_the_top_level_configs_dir(tmp_path):
    assert cfg.load_config("b3") == cfg.load_config("efficientnet-b3")
    assert cfg.load_config("efficientnetb3") == cfg.load_config("efficientnet-b3")
    path = os.path.join(REPO, "configs", "imagenet.yaml")
    assert os.path.samefile(path, os.path.join(cfg.CONFIG_DIR, "imagenet.yaml"))
    assert cfg.load_config(path) == cfg.load_config("efficientnet-b0")
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
    # Older config files had model.num_classes too; one that contradicts data.num_classes fails.
    path = _write(tmp_path, "model:\n  num_classes: 1000\ndata:\n  num_classes: 10\n")
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
    assert c.model == cfg.TrainConfig().model and c.eval_batch_size == 1024  # dropout: b0's


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
    assert c.data.num_classes == 10 and not hasattr(c.model, "num_classes")
    with pytest.raises(ValueError, match="differ"):
        cfg.apply_overrides(base, ["model.num_classes=10", "data.num_classes=5"])
    # Flags come first, then --override: the last value of a key wins.
    assert cfg.apply_overrides(base, ["train_steps=100", "train_steps=200"]).train_steps == 200
    assert cfg.apply_overrides(base, []) == base


@pytest.mark.parametrize("override, message", [
    ("optimizer.lrr=1", "Did you mean lr"),
    ("lr=0.1", "Did you mean optimizer.lr"),
    ("optimizr.lr=0.1", "Did you mean optimizer"),
    ("data.image_size=abc", "cannot convert 'abc' to int"),
    ("data.image_size=12.5", "cannot convert 12.5 to int"),
    ("use_bfloat16=maybe", "cannot convert 'maybe' to bool"),
    ("precision=float8", "precision must be one of float32, bfloat16, float16"),
    ("model.recompute=all", "model.recompute must be none or blocks"),
    ("model.recompute=true", "got 'True': it is a mode, not a switch \\(blocks = "),
    ("accumulate_steps=3", "accumulate_steps=3 must divide train_batch_size=4096 .*: 2 or 4 "
                           "would, or change train_batch_size"),
    ("accumulate_steps=5000", "accumulate_steps=5000 must divide .*: 4096 would"),
    ("accumulate_steps=0", "accumulate_steps must be >= 1 \\(1: no accumulation\\), got 0"),
    ("accumulate_steps=-2", "accumulate_steps must be >= 1 \\(1: no accumulation\\), got -2"),
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


def test_one_data_config_type_for_recipes_and_the_pipeline():
    from efficientnet_tf.data import pipeline

    assert pipeline.DataConfig is cfg.DataConfig
    section = cfg.apply_overrides(cfg.load_config("fashion_mnist"),
                                  ["data.synthetic=true", "data.image_size=40",
                                   "data.random_flip=false"]).data
    assert isinstance(section, pipeline.DataConfig) and section.random_flip is False
    images, labels = next(iter(pipeline.build_dataset(section, "train", 4)))
    assert images.shape == (4, 40, 40, 3) and labels.shape == (4,)
    with pytest.raises(ValueError, match="image_size is not set"):
        pipeline.build_dataset(cfg.DataConfig(synthetic=True), "train", 4)


def test_derived_values_come_from_their_source():
    for key, variant in VARIANTS.items():  # the recipe file states neither
        c = cfg.load_config(f"efficientnet-{key}")
        assert (c.data.image_size, c.model.dropout_rate) == (variant.resolution,
                                                             variant.dropout_rate)
    b0 = cfg.load_config("efficientnet-b0")
    b4 = cfg.apply_overrides(b0, ["model.model_name=efficientnet-b4"])
    assert (b4.data.image_size, b4.model.dropout_rate) == (380, 0.4)
    kept = cfg.apply_overrides(b0, ["model.model_name=efficientnet-b4", "data.image_size=64"])
    assert (kept.data.image_size, kept.model.dropout_rate) == (64, 0.4)
    small = cfg.apply_overrides(cfg.apply_overrides(b0, ["data.image_size=64"]),
                                ["model.model_name=efficientnet-b4"])
    assert small.data.image_size == 64  # set by hand before: stays
    phi = cfg.apply_overrides(b0, ["model.phi=1"])
    assert phi.data.image_size == 256 and phi.model.dropout_rate == 0.2  # 224 * 1.15, to 8 px
    # One seed seeds the model and the data, unless the data has its own.
    c = cfg.apply_overrides(b0, ["seed=7"])
    assert (c.seed, c.data.seed) == (7, 7)
    c = cfg.apply_overrides(c, ["seed=8"])
    assert (c.seed, c.data.seed) == (8, 8)
    c = cfg.apply_overrides(b0, ["seed=7", "data.seed=3"])
    assert (c.seed, c.data.seed) == (7, 3)
    assert cfg.load_config("fashion_mnist").data.seed == cfg.load_config("fashion_mnist").seed == 1
    unseeded = cfg.apply_overrides(b0, ["data.deterministic=true"])  # a config.yaml may say so
    with pytest.raises(ValueError, match="not reproducible without a seed"):
        cfg.check_for_training(unseeded)  # but no training job starts from it
    seeded = cfg.apply_overrides(b0, ["data.deterministic=true", "seed=1"])
    assert seeded.data.seed == 1 and cfg.check_for_training(seeded) is None


def test_config_yaml_of_an_older_run_still_loads(tmp_path):
    """model_dirs written before num_classes moved to data: keep exporting them."""
    old = cfg.config_to_dict(cfg.load_config("fashion_mnist"))
    old["model"]["num_classes"] = 10
    path = tmp_path / "config.yaml"
    path.write_text(__import__("yaml").safe_dump(old))
    assert cfg.load_config(str(path)) == cfg.load_config("fashion_mnist")


def test_config_package_import_is_light():
    """Reading configs imports neither TensorFlow nor Keras nor the training modules."""
    code = ("import sys, efficientnet_tf.config as c, efficientnet_tf.train as t; "
            "c.load_config('efficientnet-b3'); "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras') "
            "or m.startswith('efficientnet_tf.train.')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO),
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr[-2000:]


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
    for n in ["imagenet", "fashion_mnist", "fashion_mnist_long"]:
        assert f"efficientnet_tf/configs/{n}.yaml" in names


def test_old_module_name_still_works_and_warns():
    import importlib
    import sys

    sys.modules.pop("efficientnet_tf.train.config", None)
    with pytest.warns(DeprecationWarning, match="moved to efficientnet_tf.config"):
        old = importlib.import_module("efficientnet_tf.train.config")
    assert old.load_config is cfg.load_config and old.DataSection is cfg.DataConfig


def test_precision_is_one_setting_and_use_bfloat16_still_reads_as_it(tmp_path):
    b0 = cfg.load_config("efficientnet-b0")
    assert (b0.precision, b0.dtype_policy) == ("bfloat16", "mixed_bfloat16")
    fp16 = cfg.apply_overrides(b0, ["precision=float16"])
    assert (fp16.dtype_policy, fp16.data.image_dtype, fp16.use_bfloat16) == (
        "mixed_float16", "float32", False)
    assert cfg.apply_overrides(b0, ["use_bfloat16=false"]).precision == "float32"
    assert cfg.apply_overrides(fp16, ["use_bfloat16=true"]).precision == "bfloat16"
    with pytest.raises(ValueError, match="give it once: precision alone"):
        cfg.apply_overrides(b0, ["use_bfloat16=true", "precision=float16"])
    with pytest.raises(ValueError, match="give it once: precision alone"):
        cfg.apply_overrides(b0, ["use_bfloat16=false", "precision=bfloat16"])
    # An older script's --nouse_bfloat16 beside --precision=float16: "not bfloat16" agrees.
    for both in (["use_bfloat16=false", "precision=float16"],
                 ["precision=float16", "use_bfloat16=false"]):
        assert cfg.apply_overrides(b0, both).precision == "float16"
    # A config.yaml written before `precision` existed.
    old = tmp_path / "old.yaml"
    old.write_text("use_bfloat16: true\ntrain_batch_size: 64\n")
    assert cfg.load_config(str(old)).precision == "bfloat16"
    old.write_text("use_bfloat16: true\nprecision: float16\n")
    with pytest.raises(ValueError, match="use_bfloat16 .True. and precision .float16. differ"):
        cfg.load_config(str(old))
    old.write_text("use_bfloat16: false\nprecision: float16\n")
    assert cfg.load_config(str(old)).precision == "float16"
    assert "use_bfloat16" not in cfg.dump_config(fp16) and "precision: float16" in cfg.dump_config(fp16)


def test_the_input_dtype_follows_the_precision_unless_a_recipe_sets_it():
    b0 = cfg.load_config("efficientnet-b0")  # the ImageNet recipe: use_bfloat16 true
    assert (b0.use_bfloat16, b0.data.image_dtype) == (True, "bfloat16")
    gpu = cfg.apply_overrides(b0, ["use_bfloat16=false"])
    assert gpu.data.image_dtype == "float32"  # no bf16-rounded pixels in a float32 run
    assert cfg.apply_overrides(gpu, ["use_bfloat16=true"]).data.image_dtype == "bfloat16"
    pinned = cfg.apply_overrides(b0, ["data.image_dtype=uint8", "use_bfloat16=false"])
    assert pinned.data.image_dtype == "uint8"  # set explicitly: stays
    again = cfg.load_config(cfg.save_config(gpu, tempfile.mkdtemp()))
    assert again.data.image_dtype == "float32"


@pytest.mark.parametrize("override, message", [
    ("data.min_crop_area=0", "data.min_crop_area is a fraction of the image in (0, 1], got 0"),
    ("data.min_crop_area=1.5", "data.min_crop_area"),
    ("optimizer.lr=nan", "optimizer.lr=nan: give a finite number"),
    ("optimizer.weight_decay=inf", "optimizer.weight_decay=inf"),
])
def test_values_that_would_fail_deep_in_training_are_refused_by_name(override, message):
    with pytest.raises(ValueError) as e:
        cfg.apply_overrides(cfg.load_config("fashion_mnist"), [override])
    assert message in str(e.value)
