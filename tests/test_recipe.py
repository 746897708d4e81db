"""efficientnet_tf/recipe.py on the TensorFlow backend: the loss, weight decay and the EMA
callback agree with the TensorFlow training job's pieces (train/optim.py, ema.py).
The other backends: tests/test_backends.py."""
import keras
import numpy as np
import pytest
import tensorflow as tf

from conftest import tiny_bn_model
from efficientnet_tf import ema as ema_lib
from efficientnet_tf import recipe
from efficientnet_tf.train import optim


# ----------------------------------------------------------------------------- loss
@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_equals_classification_loss(smoothing):
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 3, (6, 5)).astype("float32")
    ids = np.array([0, 4, 2, 2, 1, 3])
    want = optim.classification_loss(ids, logits, 5, smoothing).numpy()
    per_example = recipe.LabelSmoothedCrossEntropy(smoothing, reduction=None)
    for labels in (ids, ids[:, None], ids.astype("float32"), np.eye(5)[ids]):
        got = per_example(labels, logits)
        np.testing.assert_allclose(np.asarray(got), want, rtol=1e-6, atol=1e-6)
    mean = recipe.LabelSmoothedCrossEntropy(smoothing, num_classes=5)(ids, logits)
    assert float(mean) == pytest.approx(want.mean(), rel=1e-6)
    # Smoothing changes the value (the test can tell them apart).
    other = optim.classification_loss(ids, logits, 5, 0.1 - smoothing).numpy()
    assert np.abs(other - want).max() > 1e-3


def test_loss_casts_bfloat16_logits_and_checks_classes():
    logits = np.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]], np.float32)
    labels = np.array([0, 1])
    want = optim.classification_loss(labels, logits, 3, 0.1).numpy()
    loss = recipe.LabelSmoothedCrossEntropy(0.1, reduction=None)
    got = loss(labels, tf.cast(logits, tf.bfloat16))
    assert got.dtype == tf.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=2e-2)
    with pytest.raises(ValueError, match="num_classes=5"):
        recipe.LabelSmoothedCrossEntropy(0.1, num_classes=5)(labels, logits)
    with pytest.raises(ValueError, match="label_smoothing"):
        recipe.LabelSmoothedCrossEntropy(1.5)


def test_loss_serializes():
    loss = recipe.LabelSmoothedCrossEntropy(0.2, num_classes=3)
    clone = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(clone, recipe.LabelSmoothedCrossEntropy)
    assert (clone.label_smoothing, clone.num_classes) == (0.2, 3)


# ----------------------------------------------------------------------------- weight decay
def test_add_weight_decay_puts_the_training_jobs_l2_into_fit_loss():
    model = tiny_bn_model(1)
    for v in model.trainable_variables:  # BN gamma/beta away from 1/0, so excluding them shows
        v.assign(np.random.default_rng(len(v.path)).normal(size=v.shape).astype("float32"))
    loss = recipe.LabelSmoothedCrossEntropy(0.1)
    model.compile(optimizer=recipe.RMSpropTF1(0.0), loss=loss)
    x = np.random.default_rng(2).uniform(0, 1, (8, 4, 4, 3)).astype("float32")
    y = np.array([0, 1, 2, 0, 1, 2, 0, 1])
    plain = model.evaluate(x, y, verbose=0)
    covered = recipe.add_weight_decay(model, 1e-2)
    assert {v.path for v in covered} == {"stem_conv/kernel", "head/kernel", "head/bias"}
    term = float(optim.l2_regularization_loss(model, 1e-2))
    assert term > 1e-3
    assert model.evaluate(x, y, verbose=0) == pytest.approx(plain + term, rel=1e-6)
    recipe.add_weight_decay(model, 0.0)
    assert model.evaluate(x, y, verbose=0) == pytest.approx(plain, rel=1e-6)
    # fit's reported loss includes it too (lr 0: the weights stay put; BN uses batch stats).
    recipe.add_weight_decay(model, 1e-2)
    ce = float(loss(y, model(x, training=True)))
    fitted = model.fit(x, y, batch_size=8, epochs=1, verbose=0, shuffle=False).history["loss"][0]
    assert fitted == pytest.approx(ce + term, rel=1e-5)
    with pytest.raises(ValueError, match="weight_decay"):
        recipe.add_weight_decay(model, -1.0)


