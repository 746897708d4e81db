"""The paper's training recipe as plain Keras pieces, for `model.fit` on any Keras 3 backend.

    model = EfficientNet(..., classifier_activation=None)            # logits
    schedule = learning_rate_schedule(0.016, batch, steps_per_epoch=num_images / batch)
    model.compile(optimizer=RMSpropTF1(schedule), loss=LabelSmoothedCrossEntropy(0.1),
                  metrics=["sparse_categorical_accuracy"])
    add_weight_decay(model, 1e-5)
    model.fit(data, epochs=..., callbacks=[ModelEMA(decay=0.9999)])

Imports only Keras, NumPy and the standard library, so it works with KERAS_BACKEND=jax, torch
or tensorflow. The TensorFlow training job (efficientnet_tf.train) uses the same optimizer and
schedule; docs/training.md "Train with Keras on any backend" says what else differs.
"""
from __future__ import annotations

import contextlib
import math

import keras
import numpy as np
from keras import ops

_PACKAGE = "efficientnet_tf"


# ----------------------------------------------------------------------------- RMSProp
@keras.saving.register_keras_serializable(package=_PACKAGE)
class RMSpropTF1(keras.optimizers.Optimizer):
    """RMSProp with TF1 `tf.compat.v1.train.RMSPropOptimizer` semantics (what the paper used).

        ms  <- rho * ms + (1 - rho) * g^2          (ms starts at ONES, not zeros)
        mom <- momentum * mom + lr * g / sqrt(ms + epsilon)   (epsilon inside the sqrt)
        var <- var - mom

    Keras' RMSprop starts ms at zeros, so its first updates are about 1/sqrt(1 - rho) ~ 3x
    larger for rho = 0.9; with the paper's LR that early kick can destabilize training.
    Works under tf.distribute strategies, jit_compile=True and mixed precision (the update is
    computed in the variable's float32 dtype), and on the JAX and PyTorch backends.
    """

    def __init__(self, learning_rate=0.001, rho: float = 0.9, momentum: float = 0.9,
                 epsilon: float = 1e-3, name: str = "rmsprop_tf1", **kwargs):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        self.rho = float(rho)
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def build(self, var_list):
        if self.built:
            return
        super().build(var_list)
        self._ms = self.add_optimizer_variables(var_list, "ms", initializer="ones")
        self._mom = self.add_optimizer_variables(var_list, "momentum") if self.momentum else []

    def update_step(self, gradient, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        grad = ops.cast(gradient, variable.dtype)
        index = self._get_variable_index(variable)
        ms = self._ms[index]
        self.assign(ms, ops.add(ops.multiply(self.rho, ms),
                                ops.multiply(1.0 - self.rho, ops.square(grad))))
        increment = ops.divide(ops.multiply(lr, grad), ops.sqrt(ops.add(ms, self.epsilon)))
        if self.momentum:
            mom = self._mom[index]
            self.assign(mom, ops.add(ops.multiply(self.momentum, mom), increment))
            self.assign_sub(variable, mom)
        else:
            self.assign_sub(variable, increment)

    def get_config(self):
        config = super().get_config()
        config.update(rho=self.rho, momentum=self.momentum, epsilon=self.epsilon)
        return config


# ----------------------------------------------------------------------------- LR schedule
@keras.saving.register_keras_serializable(package=_PACKAGE)
class WarmupDecaySchedule(keras.optimizers.schedules.LearningRateSchedule):
    """Linear warmup to peak_lr, then staircase exponential decay, cosine, or constant.

    As the TPU reference (utils.build_learning_rate) computes it:
        warmup_steps = int(warmup_epochs * steps_per_epoch)
        step <  warmup_steps: lr = peak_lr * step / warmup_steps          (0 at step 0)
        step >= warmup_steps:
          exponential: peak_lr * decay_rate ** floor(step / (decay_epochs * steps_per_epoch))
          cosine:      0.5 * peak_lr * (1 + cos(pi * min(step, total_steps) / total_steps))
          constant:    peak_lr
    The decay counts from step 0, not from the end of warmup (as the reference): at batch 4096
    the first post-warmup LR is already peak * 0.97^2. decay_steps may be fractional (the
    reference uses steps_per_epoch = num_images / batch, a float). Past total_steps the cosine
    stays at 0 (the reference would rise again; it never runs there).
    """

    def __init__(self, peak_lr: float, steps_per_epoch: float, warmup_epochs: float = 5.0,
                 decay_epochs: float = 2.4, decay_rate: float = 0.97, kind: str = "exponential",
                 total_steps: int | None = None):
        if kind not in ("exponential", "cosine", "constant"):
            raise ValueError(f"kind must be exponential, cosine or constant, got {kind!r}")
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be > 0, got {steps_per_epoch}")
        if kind == "cosine" and not total_steps:
            raise ValueError("The cosine schedule needs total_steps (the last training step).")
        if kind == "exponential" and decay_epochs <= 0:
            raise ValueError(f"decay_epochs must be > 0, got {decay_epochs}")
        self.peak_lr = float(peak_lr)
        self.steps_per_epoch = float(steps_per_epoch)
        self.warmup_epochs = float(warmup_epochs)
        self.decay_epochs = float(decay_epochs)
        self.decay_rate = float(decay_rate)
        self.kind = kind
        self.total_steps = int(total_steps) if total_steps else None
        self.warmup_steps = int(self.warmup_epochs * self.steps_per_epoch)
        self.decay_steps = self.decay_epochs * self.steps_per_epoch

    def __call__(self, step):
        step = ops.cast(step, "float32")
        peak = ops.cast(self.peak_lr, "float32")
        if self.kind == "exponential":
            lr = peak * ops.power(ops.cast(self.decay_rate, "float32"),
                                  ops.floor(step / self.decay_steps))
        elif self.kind == "cosine":
            total = float(self.total_steps)
            lr = 0.5 * peak * (1.0 + ops.cos(math.pi * ops.minimum(step, total) / total))
        else:
            lr = peak * ops.ones_like(step)
        if self.warmup_steps > 0:
            warmup_lr = peak * step / float(self.warmup_steps)
            lr = ops.where(step < float(self.warmup_steps), warmup_lr, lr)
        return lr

    def get_config(self):
        return {"peak_lr": self.peak_lr, "steps_per_epoch": self.steps_per_epoch,
                "warmup_epochs": self.warmup_epochs, "decay_epochs": self.decay_epochs,
                "decay_rate": self.decay_rate, "kind": self.kind, "total_steps": self.total_steps}


class ScaledAfter(keras.optimizers.schedules.LearningRateSchedule):
    """`schedule`, times `scale` from step `start` on (fine-tuning's second phase)."""

    def __init__(self, schedule, start: int, scale: float):
        self.schedule, self.start, self.scale = schedule, int(start), float(scale)

    def __call__(self, step):
        lr = ops.convert_to_tensor(self.schedule(step))
        after = ops.greater_equal(ops.cast(step, "int64"), self.start)
        return lr * ops.cast(ops.where(after, self.scale, 1.0), lr.dtype)

    def get_config(self):
        return {"schedule": keras.optimizers.schedules.serialize(self.schedule),
                "start": self.start, "scale": self.scale}


def learning_rate_schedule(base_lr_per_256: float, global_batch_size: int,
                           steps_per_epoch: float, warmup_epochs: float = 5.0,
                           decay_epochs: float = 2.4, decay_rate: float = 0.97,
                           kind: str = "exponential",
                           total_steps: int | None = None) -> WarmupDecaySchedule:
    """The recipe's schedule with peak LR = base_lr_per_256 * global_batch_size / 256.

    Pass steps_per_epoch = num_train_images / global_batch_size as a float to match the
    reference's warmup and decay boundaries exactly (it does not floor it).
    """
    return WarmupDecaySchedule(base_lr_per_256 * global_batch_size / 256.0, steps_per_epoch,
                               warmup_epochs, decay_epochs, decay_rate, kind, total_steps)


# ----------------------------------------------------------------------------- loss
@keras.saving.register_keras_serializable(package=_PACKAGE)
class LabelSmoothedCrossEntropy(keras.losses.Loss):
    """Softmax cross-entropy from logits with the recipe's label smoothing, in float32.

        target = onehot * (1 - label_smoothing) + label_smoothing / num_classes

    y_true: integer class ids, shape [batch] or [batch, 1], or dense targets [batch, classes].
    y_pred: logits (build the model with classifier_activation=None); bfloat16/float16 logits
    of a mixed-precision model are cast to float32. num_classes None: the logits' last axis.
    Per example it equals efficientnet_tf.train.optim.classification_loss; the default
    reduction averages over the batch.
    """

    def __init__(self, label_smoothing: float = 0.1, num_classes: int | None = None,
                 reduction="sum_over_batch_size", name: str = "label_smoothed_cross_entropy",
                 dtype=None):
        super().__init__(name=name, reduction=reduction, dtype=dtype or "float32")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}")
        self.label_smoothing = float(label_smoothing)
        self.num_classes = int(num_classes) if num_classes else None

    def call(self, y_true, y_pred):
        logits = ops.cast(y_pred, "float32")
        classes = logits.shape[-1]
        if self.num_classes is not None and classes is not None and classes != self.num_classes:
            raise ValueError(f"The logits have {classes} classes but num_classes="
                             f"{self.num_classes}; build the model with classes={self.num_classes}.")
        classes = self.num_classes or classes
        if classes is None:
            raise ValueError("The logits' class axis has no static size: pass num_classes.")
        y_true = ops.convert_to_tensor(y_true)
        dense = len(y_true.shape) == len(logits.shape) and y_true.shape[-1] == classes != 1
        if dense:
            targets = ops.cast(y_true, "float32")
        else:
            ids = y_true
            if len(ids.shape) == len(logits.shape):  # [batch, 1]
                ids = ops.squeeze(ids, axis=-1)
            targets = ops.one_hot(ops.cast(ids, "int32"), classes, dtype="float32")
        if self.label_smoothing:
            targets = targets * (1.0 - self.label_smoothing) + self.label_smoothing / classes
        return -ops.sum(targets * ops.log_softmax(logits, axis=-1), axis=-1)

    def get_config(self):
        config = super().get_config()
        config.update(label_smoothing=self.label_smoothing, num_classes=self.num_classes)
        return config


