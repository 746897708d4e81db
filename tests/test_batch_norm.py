"""Cross-replica BN over groups of replicas (the reference's BN on large TPU slices), checked
under MirroredStrategy on 4 logical CPUs against BN over the concatenated batch of each group."""
import json
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest

from efficientnet_tf import EfficientNet
from efficientnet_tf.layers import GroupBatchNormalization, batch_norm
from efficientnet_tf import config as cfglib

_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 4)
    from efficientnet_tf.layers import GroupBatchNormalization
    strategy = tf.distribute.MirroredStrategy([f"/cpu:{i}" for i in range(4)])
    rng = np.random.default_rng(0)
    # Per-replica batches with different means and scales, so the groups' statistics differ.
    xs = [(rng.normal(size=(3, 2, 2, 5)) * (r + 1) + 3 * r).astype("float32") for r in range(4)]
    ws = [rng.normal(size=(3, 2, 2, 5)).astype("float32") for r in range(4)]
    out = {}
    for group_size in (1, 2, 4):
        with strategy.scope():
            bn = GroupBatchNormalization(group_size, momentum=0.5, epsilon=1e-3)
            bn.build((None, 2, 2, 5))
            bn.gamma.assign(np.linspace(0.5, 1.5, 5).astype("float32"))
            bn.beta.assign(np.linspace(-1, 1, 5).astype("float32"))

        @tf.function
        def step():
            def replica_fn():
                ctx = tf.distribute.get_replica_context()
                r = ctx.replica_id_in_sync_group
                x = tf.gather(tf.constant(np.stack(xs)), r)
                w = tf.gather(tf.constant(np.stack(ws)), r)
                with tf.GradientTape() as tape:
                    tape.watch(x)
                    y = bn(x, training=True)
                    loss = tf.reduce_sum(w * y)
                return y, tape.gradient(loss, x)
            return strategy.run(replica_fn)

        ys, gs = step()
        out[group_size] = {
            "y": [t.numpy().tolist() for t in strategy.experimental_local_results(ys)],
            "dx": [t.numpy().tolist() for t in strategy.experimental_local_results(gs)],
            "moving_mean": bn.moving_mean.numpy().tolist()}
    with strategy.scope():
        bad = GroupBatchNormalization(3)
        bad.build((None, 2, 2, 5))
    try:
        strategy.run(tf.function(lambda: bad(tf.ones((3, 2, 2, 5)), training=True)))
        out["error"] = None
    except ValueError as e:
        out["error"] = str(e)
    print("RESULT" + json.dumps({"xs": [x.tolist() for x in xs], "ws": [w.tolist() for w in ws],
                                 "out": out}))
