"""TF1-semantics RMSProp, the LR schedule, L2 and the loss (train/optim.py), and the EMA (ema.py)."""
import math
import os
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_bn_model
from efficientnet_tf import ema as ema_lib
from efficientnet_tf.train import optim

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ----------------------------------------------------------------------------- RMSProp
def _numpy_rmsprop_tf1(var, grads, lr, rho, momentum, eps):
    ms, mom = np.ones_like(var), np.zeros_like(var)
    out = []
    for g in grads:
        ms = rho * ms + (1 - rho) * g * g
        mom = momentum * mom + lr * g / np.sqrt(ms + eps)
        var = var - mom
        out.append(var.copy())
    return out


def test_rmsprop_tf1_matches_hand_computed_two_steps_with_momentum():
    var0 = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
    grads = [np.array([0.3, -1.5, 2.0, 0.0], np.float32),
             np.array([-0.7, 0.2, 1.0, 0.4], np.float32)]
    v = keras.Variable(var0)
    opt = optim.RMSpropTF1(0.1, rho=0.9, momentum=0.9, epsilon=1e-3)
    expected = _numpy_rmsprop_tf1(var0.astype(np.float64), [g.astype(np.float64) for g in grads],
                                  0.1, 0.9, 0.9, 1e-3)
    for g, want in zip(grads, expected):
        opt.apply_gradients([(tf.constant(g), v)])
        np.testing.assert_allclose(v.numpy(), want, rtol=1e-6, atol=1e-7)
    # The two steps really used momentum: without it the result differs.
    no_mom = _numpy_rmsprop_tf1(var0.astype(np.float64), grads, 0.1, 0.9, 0.0, 1e-3)[-1]
    assert np.abs(no_mom - v.numpy()).max() > 1e-2


def test_rmsprop_tf1_first_step_is_smaller_than_keras_rmsprop():
    g = np.array([1.0, -1.0, 0.5], np.float32)
    ours, theirs = keras.Variable(np.zeros(3, np.float32)), keras.Variable(np.zeros(3, np.float32))
    optim.RMSpropTF1(0.01, rho=0.9, momentum=0.9, epsilon=1e-3).apply_gradients(
        [(tf.constant(g), ours)])
    keras.optimizers.RMSprop(0.01, rho=0.9, momentum=0.9, epsilon=1e-3).apply_gradients(
        [(tf.constant(g), theirs)])
    # ours: ms starts at 1 -> 0.9 + 0.1 g^2; Keras 3: ms starts at 0 -> 0.1 g^2 (both keep eps
    # inside the sqrt), so Keras' first step is ~3x larger.
    np.testing.assert_allclose(ours.numpy(), -0.01 * g / np.sqrt(0.9 + 0.1 * g * g + 1e-3),
                               rtol=1e-6)
    np.testing.assert_allclose(theirs.numpy(), -0.01 * g / np.sqrt(0.1 * g * g + 1e-3),
                               rtol=1e-5)
    assert abs(theirs.numpy()[0] / ours.numpy()[0]) > 3.0


def test_optimizer_and_schedule_serialize():
    sched = optim.learning_rate_schedule(0.016, 4096, 1281167 / 4096)
    opt = optim.RMSpropTF1(sched, rho=0.8, momentum=0.7, epsilon=1e-4)
    clone = keras.optimizers.deserialize(keras.optimizers.serialize(opt))
    assert isinstance(clone, optim.RMSpropTF1)
    assert (clone.rho, clone.momentum, clone.epsilon) == (0.8, 0.7, 1e-4)
    assert clone.learning_rate is not None
    for step in (0, 900, 5000):
        assert float(clone._learning_rate(step)) == pytest.approx(float(sched(step)))


def test_make_optimizer_names():
    from efficientnet_tf.config import OptimizerConfig

    assert isinstance(optim.make_optimizer(OptimizerConfig(), 0.1), optim.RMSpropTF1)
    sgd = optim.make_optimizer(OptimizerConfig(name="sgd", nesterov=True), 0.1)
    assert isinstance(sgd, keras.optimizers.SGD) and sgd.nesterov
    assert isinstance(optim.make_optimizer(OptimizerConfig(name="adam"), 0.1), keras.optimizers.Adam)