# ----------------------------------------------------------------------------- L2
def bn_layers(model) -> list:
    layers = model._flatten_layers() if hasattr(model, "_flatten_layers") else [model]
    return [layer for layer in layers if isinstance(layer, keras.layers.BatchNormalization)]


def _is_bn_name(name: str) -> bool:
    name = name.lower()
    if "batch_normalization" in name or "batchnorm" in name:
        return True
    parts = name.replace("/", "_").replace(":", "_").split("_")
    return "bn" in parts


def l2_variables(model) -> list:
    """Trainable variables the L2 term covers: all but those of BatchNormalization layers
    (found by layer type, nested layers included; a variable name with a 'bn' /
    'batch_normalization' component is also excluded, as a fallback for custom BN layers)."""
    bn_ids = {id(v) for layer in bn_layers(model) for v in layer.weights}
    return [v for v in model.trainable_variables
            if id(v) not in bn_ids and not _is_bn_name(getattr(v, "path", None) or v.name)]


def add_weight_decay(model, weight_decay: float) -> list:
    """Makes `model.fit`'s loss include weight_decay * sum(v^2) / 2 over l2_variables(model),
    the term the TensorFlow training job adds (train.optim.l2_regularization_loss).

    Sets each variable's `regularizer` (Keras adds regularizers to model.losses, which every
    backend's train step sums into the loss and reports in "loss"). weight_decay 0 removes it.
    Returns the variables covered. Call it after compile (compile does not undo it; the next
    fit / evaluate traces its step again). Not saved in the model's config: call it again after
    rebuilding or loading a model, and do not combine it with the TensorFlow training job,
    which adds the term itself. Replaces any regularizer those variables had.
    """
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
    if not model.built or not model.weights:
        raise ValueError("Build the model (call it once or give it an input shape) before "
                         "add_weight_decay.")
    # keras.regularizers.L2(l2) is l2 * sum(v^2): half the decay gives the recipe's term.
    regularizer = keras.regularizers.L2(weight_decay / 2.0) if weight_decay else None
    variables = l2_variables(model)
    for variable in variables:
        variable.regularizer = regularizer
    # Steps traced before (a fit or evaluate) read model.losses when traced: trace them again.
    for name in ("train_function", "test_function"):
        if getattr(model, name, None) is not None:
            setattr(model, name, None)
    return variables