""")


def _reference_group(xs, ws, eps=1e-3):
    """BN over the concatenated batch of one group, with gradients of sum(w * y) (float64)."""
    import tensorflow as tf

    x = tf.constant(np.concatenate(xs).astype("float64"))
    w = tf.constant(np.concatenate(ws).astype("float64"))
    gamma = np.linspace(0.5, 1.5, 5)
    beta = np.linspace(-1, 1, 5)
    with tf.GradientTape() as tape:
        tape.watch(x)
        mean, var = tf.nn.moments(x, [0, 1, 2])
        y = (x - mean) / tf.sqrt(var + eps) * gamma + beta
        loss = tf.reduce_sum(w * y)
    dx = tape.gradient(loss, x).numpy()
    return np.split(y.numpy(), len(xs)), np.split(dx, len(xs)), mean.numpy()


@pytest.fixture(scope="module")
def grouped(tmp_path_factory):
    script = tmp_path_factory.mktemp("gbn") / "gbn.py"
    script.write_text(_SCRIPT)
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = [s for s in proc.stdout.splitlines() if s.startswith("RESULT")][-1]
    data = json.loads(line[len("RESULT"):])
    data["xs"] = [np.array(x) for x in data["xs"]]
    data["ws"] = [np.array(w) for w in data["ws"]]
    return data


@pytest.mark.parametrize("group_size", [1, 2, 4])
def test_group_bn_matches_bn_over_each_groups_concatenated_batch(grouped, group_size):
    xs, ws, out = grouped["xs"], grouped["ws"], grouped["out"][str(group_size)]
    group_means = []
    for start in range(0, 4, group_size):
        members = range(start, start + group_size)
        y, dx, mean = _reference_group([xs[r] for r in members], [ws[r] for r in members])
        group_means.append(mean)
        for i, r in enumerate(members):
            np.testing.assert_allclose(out["y"][r], y[i], atol=2e-4, rtol=1e-4)
            # The gradient reaches each replica's input through the other members' losses too.
            np.testing.assert_allclose(out["dx"][r], dx[i], atol=2e-4, rtol=1e-4)
    # moving_mean = momentum * 0 + (1 - momentum) * batch mean. Keras keeps replica 0's copy of
    # the moving statistics (the TPU reference checkpoints core 0's), i.e. group 0's mean.
    np.testing.assert_allclose(out["moving_mean"], 0.5 * group_means[0], rtol=1e-4, atol=1e-5)


def test_groups_really_differ(grouped):
    """Guards the test above: per-replica, pairs and all-four statistics give different outputs."""
    y = {k: np.array(grouped["out"][k]["y"]) for k in ("1", "2", "4")}
    assert np.abs(y["1"] - y["2"]).max() > 0.1 and np.abs(y["2"] - y["4"]).max() > 0.1


def test_group_size_that_does_not_divide_the_replicas_is_a_clear_error(grouped):
    assert "must divide the 4 replicas" in grouped["out"]["error"]


def test_group_bn_without_strategy_is_plain_bn_and_serializes():
    x = np.random.default_rng(1).normal(size=(4, 3, 3, 6)).astype("float32")
    plain = keras.layers.BatchNormalization()
    group = GroupBatchNormalization(8)
    np.testing.assert_allclose(group(x, training=True), plain(x, training=True), atol=1e-6)
    clone = GroupBatchNormalization.from_config(group.get_config())
    assert clone.group_size == 8
    assert isinstance(batch_norm("bn", group_size=2), GroupBatchNormalization)
    assert type(batch_norm("bn", group_size=1)) is keras.layers.BatchNormalization
    with pytest.raises(ValueError, match="not both"):
        batch_norm("bn", synchronized=True, group_size=2)


def test_model_with_bn_groups_saves_and_loads(tmp_path):
    model = EfficientNet(width_coefficient=0.1, depth_coefficient=0.1, default_size=32,
                         input_shape=(32, 32, 3), weights=None, classes=3, bn_group_size=2)
    kinds = {type(layer) for layer in model.layers if "bn" in layer.name}
    assert kinds == {GroupBatchNormalization}
    path = str(tmp_path / "m.keras")
    model.save(path)
    again = keras.models.load_model(path)
    x = np.random.default_rng(2).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    np.testing.assert_allclose(again(x), model(x), atol=1e-6)


def test_build_model_for_export_uses_plain_bn_whatever_the_training_groups():
    from efficientnet_tf.factory import build_model_from_config as build_model

    config = cfglib.apply_overrides(cfglib.load_config("fashion_mnist"), [
        "model.bn_group_size=4", "model.width_coefficient=0.1", "model.depth_coefficient=0.1"])
    one = build_model(config)  # num_replicas=1, as load_model_for_export calls it
    assert not any(isinstance(layer, GroupBatchNormalization) for layer in one.layers)
    four = build_model(config, num_replicas=8)
    assert {layer.group_size for layer in four.layers
            if isinstance(layer, GroupBatchNormalization)} == {4}
    sync = build_model(cfglib.apply_overrides(config, ["model.bn_group_size=none",
                                                       "model.synchronized_bn=true"]), 8)
    bns = [layer for layer in sync.layers if isinstance(layer, keras.layers.BatchNormalization)]
    assert bns and all(type(b) is keras.layers.BatchNormalization and b.synchronized for b in bns)


def test_config_resolves_the_reference_group_rule():
    model = cfglib.load_config("efficientnet-b0").model
    assert model.bn_group_size is None
    assert [model.resolved_bn_group_size(n) for n in (1, 8, 16, 32, 128, 1024)] == [
        1, 1, 8, 8, 16, 128]
    sync = cfglib.apply_overrides(cfglib.load_config("b0"), ["model.synchronized_bn=true"]).model
    assert sync.resolved_bn_group_size(32) == 32
    fixed = cfglib.apply_overrides(cfglib.load_config("b0"), ["model.bn_group_size=4"]).model
    assert fixed.resolved_bn_group_size(32) == 4
    with pytest.raises(ValueError, match="does not divide the 6 replicas"):
        fixed.resolved_bn_group_size(6)
    assert fixed.resolved_bn_group_size(1) == 1  # export and single-device eval
    # The rule's value must divide the replicas: 12 -> 6 (not 8), 100 -> 10 (not 12).
    assert [model.resolved_bn_group_size(n) for n in (12, 100)] == [6, 10]
    with pytest.raises(ValueError, match="cannot be combined"):
        cfglib.apply_overrides(cfglib.load_config("b0"),
                               ["model.synchronized_bn=true", "model.bn_group_size=4"])
