"""load_weights: read, map and check a whole file, then assign; and the weights= argument check.

Everything is read and checked before anything is assigned: a mismatching file raises
ValueError naming the first mismatching layer and leaves the model untouched.
"""
from __future__ import annotations

import dataclasses
import os

import numpy as np

from efficientnet_tf.constants import IMAGENET_STD, NORMALIZATIONS
from efficientnet_tf.weights.download import WEIGHTS_HASHES, fetch_weights
from efficientnet_tf.weights.formats import FileLayer, basename, is_norm_layer, read_for_model
from efficientnet_tf.weights.published import (
    check_weight_set,
    fetch_checkpoint,
    get_weight_set,
    weight_sets,
)

HEAD_LAYERS = ("predictions",)  # weighted layers that exist only with include_top=True
_UNSET = object()


def check_weights_argument(weights, include_top: bool, classes: int, variant=_UNSET) -> None:
    """Checks `weights` before the model is built. `variant` (a registry key or None) if known."""
    if weights is None:
        return
    if isinstance(weights, str) and weights == "imagenet":
        if variant is None or (variant is not _UNSET and variant not in WEIGHTS_HASHES):
            raise ValueError(
                f"weights='imagenet' (keras.applications' files) exists only for the published "
                f"variants {', '.join(WEIGHTS_HASHES)}, not for {variant or 'a custom scaling'}. "
                "Use weights=None or the path to a weights file made for this architecture.")
        if include_top and classes != 1000:
            raise ValueError(
                f"weights='imagenet' with include_top=True needs classes=1000 (got {classes}). "
                "For another number of classes use include_top=False and add your own head.")
        return
    ws = get_weight_set(weights)
    if ws is not None:
        check_weight_set(ws, None if variant is _UNSET else variant, include_top, classes)
        return
    if not isinstance(weights, (str, os.PathLike)) or not (
            os.path.exists(weights) or os.path.exists(os.fspath(weights) + ".index")):
        raise ValueError(
            f"weights must be None, 'imagenet', a published set ({', '.join(weight_sets())}), "
            f"the path to a weights file or a TF1 checkpoint (prefix or directory); {weights!r} "
            "is none of these (file not found).")


@dataclasses.dataclass
class LoadReport:
    format: str
    layers_loaded: int
    skipped: list  # file layers not loaded (the classifier head into an include_top=False model)
    imagenet_variance_fixed: bool  # std-as-variance file: variance set to std**2
    ema: bool | None = None  # EMA shadows loaded (None: the format has no EMA)
    # The model's input normalization after loading: a constants.NORMALIZATIONS name, "custom"
    # (other statistics) or None (the model has no normalization layer).
    normalization: str | None = None
    path: str = ""  # the file or checkpoint read (the cached copy for downloaded weights)
    reinitialized: list = dataclasses.field(default_factory=list)  # reinit_head: kept as built


def _layer_vars(layer) -> list:
    """A layer's variables in the order Keras saves them (trainable first, as created)."""
    if hasattr(layer, "_trainable_variables"):
        return list(layer._trainable_variables) + list(layer._non_trainable_variables)
    return list(layer.weights)


def _fmt(shape) -> str:
    return str(tuple(int(d) for d in shape))


def _shown(fl: FileLayer) -> str:
    return f"'{fl.name}'" + (f" (stored as '{fl.stored_name}')" if fl.stored_name else "")


def load_weights(model, weights, variant=None, include_top=True, *, base_url=None,
                 cache_dir=None, use_ema: bool = True, file_hash=None,
                 reinit_head: bool = False) -> LoadReport:
    """Loads `weights` ("imagenet", a published set's name or a path) into `model`, all or
    nothing. use_ema=False loads a checkpoint's raw weights instead of its EMA shadows.
    base_url: a mirror; file_hash: the hash the downloaded file (md5/sha256) or archive
    (sha256) must have. reinit_head=True leaves a classifier whose shape differs from the
    file's (other classes) as built instead of refusing, and reports it (fine-tuning)."""
    if isinstance(weights, str) and weights == "imagenet":
        check_weights_argument(weights, include_top, 1000, variant=variant)
        path = fetch_weights(variant, include_top, base_url=base_url, cache_dir=cache_dir,
                             file_hash=file_hash)
    elif get_weight_set(weights) is not None:
        check_weights_argument(weights, include_top, 1000, variant=variant)
        path = fetch_checkpoint(weights, variant, base_url=base_url, cache_dir=cache_dir,
                                file_hash=file_hash)
    else:
        check_weights_argument(weights, include_top, 1000)
        path = os.fspath(weights)
    fmt, file_layers = read_for_model(path, model, use_ema)
    reinit = []
    if reinit_head:
        for fl in file_layers:
            if fl.name in HEAD_LAYERS and _shape_differs(model, fl):
                reinit.append(fl.name)
        file_layers = [fl for fl in file_layers if fl.name not in reinit]
        names = {fl.name for fl in file_layers}
        reinit += [la.name for la in model.layers
                   if la.name in HEAD_LAYERS and la.name not in names and la.name not in reinit]
    plan, loaded, skipped, fixed = _match(model, file_layers, path, fmt.stores_normalization,
                                          optional=set(reinit))
    for var, value in plan:  # everything checked: now assign
        var.assign(np.asarray(value).astype(var.dtype))
    flags = {fl.ema for fl in file_layers if fl.ema is not None}
    return LoadReport(fmt.name, loaded, skipped, fixed, ema=(flags == {True}) if flags else None,
                      normalization=model_normalization(model), path=path, reinitialized=reinit)


