"""Research tools: the step-1 MACs band, resumable and split grid search, scaling-curve points,
CAM against the formula by hand, Grad-CAM, the command line. Tiny models, synthetic data."""
import itertools
import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import TINY_NETWORK
from efficientnet_tf import config as cfglib
from efficientnet_tf import research
from efficientnet_tf.factory import build_model
from efficientnet_tf.profile import model_profile
from efficientnet_tf.research import space
from efficientnet_tf.research.__main__ import main as cli_main

TINY = [*TINY_NETWORK, "data.image_size=16",
        "data.synthetic=true", "data.synthetic_examples=8", "train_batch_size=4",
        "eval_batch_size=4", "train_steps=1", "steps_per_execution=1", "keep_checkpoints=1"]
GRID = dict(step=0.5, tolerance=0.3, max_alpha=2.0, max_beta=1.5, max_gamma=1.5)


@pytest.fixture(scope="module")
def base():
    return cfglib.apply_overrides(cfglib.load_config("fashion_mnist"), TINY)


@pytest.fixture(scope="module")
def profiler():
    return space.Profiler()


def _macs(base, alpha, beta, gamma):
    """Built independently of research.space: our own config, the factory, model_profile."""
    m = dict(base.model.__dict__, width_coefficient=0.1 * beta, depth_coefficient=0.1 * alpha)
    model = build_model(cfglib.ModelConfig(**m), int(round(16 * gamma)), 10)
    return model_profile(model)["macs"], model_profile(model)["params"]


def test_grid_keeps_exactly_the_points_in_the_measured_band(base, profiler):
    grid = list(itertools.product([1.0, 1.5, 2.0], [1.0, 1.5], [1.0, 1.5]))
    measured = {p: _macs(base, *p) for p in grid}
    base_macs = measured[(1.0, 1.0, 1.0)][0]
    lo, hi = 0.7 * 2 * base_macs, 1.3 * 2 * base_macs
    want = [p for p in grid if lo <= measured[p][0] <= hi]
    assert 0 < len(want) < len(grid) - 1  # the band cuts both ways here
    got_base, got = space.grid_candidates(base, unique=False, profiler=profiler, **GRID)
    assert got_base == base_macs
    assert [(c["alpha"], c["beta"], c["gamma"]) for c in got] == want
    assert [c["macs"] for c in got] == [measured[p][0] for p in want]
    assert [c["params"] for c in got] == [measured[p][1] for p in want]
    # unique: the first point of each distinct network only (same MACs, params, size).
    seen, first = set(), []
    for p in want:
        key = (*measured[p], int(round(16 * p[2])))
        if key not in seen:
            seen.add(key)
            first.append(p)
    _, uniq = space.grid_candidates(base, profiler=profiler, **GRID)
    assert [(c["alpha"], c["beta"], c["gamma"]) for c in uniq] == first
    with pytest.raises(ValueError, match="No grid point has measured MACs within"):
        space.grid_candidates(base, target=1000.0, profiler=profiler, **dict(GRID, tolerance=0.1))


def test_image_size_rounding():
    assert space.image_size(32, 1.15) == 37  # 36.8 -> nearest integer
    assert space.image_size(224, 1.15, 8) == 256  # 257.6 -> nearest multiple of 8
    assert space.image_size(16, 1.0) == 16


def test_partition_has_no_overlap_and_no_gap():
    items = list(range(11))
    for n in (1, 2, 3, 5, 11, 12):
        shares = [space.partition(items, n, i) for i in range(n)]
        flat = [x for s in shares for x in s]
        assert sorted(flat) == items and len(flat) == len(set(flat))
        assert max(map(len, shares)) - min(map(len, shares)) <= 1
    with pytest.raises(ValueError, match=r"worker_index must be in \[0, num_workers\)"):
        space.partition(items, 2, 2)
    with pytest.raises(ValueError, match="num_workers must be >= 1"):
        space.partition(items, 0, 0)


