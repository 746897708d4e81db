"""Converts any weights= source into a Keras file once, so later loads are fast and offline.

    convert_weights("advprop", "b0-advprop.weights.h5", variant="b0")

The output's extension picks the file: `.weights.h5` (Keras 3 `save_weights`), `.keras` (the
whole model, normalization included, `keras.saving.load_model` reads it) or `.h5` (the legacy
HDF5 layout of keras.applications' published files, which
`keras.applications.EfficientNetB0(weights=path)` loads by layer order).

keras.applications' std-as-variance quirk (docs/reference.md "Input normalization") lives in
its weights="imagenet" code path only: with a path it adds no compensation and divides by
sqrt(variance). So the `.h5` written here stores the true variance (std**2), and
keras.applications computes exactly what our model does; our own loader reads it unchanged.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np

from efficientnet_tf import fileio

OUTPUT_KINDS = (".weights.h5", ".keras", ".h5")


def output_kind(path: str) -> str:
    for ext in OUTPUT_KINDS:
        if path.endswith(ext):
            return ext
    raise ValueError(f"--output {path!r}: end it with one of {', '.join(OUTPUT_KINDS)} "
                     "(.weights.h5: Keras 3 weights; .keras: whole model; .h5: the legacy "
                     "layout keras.applications loads).")


def build_for(weights, variant: str, include_top: bool = True, use_ema: bool = True,
              normalization="auto", image_size: int | None = None):
    """(model, LoadReport): the registered variant with `weights` loaded."""
    from efficientnet_tf.builder import build
    from efficientnet_tf.modelspec import resolve
    from efficientnet_tf.weights.load import load_weights
    from efficientnet_tf.weights.published import get_weight_set

    ws = get_weight_set(weights)
    if normalization == "auto" or ws is None:
        spec = resolve(variant, normalization=normalization, weight_set=ws, resolution=image_size)
    else:  # the caller's choice, also against the set's (e.g. None: inputs come normalized)
        spec = resolve(variant, normalization=normalization, resolution=image_size or ws.image_size)
    shape = (image_size, image_size, 3) if image_size else None
    model = build(spec, include_top=include_top, input_shape=shape,
                  classifier_activation="softmax")
    report = load_weights(model, weights, variant=spec.variant, include_top=include_top,
                          use_ema=use_ema)
    return model, report


def convert_weights(weights, output: str, variant: str, include_top: bool = True,
                    use_ema: bool = True, normalization="auto"):
    """Loads `weights` into the variant's model and writes `output`; returns the LoadReport.
    The file appears complete or not at all (written beside it, then renamed)."""
    kind = output_kind(output)
    model, report = build_for(weights, variant, include_top, use_ema, normalization)
    if kind == ".h5" and not any(la.name == "normalization" for la in model.layers):
        raise ValueError("A keras.applications .h5 needs a normalization layer; convert with "
                         "normalization 'imagenet', 'advprop' or 'lite', not None.")
    with tempfile.TemporaryDirectory() as tmp:
        local = os.path.join(tmp, "out" + kind)
        if kind == ".weights.h5":
            model.save_weights(local)
        elif kind == ".keras":
            model.save(local)
        else:
            write_legacy_h5(model, local)
        fileio.put_file(local, output)
    return report


def write_legacy_h5(model, path: str) -> None:
    """keras.applications' weights layout: root attribute layer_names (every layer, in model
    order), one group per layer with weight_names in Keras' order (trainable, then the rest)."""
    import h5py
    import keras

    from efficientnet_tf.weights.formats import basename
    from efficientnet_tf.weights.load import _layer_vars

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [la.name.encode("utf8") for la in model.layers]
        f.attrs["backend"] = b"tensorflow"
        f.attrs["keras_version"] = keras.__version__.encode("utf8")
        for layer in model.layers:
            g = f.create_group(layer.name)
            lvars = _layer_vars(layer)
            names = [f"{layer.name}/{basename(v.path)}:0" for v in lvars]
            g.attrs["weight_names"] = [n.encode("utf8") for n in names]
            for name, var in zip(names, lvars):
                g.create_dataset(name, data=np.asarray(var.numpy()))
