"""Runs under KERAS_BACKEND=jax or torch for tests/test_backends.py (Keras picks its backend
at import, hence a subprocess).

    KERAS_BACKEND=jax python tests/backend_worker.py DIR

DIR holds what the TensorFlow side wrote (inputs.npy, <name>.tf.weights.h5); the worker writes
<name>.<backend>.weights.h5 / .npy, <name>.from_tf.npy and result.json.
"""
import gzip
import importlib
import json
import os
import sys
import time

import numpy as np

MODELS = ("EfficientNetB0", "EfficientNetLite0")
FMNIST = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def perturb(model, seed):
    """Random BN statistics, scales and biases (they start at 0 / 1), so that every weight
    matters and a B0's logits are not ~1e-4 (as at its initialization)."""
    rng = np.random.default_rng(seed)
    for v in model.weights:
        name = v.path.rsplit("/", 1)[-1]
        if name in ("gamma", "moving_variance"):
            v.assign(rng.uniform(0.5, 1.5, v.shape).astype("float32"))
        elif name in ("beta", "moving_mean", "bias"):
            v.assign(rng.normal(0.0, 0.2, v.shape).astype("float32"))


def _fast_random_init():
    """Draw initial weights with NumPy. JAX compiles its sampler once per weight shape (~0.2 s
    each, 20 s for a B0 on 2 cores); these tests load or overwrite the weights anyway."""
    import keras

    if keras.backend.backend() != "jax":
        return
    import jax.numpy as jnp
    from keras.src.backend.jax import random as jax_random

    rng = np.random.default_rng(0)

    def normal(shape, mean=0.0, stddev=1.0, dtype=None, seed=None):
        return jnp.asarray(rng.normal(mean, stddev, size=shape), dtype=dtype or "float32")

    def uniform(shape, minval=0.0, maxval=1.0, dtype=None, seed=None):
        return jnp.asarray(rng.uniform(minval, maxval, size=shape), dtype=dtype or "float32")

    jax_random.normal = jax_random.truncated_normal = normal
    jax_random.uniform = uniform


def forward(backend, folder):
    import efficientnet_tf.model as model_lib

    x = np.load(os.path.join(folder, "inputs.npy"))
    out = {}
    for name in MODELS:
        start = time.time()
        model = getattr(model_lib, name)(weights=None, input_shape=x.shape[1:], classes=10,
                                         classifier_activation=None)
        # b. This backend's own weights, saved for the TensorFlow side to load.
        perturb(model, seed=1)
        np.save(os.path.join(folder, f"{name}.{backend}.npy"), np.asarray(model.predict(x, verbose=0)))
        model.save_weights(os.path.join(folder, f"{name}.{backend}.weights.h5"))
        # a. The TensorFlow side's weights, loaded here.
        model.load_weights(os.path.join(folder, f"{name}.tf.weights.h5"))
        np.save(os.path.join(folder, f"{name}.from_tf.npy"), np.asarray(model.predict(x, verbose=0)))
        out[name] = {"seconds": round(time.time() - start, 1)}
    return out


def _idx(path, offset):
    with gzip.open(path) as f:
        return np.frombuffer(f.read(), np.uint8, offset=offset)


def _fashion_mnist(split, n):
    prefix = "train" if split == "train" else "t10k"
    images = _idx(os.path.join(FMNIST, f"{prefix}-images-idx3-ubyte.gz"), 16).reshape(-1, 28, 28)
    labels = _idx(os.path.join(FMNIST, f"{prefix}-labels-idx1-ubyte.gz"), 8)
    images = np.pad(images[:n], ((0, 0), (2, 2), (2, 2)))            # 28 -> 32 px
    return np.repeat(images[..., None], 3, -1).astype("float32"), labels[:n].astype("int32")