# ----------------------------------------------------------------------------- schedule
def test_exponential_schedule_matches_reference_formula():
    spe = 1281167 / 4096  # the reference's float steps per epoch
    sched = optim.learning_rate_schedule(0.016, 4096, spe)
    peak = 0.016 * 4096 / 256
    warmup = int(5 * spe)
    decay_steps = 2.4 * spe
    assert warmup == 1563

    def expected(step):
        if step < warmup:
            return peak * step / warmup
        return peak * 0.97 ** math.floor(step / decay_steps)

    boundary = math.ceil(3 * decay_steps)  # first step with 3 decays
    cases = {0: 0.0, 781: peak * 781 / 1563, 1562: peak * 1562 / 1563,
             1563: peak * 0.97 ** 2,  # decay counts from step 0, not from the warmup end
             boundary - 1: peak * 0.97 ** 2, boundary: peak * 0.97 ** 3,
             109473: peak * 0.97 ** 145}
    for step, want in cases.items():
        assert expected(step) == pytest.approx(want, rel=1e-12)
        assert float(sched(step)) == pytest.approx(want, rel=1e-5), step
    assert float(sched(tf.constant(1000, tf.int64))) == pytest.approx(expected(1000), rel=1e-5)


def test_cosine_and_constant_schedules():
    sched = optim.learning_rate_schedule(0.2, 128, 100, warmup_epochs=1, kind="cosine",
                                         total_steps=1000)
    peak = 0.1
    assert float(sched(0)) == 0.0
    assert float(sched(50)) == pytest.approx(peak * 0.5)
    assert float(sched(100)) == pytest.approx(0.5 * peak * (1 + math.cos(math.pi * 0.1)))
    assert float(sched(500)) == pytest.approx(0.5 * peak, rel=1e-5)
    assert float(sched(1000)) == pytest.approx(0.0, abs=1e-9)
    assert float(sched(1500)) == pytest.approx(0.0, abs=1e-9)
    const = optim.learning_rate_schedule(0.016, 256, 10, warmup_epochs=0, kind="constant")
    assert float(const(0)) == float(const(10 ** 6)) == pytest.approx(0.016)
    with pytest.raises(ValueError, match="total_steps"):
        optim.learning_rate_schedule(0.1, 256, 10, kind="cosine")


# ----------------------------------------------------------------------------- EMA
def _expected_decay(t, decay):
    return min(decay, (1 + t) / (10 + t))


def test_ema_formula_with_num_updates_warmup():
    model = tiny_bn_model()
    ema = ema_lib.ExponentialMovingAverage(model, decay=0.9999)
    variables = ema_lib.averaged_variables(model)
    shadow = [v.numpy().astype(np.float64) for v in variables]
    rng = np.random.default_rng(0)
    for t in (1, 2, 3):
        for v in variables:  # new "trained" values
            v.assign(rng.normal(size=v.shape).astype(np.float32))
        ema.update()
        d = _expected_decay(t, 0.9999)
        shadow = [s - (1 - d) * (s - v.numpy()) for s, v in zip(shadow, variables)]
        for s, got in zip(shadow, ema.shadows):
            np.testing.assert_allclose(got.numpy(), s, rtol=1e-5, atol=1e-6)
    assert int(ema.num_updates.numpy()) == 3
    # An explicit step (the optimizer's iterations) drives the warm-up instead of the counter.
    assert float(ema.current_decay(100)) == pytest.approx(101 / 110)
    assert float(ema.current_decay(10 ** 6)) == pytest.approx(0.9999)
    no_warmup = ema_lib.ExponentialMovingAverage(model, decay=0.9, num_updates_warmup=False)
    assert float(no_warmup.current_decay(1)) == pytest.approx(0.9)


def test_ema_covers_batchnorm_statistics():
    model = tiny_bn_model()
    bn = model.get_layer("stem_bn")
    ema = ema_lib.ExponentialMovingAverage(model, decay=0.99)
    averaged = {id(v) for v in ema_lib.averaged_variables(model)}
    assert id(bn.moving_mean) in averaged and id(bn.moving_variance) in averaged
    assert len(averaged) == len(model.trainable_weights) + len(model.non_trainable_weights)
    index = [id(v) for v in ema_lib.averaged_variables(model)].index(id(bn.moving_mean))
    before_mean = bn.moving_mean.numpy().copy()
    x = tf.random.stateless_normal((8, 4, 4, 3), seed=(1, 2)) * 5.0 + 3.0
    model(x, training=True)  # moves the BN statistics
    after_mean = bn.moving_mean.numpy()
    assert np.abs(after_mean - before_mean).max() > 1e-3
    ema.update(step=1)
    d = _expected_decay(1, 0.99)
    np.testing.assert_allclose(ema.shadows[index].numpy(),
                               before_mean - (1 - d) * (before_mean - after_mean), rtol=1e-5,
                               atol=1e-6)