def _shape_differs(model, fl) -> bool:
    layer = next((la for la in model.layers if la.name == fl.name), None)
    if layer is None:
        return False
    mine = sorted(tuple(v.shape) for v in _layer_vars(layer))
    return mine != sorted(tuple(np.shape(value)) for _, value in fl.weights)


def model_normalization(model) -> str | None:
    """The name of the input normalization `model` applies (constants.NORMALIZATIONS), "custom"
    for other statistics, None without a normalization layer."""
    layer = next((la for la in model.layers if is_norm_layer(la)), None)
    if layer is None:
        return None
    mean = np.asarray(layer.mean, np.float64).reshape(-1)
    std = np.sqrt(np.asarray(layer.variance, np.float64).reshape(-1))
    for name, (m, s) in NORMALIZATIONS.items():
        if np.allclose(mean, m, rtol=0, atol=1e-6) and np.allclose(std, s, rtol=0, atol=1e-6):
            return name
    return "custom"


def _match(model, file_layers, path, stores_normalization=True, optional=()):
    """[(variable, value)] for every weighted layer of `model`, or ValueError. Format-neutral:
    file_layers carry our layer names already. A format that stores no normalization (TF1
    checkpoints) leaves the model's own; a model without one skips the file's."""
    norms = [fl for fl in file_layers if fl.is_normalization]
    if len(norms) > 1:
        raise ValueError(f"{path} has {len(norms)} normalization layers "
                         f"({', '.join(fl.name for fl in norms)}); expected one.")
    by_name = {fl.name: fl for fl in file_layers if not fl.is_normalization}

    plan, used, fixed = [], set(), False
    for layer in model.layers:
        lvars = _layer_vars(layer)
        if not lvars:
            continue
        if is_norm_layer(layer):
            fl = norms[0] if norms else None
            if fl is None and not stores_normalization:
                continue
        else:
            fl = by_name.get(layer.name)
            if fl is None and layer.name in optional:
                continue
        expected = ", ".join(f"{v.path} {_fmt(v.shape)}" for v in lvars)
        if fl is None:
            hint = ""
            if layer.name in HEAD_LAYERS:
                hint = (" It looks like a notop (include_top=False) file: build the model with "
                        "include_top=False, or use a file saved with the classifier.")
            raise ValueError(f"Weights file {path} has no layer '{layer.name}' (expected "
                             f"{expected}). Refusing a partial load.{hint}")
        used.add(id(fl))
        if len(fl.weights) != len(lvars):
            raise ValueError(f"Weights file {path}: layer {_shown(fl)} has {len(fl.weights)} "
                             f"weights, but '{layer.name}' here needs {len(lvars)}: {expected}.")
        names = [n for n, _ in fl.weights]
        if None not in names:  # the file names its weights: match by name
            ours = {basename(v.path): v for v in lvars}
            if set(names) != set(ours):
                raise ValueError(f"Weights file {path}: layer {_shown(fl)} holds {names}, but "
                                 f"'{layer.name}' here needs {sorted(ours)}.")
            pairs = [(ours[n], value) for n, value in fl.weights]
        else:
            pairs = list(zip(lvars, (value for _, value in fl.weights)))
        for var, value in pairs:
            if tuple(value.shape) != tuple(var.shape):
                raise ValueError(
                    f"Weights file {path}: shape mismatch for {var.path}: the file has "
                    f"{_fmt(value.shape)}, this model expects {_fmt(var.shape)} (layer "
                    f"'{layer.name}'). Is the file for another variant, another number of "
                    "classes, or include_top?")
        if is_norm_layer(layer):
            pairs, fixed = _fix_imagenet_variance(pairs)
        plan += pairs

    skipped = []
    for fl in file_layers:
        if id(fl) in used:
            continue
        if fl.name in HEAD_LAYERS and not any(layer.name == fl.name for layer in model.layers):
            skipped.append(fl.name)  # a top file into an include_top=False model, as Keras
            continue
        if fl.is_normalization:
            skipped.append(fl.name)  # the model takes normalized inputs (normalization=None)
            continue
        raise ValueError(
            f"Weights file {path} has layer {_shown(fl)} with weights that this model "
            f"('{model.name}') lacks: the file is for another architecture or variant "
            "(e.g. a deeper EfficientNet). Refusing a partial load.")
    return plan, len(used), skipped, fixed


def _fix_imagenet_variance(pairs):
    """keras.applications' ImageNet files store std as variance: use std**2 instead."""
    out, fixed = [], False
    for var, value in pairs:
        if basename(var.path) == "variance":
            v = np.asarray(value, dtype=np.float64)
            if v.shape == (3,) and np.allclose(v, IMAGENET_STD, rtol=0, atol=1e-6):
                value, fixed = np.square(np.asarray(IMAGENET_STD, dtype=np.float64)), True
        out.append((var, value))
    return out, fixed