# ----------------------------------------------------------------------------- EMA
def test_model_ema_matches_the_training_jobs_ema():
    model = tiny_bn_model(3)
    variables = recipe.averaged_variables(model)
    assert [v.path for v in variables] == [v.path for v in ema_lib.averaged_variables(model)]
    assert any("moving_mean" in v.path for v in variables)
    reference = ema_lib.ExponentialMovingAverage(model, decay=0.9)
    callback = recipe.ModelEMA(decay=0.9)
    callback.set_model(model)
    callback.on_train_begin()
    rng = np.random.default_rng(4)
    for step in range(5):  # t = 1 .. 5: decay_t = 2/11, 3/12, ... then 0.9 caps nothing yet
        for v in variables:
            v.assign(v.numpy() + rng.normal(size=v.shape).astype("float32"))
        reference.update()
        callback.on_train_batch_end(step)
    assert callback.num_updates == 5
    assert callback.current_decay() == pytest.approx(float(reference.current_decay()), rel=1e-6)
    for mine, theirs in zip(callback.averages(), reference.shadows):
        np.testing.assert_allclose(mine, theirs.numpy(), rtol=1e-5, atol=1e-6)
    assert np.abs(callback.averages()[0] - variables[0].numpy()).max() > 1e-2


def test_model_ema_swaps_for_validation_and_at_the_end():
    model = tiny_bn_model(5)
    variables = recipe.averaged_variables(model)
    callback = recipe.ModelEMA(decay=0.5)
    callback.set_model(model)
    callback.on_train_begin()
    for v in variables:
        v.assign(v.numpy() + 1.0)
    callback.on_train_batch_end(0)
    training = [v.numpy() for v in variables]
    callback.on_test_begin()
    for v, a in zip(variables, callback.averages()):
        np.testing.assert_array_equal(v.numpy(), a)
    callback.on_test_end()
    for v, t in zip(variables, training):
        np.testing.assert_array_equal(v.numpy(), t)
    callback.on_train_end()  # swap_on_end: the averages stay in
    for v, a in zip(variables, callback.averages()):
        np.testing.assert_array_equal(v.numpy(), a)
    assert np.abs(variables[0].numpy() - training[0]).max() > 0.1
    callback.on_train_begin()  # another fit: the training values come back first
    for v, t in zip(variables, training):
        np.testing.assert_array_equal(v.numpy(), t)
    with callback.swapped():
        np.testing.assert_array_equal(variables[0].numpy(), callback.averages()[0])
    np.testing.assert_array_equal(variables[0].numpy(), training[0])
    with pytest.raises(ValueError, match="decay"):
        recipe.ModelEMA(decay=1.0)


def test_model_ema_in_fit_with_validation():
    """A real fit on TensorFlow: one update per batch, validation on the averages."""
    model = tiny_bn_model(6)
    model.compile(optimizer=recipe.RMSpropTF1(0.05), loss=recipe.LabelSmoothedCrossEntropy(0.1))
    x = np.random.default_rng(7).uniform(0, 1, (32, 4, 4, 3)).astype("float32")
    y = np.arange(32) % 3
    callback = recipe.ModelEMA(decay=0.9)
    history = model.fit(x, y, batch_size=8, epochs=2, validation_data=(x, y), verbose=0,
                        callbacks=[callback]).history
    assert callback.num_updates == 8
    # The model holds the averages now; the last validation ran on the same weights.
    assert history["val_loss"][-1] == pytest.approx(model.evaluate(x, y, verbose=0), rel=1e-5)
    raw_model = tiny_bn_model(6)
    for v, raw in zip(recipe.averaged_variables(raw_model), callback._swapped_out):
        v.assign(raw)
    raw_model.compile(loss=recipe.LabelSmoothedCrossEntropy(0.1))
    assert raw_model.evaluate(x, y, verbose=0) != pytest.approx(history["val_loss"][-1], rel=1e-4)


# ----------------------------------------------------------------------------- schedule
def test_scaled_after_and_schedule_are_the_training_jobs():
    assert optim.WarmupDecaySchedule is recipe.WarmupDecaySchedule
    assert optim.RMSpropTF1 is recipe.RMSpropTF1
    base = recipe.learning_rate_schedule(0.1, 256, 10, warmup_epochs=0, kind="constant")
    scaled = recipe.ScaledAfter(base, start=5, scale=0.5)
    assert float(scaled(4)) == pytest.approx(0.1)
    assert float(scaled(5)) == pytest.approx(0.05)