def test_ema_swapped_and_copy_to():
    model = tiny_bn_model()
    ema = ema_lib.ExponentialMovingAverage(model, decay=0.5, num_updates_warmup=False)
    variables = ema_lib.averaged_variables(model)
    trained = [v.numpy() + 1.0 for v in variables]
    for v, value in zip(variables, trained):
        v.assign(value)
    ema.update()  # shadow = init + 0.5
    x = np.random.default_rng(1).normal(size=(2, 4, 4, 3)).astype(np.float32)
    out_trained = model(x).numpy()
    with ema.swapped(model):
        for v, s in zip(variables, ema.shadows):
            np.testing.assert_array_equal(v.numpy(), s.numpy())
        out_ema = model(x).numpy()
    assert np.abs(out_ema - out_trained).max() > 1e-4
    for v, value in zip(variables, trained):
        np.testing.assert_array_equal(v.numpy(), value)
    with pytest.raises(RuntimeError):
        with ema.swapped():
            raise RuntimeError("boom")
    for v, value in zip(variables, trained):  # restored after an exception too
        np.testing.assert_array_equal(v.numpy(), value)
    other = tiny_bn_model(seed=5)  # same architecture, fresh weights: e.g. an export model
    ema.copy_to(other)
    np.testing.assert_allclose(other(x).numpy(), out_ema, rtol=1e-5, atol=1e-6)
    wrong = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="do not match"):
        ema.copy_to(wrong)


def test_ema_checkpoint_round_trip(tmp_path):
    model = tiny_bn_model()
    ema = ema_lib.ExponentialMovingAverage(model, decay=0.9)
    for v in ema_lib.averaged_variables(model):
        v.assign(v + 2.0)
    ema.update()
    ema.update()
    path = tf.train.Checkpoint(model=model, ema=ema).save(str(tmp_path / "ckpt"))
    names = [n for n, _ in tf.train.list_variables(path)]
    assert sum(n.startswith("ema/shadows/") for n in names) == len(ema.shadows)
    assert not any(n.startswith("ema/") and "shadows" not in n and "num_updates" not in n
                   for n in names)  # the model's own variables are not duplicated under ema/

    model2 = tiny_bn_model(seed=7)
    ema2 = ema_lib.ExponentialMovingAverage(model2, decay=0.9)
    tf.train.Checkpoint(model=model2, ema=ema2).restore(path).assert_consumed()
    assert int(ema2.num_updates.numpy()) == 2
    for a, b in zip(ema.shadows, ema2.shadows):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for a, b in zip(model.weights, model2.weights):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


def test_ema_needs_a_built_model():
    model = keras.Sequential([keras.layers.Dense(2)])
    with pytest.raises(ValueError, match="Build the model"):
        ema_lib.ExponentialMovingAverage(model)