def _count_trainers(mp):
    """Makes Trainer record the model_dirs it is built for; returns that list."""
    from efficientnet_tf.train import loop

    dirs = []

    class Counting(loop.Trainer):
        def __init__(self, config, model_dir, *args, **kwargs):
            dirs.append(model_dir)
            super().__init__(config, model_dir, *args, **kwargs)

    mp.setattr(loop, "Trainer", Counting)
    return dirs


@pytest.fixture
def trained_dirs(monkeypatch):
    return _count_trainers(monkeypatch)


SEARCH = dict(seeds=[1], max_candidates=2, log=lambda *_: None, **GRID)


@pytest.fixture(scope="module")
def searched(base, profiler, tmp_path_factory):
    """Two workers, each its share of a 2-candidate search: (OUT, worker 0's, worker 1's runs)."""
    out = str(tmp_path_factory.mktemp("search"))
    with pytest.MonkeyPatch.context() as mp:
        dirs = _count_trainers(mp)
        research.grid_search(base, out, num_workers=2, worker_index=1, profiler=profiler, **SEARCH)
        second = list(dirs)
        research.grid_search(base, out, num_workers=2, worker_index=0, profiler=profiler, **SEARCH)
    return out, dirs[len(second):], second


def test_two_workers_split_the_search_and_a_restart_retrains_nothing(base, profiler, searched,
                                                                     trained_dirs):
    out, first, second = searched
    assert len(first) == len(second) == 1 and first != second
    names = [c["name"] for c in research.search.pick(
        space.grid_candidates(base, profiler=profiler, **GRID)[1], 2)]
    assert sorted(first + second) == sorted(os.path.join(out, "runs", n, "seed1") for n in names)
    marker = os.path.join(first[0], "result.json")
    mtime = os.stat(marker).st_mtime_ns
    results = research.grid_search(base, out, profiler=profiler, **SEARCH)  # all finished
    assert trained_dirs == [] and os.stat(marker).st_mtime_ns == mtime
    assert results["complete"] and [c["name"] for c in results["candidates"]] == names
    for c in results["candidates"]:
        assert 0 <= c["top1"]["1"] <= 1 and c["top1_mean"] == c["top1"]["1"]
        assert c["base_macs"] == results["base"]["macs"] and c["macs"] > c["base_macs"]
    assert results["best"]["top1_mean"] == max(c["top1_mean"] for c in results["candidates"])
    with open(os.path.join(out, "results.json")) as f:
        assert json.load(f)["best"]["name"] == results["best"]["name"]


def test_curve_points_share_the_base_and_follow_their_dimension(base, profiler, tmp_path):
    pts = research.curve_points(width=[1.5], depth=[2.0], resolution=[1.5], phis=[1.0, 2.0],
                                alpha=1.2, beta=1.1, gamma=1.15)
    assert [(k, m) for k, m, _ in pts] == [("width", 1.0), ("width", 1.5), ("depth", 1.0),
                                           ("depth", 2.0), ("resolution", 1.0),
                                           ("resolution", 1.5), ("compound", 0.0),
                                           ("compound", 1.0), ("compound", 2.0)]
    assert pts[1][2] == space.Point(beta=1.5) and pts[3][2] == space.Point(alpha=2.0)
    assert pts[8][2] == space.Point(1.2**2, 1.1**2, 1.15**2)
    curves = research.scaling_curves(base, str(tmp_path), width=[1.5], depth=[], resolution=[2.0],
                                     phis=[], train=False)
    assert curves["kinds"] == ["width", "resolution"] and not curves["complete"]
    by = {(p["kind"], p["multiplier"]): p for p in curves["points"]}
    assert by[("width", 1.0)]["macs"] == by[("resolution", 1.0)]["macs"] == curves["base_macs"]
    assert by[("resolution", 2.0)]["image_size"] == 32
    assert by[("resolution", 2.0)]["macs"] == _macs(base, 1.0, 1.0, 2.0)[0]
    assert os.path.exists(tmp_path / "curves.json") and os.path.exists(tmp_path / "curves.png")
    with pytest.raises(ValueError, match="No curve to draw"):
        research.curve_points()