def fit():
    """Three epochs of the recipe on 384 Fashion-MNIST images, a tiny three-stage network."""
    import keras

    from efficientnet_tf import recipe
    from efficientnet_tf.model import EfficientNet
    from efficientnet_tf.spec import B0_BLOCKS

    x, y = _fashion_mnist("train", 384)
    x_val, y_val = _fashion_mnist("test", 256)
    keras.utils.set_random_seed(1)
    model = EfficientNet(0.25, 0.1, 32, dropout_rate=0.0, drop_connect_rate=0.0, stem_strides=1,
                         blocks=B0_BLOCKS[:3], bn_momentum=0.9, input_shape=(32, 32, 3),
                         classes=10, classifier_activation=None, name="tiny")
    batch, epochs, weight_decay = 32, 3, 1e-4
    schedule = recipe.learning_rate_schedule(0.128, batch, len(x) / batch, warmup_epochs=0.5,
                                             decay_epochs=1.0, decay_rate=0.9)
    loss = recipe.LabelSmoothedCrossEntropy(0.1)
    model.compile(optimizer=recipe.RMSpropTF1(schedule), loss=loss,
                  metrics=["sparse_categorical_accuracy"])
    covered = recipe.add_weight_decay(model, weight_decay)
    ema = recipe.ModelEMA(decay=0.99)
    start = time.time()
    history = model.fit(x, y, batch_size=batch, epochs=epochs, validation_data=(x_val, y_val),
                        callbacks=[ema], verbose=0, shuffle=True).history
    fit_seconds = time.time() - start

    variables = recipe.averaged_variables(model)
    after = [np.asarray(keras.ops.convert_to_numpy(v.value)) for v in variables]
    averages = ema.averages()
    raw = [np.asarray(keras.ops.convert_to_numpy(v)) for v in ema._swapped_out]
    # With the averages in the model: the reported loss should be the mean smoothed CE plus
    # weight_decay * sum(v^2) / 2 over the covered variables.
    logits = model.predict(x_val, verbose=0)
    ce = float(keras.ops.convert_to_numpy(loss(y_val, logits)))
    l2 = weight_decay * sum(0.5 * float(np.sum(np.square(
        keras.ops.convert_to_numpy(v.value).astype(np.float64)))) for v in covered)
    evaluated = model.evaluate(x_val, y_val, batch_size=256, verbose=0, return_dict=True)
    return {
        "loss": history["loss"], "accuracy": history["sparse_categorical_accuracy"],
        "val_loss": history["val_loss"],
        "val_accuracy": history["val_sparse_categorical_accuracy"],
        "eval_loss": evaluated["loss"], "eval_accuracy": evaluated["sparse_categorical_accuracy"],
        "ce": ce, "l2": l2, "num_covered": len(covered),
        "num_trainable": len(model.trainable_variables),
        "num_updates": ema.num_updates, "steps": epochs * len(x) // batch,
        "model_equals_averages": all(np.array_equal(a, b) for a, b in zip(after, averages)),
        "max_average_vs_raw": max(float(np.abs(a - b).max()) for a, b in zip(averages, raw)),
        "fit_seconds": round(fit_seconds, 1),
    }


def group_bn():
    from efficientnet_tf.layers import GroupBatchNormalization

    try:
        GroupBatchNormalization(group_size=2)
    except ValueError as e:
        plain = GroupBatchNormalization(group_size=1)  # still allowed
        return {"error": str(e), "group_size_1": plain.group_size}
    return {"error": None}


def main():
    import keras

    backend, folder = keras.backend.backend(), sys.argv[1]
    _fast_random_init()
    start = time.time()
    result = {"backend": backend, "group_bn": group_bn(), "forward": forward(backend, folder)}
    importlib.import_module("efficientnet_tf.recipe")
    # Before fit: keras.utils.set_random_seed imports TensorFlow itself when it is installed.
    result["tensorflow_imported"] = "tensorflow" in sys.modules
    if os.path.exists(os.path.join(FMNIST, "train-images-idx3-ubyte.gz")):
        result["fit"] = fit()
    result["seconds"] = round(time.time() - start, 1)
    with open(os.path.join(folder, "result.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