# ----------------------------------------------------------------------------- L2 and loss
class _Nested(keras.layers.Layer):
    """A block with its own Dense (with bias) and BatchNormalization sublayers."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.se = keras.layers.Dense(4, name="se_reduce")
        self.norm = keras.layers.BatchNormalization(name="norm")  # no "bn" in its name

    def call(self, x, training=False):
        return self.norm(self.se(x), training=training)


class _OddNorm(keras.layers.Layer):
    """A custom normalization layer: excluded only by the name fallback."""

    def build(self, shape):
        self.gamma = self.add_weight(shape=(shape[-1],), initializer="ones", name="gamma")

    def call(self, x):
        return x * self.gamma


def test_l2_excludes_batchnorm_and_matches_numpy():
    keras.utils.set_random_seed(3)
    inputs = keras.Input((4, 4, 3))
    x = keras.layers.Conv2D(4, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="conv_bn")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = _Nested(name="block")(x)
    x = _OddNorm(name="head_bn")(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    model = keras.Model(inputs, outputs)
    for v in model.trainable_variables:  # non-trivial values everywhere, BN included
        v.assign(np.random.default_rng(len(v.path)).normal(size=v.shape).astype(np.float32))

    included = {v.path for v in optim.l2_variables(model)}
    assert included == {"conv/kernel", "block/se_reduce/kernel", "block/se_reduce/bias",
                        "head/kernel", "head/bias"}, included
    want = 1e-5 * sum(0.5 * np.sum(v.numpy().astype(np.float64) ** 2)
                      for v in model.trainable_variables if v.path in included)
    got = optim.l2_regularization_loss(model, 1e-5)
    assert got.dtype == tf.float32
    assert float(got) == pytest.approx(want, rel=1e-5)
    everything = 1e-5 * sum(0.5 * np.sum(v.numpy() ** 2) for v in model.trainable_variables)
    assert everything > want * 1.01  # the excluded BN variables did carry weight
    assert float(optim.l2_regularization_loss(model, 0.0)) == 0.0


def test_classification_loss_label_smoothing_and_dtypes():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], np.float32)
    labels = np.array([0, 1])
    ls, n = 0.1, 3
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    target = np.eye(n)[labels] * (1 - ls) + ls / n
    want = -(target * logp).sum(-1)
    got = optim.classification_loss(labels, logits, n, ls)
    assert got.dtype == tf.float32 and got.shape == (2,)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-6)
    plain = optim.classification_loss(labels, logits, n, 0.0).numpy()
    np.testing.assert_allclose(plain, -logp[[0, 1], labels], rtol=1e-6)
    dense = optim.classification_loss(np.eye(n)[labels], logits, n, ls)
    np.testing.assert_allclose(dense.numpy(), want, rtol=1e-6)
    bf16 = optim.classification_loss(labels, tf.cast(logits, tf.bfloat16), n, ls)
    assert bf16.dtype == tf.float32
    np.testing.assert_allclose(bf16.numpy(), want, rtol=2e-2)
    with pytest.raises(ValueError, match="num_classes"):
        optim.classification_loss(labels, logits, 5, ls)


# ----------------------------------------------------------------------------- together
def test_recipe_step_under_jit_and_bfloat16():
    """One full step (loss, L2, RMSpropTF1, EMA) XLA-compiled with mixed_bfloat16 activations."""
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = tiny_bn_model()
    finally:
        keras.mixed_precision.set_global_policy("float32")
    sched = optim.learning_rate_schedule(0.016, 256, 10, warmup_epochs=0.5)
    opt = optim.RMSpropTF1(sched)
    opt.build(model.trainable_variables)
    ema = ema_lib.ExponentialMovingAverage(model)
    start = [v.numpy().copy() for v in model.trainable_variables]

    @tf.function(jit_compile=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            logits = model(x, training=True)
            loss = tf.reduce_mean(optim.classification_loss(y, logits, 3, 0.1))
            loss += optim.l2_regularization_loss(model, 1e-5)
        grads = tape.gradient(loss, model.trainable_variables)
        opt.apply_gradients(zip(grads, model.trainable_variables))
        ema.update(opt.iterations)
        return loss, logits

    x = tf.random.stateless_uniform((8, 4, 4, 3), seed=(0, 1), maxval=255.0)
    y = tf.constant([0, 1, 2, 0, 1, 2, 0, 1])
    for _ in range(2):
        loss, logits = step(x, y)
    assert logits.dtype == tf.bfloat16 and loss.dtype == tf.float32
    assert np.isfinite(float(loss))
    assert int(opt.iterations.numpy()) == 2 and int(ema.num_updates.numpy()) == 2
    assert all(v.dtype == "float32" for v in model.trainable_variables)
    assert any(np.abs(v.numpy() - s).max() > 0 for v, s in zip(model.trainable_variables, start))
    kernel = model.get_layer("head").kernel
    k_index = [id(v) for v in ema_lib.averaged_variables(model)].index(id(kernel))
    moved = ema.shadows[k_index].numpy() - start[[id(v) for v in model.trainable_variables]
                                                  .index(id(kernel))]
    assert np.abs(moved).max() > 0


_MIRRORED_SCRIPT = textwrap.dedent("""
    import numpy as np, tensorflow as tf, keras
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
    from efficientnet_tf import ema as ema_lib
    from efficientnet_tf.train import optim
    keras.utils.set_random_seed(8)  # an init where float32 rounding of a near-zero shadow shows
    strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
    with strategy.scope():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, name="d"),
                                  keras.layers.BatchNormalization(name="bn")])
        opt = optim.RMSpropTF1(0.01)
        opt.build(model.trainable_variables)
        ema = ema_lib.ExponentialMovingAverage(model, decay=0.9)
    variables = ema_lib.averaged_variables(model)
    init = [v.numpy().astype(np.float64) for v in variables]

    # 1. Replica-context updates inside strategy.run, in a tf.function, from known values
    #    (expected values in float64, the shadows in float32: atol covers the rounding).
    for v in variables:
        v.assign(v + 1.0)
    @tf.function
    def replica_update(step):
        return strategy.run(lambda s: ema.update(s), args=(step,))
    replica_update(tf.constant(1, tf.int64))
    d1 = min(0.9, 2 / 11)
    shadow = [s - (1 - d1) * (s - (s + 1.0)) for s in init]
    for s, want in zip(ema.shadows, shadow):
        local = [t.numpy() for t in strategy.experimental_local_results(s)]
        assert len(local) == 2
        np.testing.assert_allclose(local[0], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(local[1], want, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(s.numpy(), want, rtol=1e-6, atol=1e-6)

    # 2. A cross-replica call runs the update on every replica.
    ema.update()
    assert int(ema.num_updates.numpy()) == 2
    d2 = min(0.9, 3 / 12)
    cur = [v.numpy() for v in variables]
    shadow = [s - (1 - d2) * (s - c) for s, c in zip(shadow, cur)]
    for s, want in zip(ema.shadows, shadow):
        for t in strategy.experimental_local_results(s):
            np.testing.assert_allclose(t.numpy(), want, rtol=1e-6, atol=1e-6)

    # 3. Real train steps with the update in replica context; trainable shadows agree.
    @tf.function
    def train(x):
        def step(x):
            with tf.GradientTape() as tape:
                loss = tf.reduce_sum(model(x, training=True) ** 2) / 8.0
            grads = tape.gradient(loss, model.trainable_variables)
            opt.apply_gradients(zip(grads, model.trainable_variables))
            ema.update(opt.iterations)
            return loss
        return strategy.run(step, args=(x,))
    ds = strategy.experimental_distribute_dataset(
        tf.data.Dataset.from_tensor_slices(np.random.default_rng(0).normal(size=(24, 4))
                                           .astype("float32")).batch(8))
    for batch in ds:
        train(batch)
    assert int(opt.iterations.numpy()) == 3 and int(ema.num_updates.numpy()) == 5
    for s, v in zip(ema.shadows, variables):
        if v.trainable:
            a, b = [t.numpy() for t in strategy.experimental_local_results(s)]
            np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)

    # 4. Checkpoint under the strategy, restore into a fresh EMA; swap for eval.
    ckpt = tf.train.Checkpoint(model=model, ema=ema)
    path = ckpt.save("{tmp}/ckpt")
    with strategy.scope():
        ema2 = ema_lib.ExponentialMovingAverage(model, decay=0.9)
    tf.train.Checkpoint(ema=ema2).restore(path).expect_partial()
    for a, b in zip(ema.shadows, ema2.shadows):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    before = [v.numpy() for v in variables]
    with ema.swapped(model):
        for v, s in zip(variables, ema.shadows):
            for t in strategy.experimental_local_results(v.value):
                np.testing.assert_array_equal(t.numpy(), s.numpy())
    for v, b in zip(variables, before):
        np.testing.assert_array_equal(v.numpy(), b)
    print("MIRRORED_OK")
""")


def test_ema_under_mirrored_strategy_two_cpus(tmp_path):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=REPO)
    proc = subprocess.run([sys.executable, "-c", _MIRRORED_SCRIPT.replace("{tmp}", str(tmp_path))],
                          capture_output=True, text=True, env=env, timeout=240, cwd=REPO)
    assert "MIRRORED_OK" in proc.stdout, (proc.returncode, proc.stdout[-2000:], proc.stderr[-4000:])