@pytest.fixture(scope="module")
def cam_model():
    model_config = cfglib.ModelConfig(model_name="tiny", width_coefficient=0.1,
                                      depth_coefficient=0.1, stem_strides=1, dropout_rate=0.2)
    keras.utils.set_random_seed(0)  # an init whose class maps are not all <= 0 (checked 20 seeds)
    model = build_model(model_config, 64, 5)  # last feature maps 4 x 4
    dense = model.get_layer("predictions")
    rng = np.random.default_rng(0)
    dense.kernel.assign(rng.normal(size=dense.kernel.shape).astype("float32"))
    images = rng.uniform(0, 255, size=(3, 64, 64, 3)).astype("float32")
    return model, images


def _hand_cam(feats, kernel, classes, size):
    maps = np.maximum(np.einsum("nhwk,kn->nhw", feats, kernel[:, classes]), 0)
    maps = tf.image.resize(maps[..., None], size, method="bilinear").numpy()[..., 0]
    maps = np.maximum(maps, 0)
    return maps / maps.max(axis=(1, 2), keepdims=True)


def test_cam_equals_the_formula_by_hand(cam_model):
    model, images = cam_model
    feats = keras.Model(model.inputs, model.get_layer("top_activation").output)(images).numpy()
    assert feats.shape[1:3] == (4, 4)
    kernel = model.get_layer("predictions").kernel.numpy()
    top1 = model(images, training=False).numpy().argmax(-1)
    got = research.class_activation_map(model, images)
    assert got.dtype == np.float32 and got.shape == (3, 64, 64)
    np.testing.assert_allclose(got, _hand_cam(feats, kernel, top1, (64, 64)), atol=1e-5)
    assert np.allclose(got.max(axis=(1, 2)), 1.0) and got.min() >= 0
    other = (top1 + 1) % 5
    np.testing.assert_allclose(research.class_activation_map(model, images, other),
                               _hand_cam(feats, kernel, other, (64, 64)), atol=1e-5)
    two = research.class_activation_map(model, images, 2)
    np.testing.assert_allclose(two, _hand_cam(feats, kernel, np.full(3, 2), (64, 64)), atol=1e-5)


def test_grad_cam_equals_cam_for_the_pooled_dense_head(cam_model):
    model, images = cam_model
    g = research.grad_cam(model, images)
    assert g.dtype == np.float32 and g.shape == (3, 64, 64)
    assert g.min() >= 0 and np.allclose(g.max(axis=(1, 2)), 1.0)
    np.testing.assert_allclose(g, research.class_activation_map(model, images), atol=1e-4)


def test_other_heads_need_grad_cam(cam_model):
    model, images = cam_model
    x = keras.layers.GlobalAveragePooling2D()(model.get_layer("top_activation").output)
    x = keras.layers.Dense(8, activation="relu", name="hidden")(x)
    head = keras.Model(model.inputs, keras.layers.Dense(5, name="predictions")(x))
    with pytest.raises(ValueError, match="Use grad_cam"):
        research.class_activation_map(head, images)
    g = research.activation_map(head, images)  # auto: Grad-CAM
    assert g.shape == (3, 64, 64) and g.min() >= 0 and g.max() <= 1 and g.max() > 0
    np.testing.assert_allclose(g, research.grad_cam(head, images), atol=1e-6)