# ----------------------------------------------------------------------------- EMA
def _value(variable):
    """The variable's current value, with no autograd link (PyTorch)."""
    return ops.stop_gradient(ops.convert_to_tensor(variable.value))


def _read(variable):
    """A copy of the current value (PyTorch updates variables in place)."""
    return ops.copy(_value(variable))


def averaged_variables(model) -> list:
    """The model variables an EMA averages: all floating-point model weights, i.e. trainable
    variables plus non-trainable ones such as BN moving_mean/moving_variance (not optimizer
    state, not integer state such as RNG seeds). Also efficientnet_tf.ema's pick."""
    return [v for v in model.weights if v.dtype in ("float32", "float64", "float16", "bfloat16")]


class ModelEMA(keras.callbacks.Callback):
    """The exponential moving average of a model's weights during `model.fit`, as the TPU
    reference keeps it (efficientnet_tf.ema.ExponentialMovingAverage, for model.fit):

        decay_t = min(decay, (1 + t) / (10 + t))        (t = updates so far, 1 at the first)
        shadow <- shadow - (1 - decay_t) * (shadow - variable)

    after every training batch, over averaged_variables(model) (BN statistics included).
    Validation inside fit (and model.evaluate given this callback) runs on the averages; the
    training values come back when it ends. With swap_on_end=True the averages are written
    into the model when fit ends (save_weights then saves them); a later fit with the same
    callback first puts the training values back and continues the average.

    The shadows are backend tensors on the weights' device; the update runs eagerly, one
    small op per variable per step. Use steps_per_execution=1 (with more, it updates once per
    execution). On JAX it syncs the model's state after each batch to read it.
    """

    def __init__(self, decay: float = 0.9999, num_updates_warmup: bool = True,
                 swap_on_end: bool = True):
        super().__init__()
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.decay = float(decay)
        self.num_updates_warmup = bool(num_updates_warmup)
        self.swap_on_end = bool(swap_on_end)
        self.num_updates = 0
        self.shadows = None
        self._variables = None
        self._training_values = None  # the training weights while the averages are in
        self._swapped_out = None      # training values held by swap_on_end

    # ------------------------------------------------------------------ update
    def current_decay(self, t: int | None = None) -> float:
        """decay_t for update number t (default: the updates so far)."""
        t = self.num_updates if t is None else t
        if self.num_updates_warmup:
            return min(self.decay, (1.0 + t) / (10.0 + t))
        return self.decay

    def _sync(self):
        sync = getattr(self.model, "jax_state_sync", None)
        if sync is not None:
            sync()

    def on_train_begin(self, logs=None):
        self._sync()
        variables = averaged_variables(self.model)
        if self._swapped_out is not None:
            for variable, value in zip(self._variables, self._swapped_out):
                variable.assign(value)
            self._swapped_out = None
        if self.shadows is None:
            self._variables = variables
            self.shadows = [_read(v) for v in variables]
        elif [tuple(v.shape) for v in variables] != [tuple(s.shape) for s in self.shadows]:
            raise ValueError("This model's weights do not match the EMA's: use a new ModelEMA "
                             "for a different model.")
        else:
            self._variables = variables

    def on_train_batch_end(self, batch, logs=None):
        self._sync()
        self.num_updates += 1
        one_minus = 1.0 - self.current_decay()
        self.shadows = [ops.subtract(s, ops.multiply(one_minus, ops.subtract(s, _value(v))))
                        for s, v in zip(self.shadows, self._variables)]

    # ------------------------------------------------------------------ use
    def _swap_in(self):
        self._sync()
        self._training_values = [_read(v) for v in self._variables]
        self.copy_to()

    def _swap_out(self):
        self._sync()
        for variable, value in zip(self._variables, self._training_values):
            variable.assign(value)
        self._training_values = None

    def on_test_begin(self, logs=None):
        if self.shadows is not None and self._training_values is None:
            self._swap_in()

    def on_test_end(self, logs=None):
        if self._training_values is not None:
            self._swap_out()

    def on_train_end(self, logs=None):
        if self.swap_on_end and self.shadows is not None:
            self._swap_in()
            self._swapped_out, self._training_values = self._training_values, None

    def copy_to(self, model=None):
        """Writes the averages into `model` (default: the model being trained; another model
        must have the same architecture)."""
        targets = self._variables if model is None else averaged_variables(model)
        if self.shadows is None:
            raise ValueError("The EMA has no averages yet: train with it first.")
        if [tuple(t.shape) for t in targets] != [tuple(s.shape) for s in self.shadows]:
            raise ValueError("This model's weights do not match the EMA's (different "
                             "architecture or variable order); build the same model.")
        for target, shadow in zip(targets, self.shadows):
            # A copy: JAX's train and test steps donate (free) the variables' buffers.
            target.assign(ops.copy(ops.cast(shadow, target.dtype)))

    @contextlib.contextmanager
    def swapped(self, model=None):
        """Context in which `model` (default: the trained one) holds the averages; its own
        values come back on exit, even on an exception."""
        model = model or self.model
        targets = averaged_variables(model)
        backup = [_read(t) for t in targets]
        self.copy_to(model)
        try:
            yield model
        finally:
            for target, value in zip(targets, backup):
                target.assign(value)

    def averages(self) -> list:
        """The averages as NumPy arrays, in averaged_variables(model) order."""
        return [np.asarray(ops.convert_to_numpy(s)) for s in (self.shadows or [])]