def test_cli_grid_search_then_cam(base, searched, tmp_path, capsys, trained_dirs):
    """The command line on the search above: the same recipe through flags finds its runs."""
    out = searched[0]
    os.remove(os.path.join(out, "results.json"))
    argv = ["research", "grid_search", f"--out={out}", "--config=fashion_mnist",
            "--use_synthetic_data", "--train_steps=1", "--max_candidates=2", "--step=0.5",
            "--tolerance=0.3", "--max_alpha=2", "--max_beta=1.5", "--max_gamma=1.5",
            "--seeds=1"] + [f"--override={o}" for o in TINY]
    assert cli_main(argv) == 0
    assert trained_dirs == []
    with open(os.path.join(out, "results.json")) as f:
        results = json.load(f)
    assert results["complete"] and len(results["candidates"]) == 2
    with open(os.path.join(out, "grid_search.png"), "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    runs = [os.path.join(out, "runs", c["name"], "seed1") for c in results["candidates"]]
    image = tmp_path / "x.png"
    image.write_bytes(tf.io.encode_png(np.full((20, 20, 3), 128, np.uint8)).numpy())
    assert cli_main(["research", "cam", f"--out={tmp_path}", f"--model_dirs={','.join(runs)}",
                     f"--images={image},{image}", "--bn_batches=2"]) == 0
    assert (tmp_path / "cam.png").read_bytes()[:4] == b"\x89PNG"
    capsys.readouterr()
    assert cli_main(argv + ["--num_workers=2", "--worker_index=2"]) == 2
    assert "worker_index must be in [0, num_workers)" in capsys.readouterr().err
    assert cli_main(["research", "search", f"--out={out}"]) == 2
    assert "give one command" in capsys.readouterr().err
    # Another recipe in the same OUT is refused, not silently reused.
    os.remove(os.path.join(runs[0], "result.json"))
    assert cli_main(argv + ["--override=optimizer.lr=0.5"]) == 2
    assert "holds a run of another recipe" in capsys.readouterr().err
    assert trained_dirs == []


def test_recalibrate_bn_gives_the_statistics_of_the_current_weights():
    inputs = keras.Input((4, 4, 3))
    features = keras.layers.Conv2D(2, 1, name="conv", kernel_initializer=keras.initializers
                                   .GlorotUniform(seed=0))(inputs)
    x = keras.layers.BatchNormalization(momentum=0.99, name="bn")(features)
    model = keras.Model(inputs, keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(x)))
    bn = model.get_layer("bn")
    bn.moving_mean.assign([5.0, -5.0])
    bn.moving_variance.assign([9.0, 0.01])
    images = np.random.default_rng(0).normal(1.0, 2.0, (8, 4, 4, 3)).astype("float32")
    before = [w.numpy() for w in model.trainable_weights]
    ds = tf.data.Dataset.from_tensors((images, np.zeros(8))).repeat()
    assert research.recalibrate_bn(model, ds, 40) == 40
    # By hand: the batch moments of the BN input (the conv's output), the same batch each time.
    f = keras.Model(inputs, features)(images).numpy()
    np.testing.assert_allclose(bn.moving_mean.numpy(), f.mean(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(bn.moving_variance.numpy(), f.var(axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
    assert bn.momentum == 0.99
    for w, b in zip(model.trainable_weights, before):
        np.testing.assert_array_equal(w.numpy(), b)
    # Batches of different images: the average of their batch moments; a dataset that ends
    # first says so in the count and still leaves an average.
    other = images[::-1] * 3.0 + 1.0
    two = tf.data.Dataset.from_tensor_slices(np.stack([images, other])).take(2)
    assert research.recalibrate_bn(model, two, 10) == 2
    g = keras.Model(inputs, features)(other).numpy()
    m = 1 - 1 / 10  # the second batch weighs 1, the first m, normalized
    np.testing.assert_allclose(
        bn.moving_mean.numpy(),
        (m * f.mean(axis=(0, 1, 2)) + g.mean(axis=(0, 1, 2))) / (1 + m), rtol=1e-4, atol=1e-6)


def test_a_finished_run_is_evaluated_again_with_bn_recalibration_without_training(base,
                                                                                tmp_path):
    md = research.runs.run_dir(str(tmp_path), "p", 1)
    plain = research.train_point(base, md, log=lambda m: None)
    assert "running_stats" not in plain
    history = open(os.path.join(md, "history.jsonl")).read()
    again = research.train_point(base, md, log=lambda m: None, bn_batches=3)
    assert again["bn_batches"] == 3 and again["steps"] == plain["steps"] == 1
    assert again["running_stats"] == {k: plain[k] for k in ("top1", "top5", "loss")}
    assert again["seconds"] == plain["seconds"]
    assert open(os.path.join(md, "history.jsonl")).read() == history  # nothing trained
    assert json.load(open(os.path.join(md, "result.json"))) == again
    assert research.train_point(base, md, log=lambda m: None, bn_batches=3) == again
    row, = research.collect([{"name": "p"}], str(tmp_path), [1])
    assert row["top1"] == {"1": again["top1"]}
    assert row["top1_running_stats"] == {"1": plain["top1"]}
