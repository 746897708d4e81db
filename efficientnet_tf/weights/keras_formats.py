"""The built-in formats: Keras 3 .keras archives, legacy HDF5 (.h5) and Keras 3 .weights.h5.

  * "keras": a Keras 3 `.keras` archive (its model.weights.h5 is read);
  * "legacy_h5": a keras.applications weights file in the legacy HDF5 layout (how the
    published efficientnetbN.h5 / efficientnetbN_notop.h5 are stored: root attribute
    `layer_names`, one group per layer with a `weight_names` attribute), or a full-model .h5;
  * "keras_weights_h5": a Keras 3 `.weights.h5` (`model.save_weights`), keras.applications'
    or ours.
"""
from __future__ import annotations

import io
import os
import re
import zipfile

import numpy as np

from efficientnet_tf.weights.formats import (
    FileLayer,
    WeightFormat,
    basename,
    is_norm_layer,
    keep_names,
    register_format,
)

_NORM_WEIGHTS = ("mean", "variance", "count")


def _decode(s) -> str:
    return s.decode("utf8") if isinstance(s, bytes) else str(s)


def _h5_attr_list(group, name):
    """A list attribute, also when Keras split it into name0, name1, ... (large models)."""
    if name in group.attrs:
        return [_decode(s) for s in group.attrs[name]]
    if f"{name}0" in group.attrs:
        out, i = [], 0
        while f"{name}{i}" in group.attrs:
            out += [_decode(s) for s in group.attrs[f"{name}{i}"]]
            i += 1
        return out
    return None


def _legacy_root(f):
    return f["model_weights"] if "model_weights" in f else f  # full-model files nest it


def _hdf5_with(path: str, test) -> bool:
    import h5py

    if not os.path.isfile(path) or not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as f:
        return bool(test(f))


def _is_keras_archive(path: str) -> bool:
    if not zipfile.is_zipfile(path):
        return False
    with zipfile.ZipFile(path) as zf:
        return "model.weights.h5" in zf.namelist()


def _is_legacy_h5(path: str) -> bool:
    def test(f):
        attrs = _legacy_root(f).attrs
        return "layer_names" in attrs or "layer_names0" in attrs

    return _hdf5_with(path, test)


def _is_keras_weights_h5(path: str) -> bool:
    return _hdf5_with(path, lambda f: "layers" in f)


def _read_keras_archive(path: str) -> list[FileLayer]:
    import h5py

    with zipfile.ZipFile(path) as zf:
        data = io.BytesIO(zf.read("model.weights.h5"))
    with h5py.File(data, "r") as f:
        return _read_keras3(f, path)


def _read_keras_weights_h5(path: str) -> list[FileLayer]:
    import h5py

    with h5py.File(path, "r") as f:
        return _read_keras3(f, path)


def _read_legacy_h5(path: str) -> list[FileLayer]:
    import h5py

    with h5py.File(path, "r") as f:
        group = _legacy_root(f)
        out = []
        for lname in _h5_attr_list(group, "layer_names"):
            if lname not in group:
                raise ValueError(f"{path}: layer '{lname}' is listed in layer_names but has "
                                 "no group.")
            g = group[lname]
            wnames = _h5_attr_list(g, "weight_names") or []
            if not wnames:
                continue
            weights = [(basename(w), _dataset(g[w])) for w in wnames]
            out.append(FileLayer(lname, weights,
                                 is_normalization=[w for w, _ in weights] == list(_NORM_WEIGHTS)))
        return out


def _read_keras3(f, path) -> list[FileLayer]:
    out = []
    for key in f["layers"]:
        g = f["layers"][key]
        if _count_datasets(g) != (len(g["vars"]) if "vars" in g else 0):
            raise ValueError(f"{path}: layer {key} has nested weights; this loader reads flat "
                             "models such as keras.applications' EfficientNet.")
        if "vars" not in g or len(g["vars"]) == 0:
            continue
        v = g["vars"]
        weights = [(None, _dataset(v[str(i)])) for i in range(len(v))]
        name = _decode(v.attrs["name"]) if "name" in v.attrs else None
        norm = re.fullmatch(r"(normalization|normalize)(_\d+)?", key) is not None
        out.append(FileLayer(name or key, weights, key=key, is_normalization=norm))
    return out


def _count_datasets(g) -> int:
    out = []
    g.visititems(lambda name, obj: None if hasattr(obj, "keys") else out.append(name))
    return len(out)


def _dataset(ds) -> np.ndarray:
    value = np.array(ds)
    if ds.attrs.get("dtype") in ("bfloat16", b"bfloat16"):
        import ml_dtypes

        value = value.view(ml_dtypes.bfloat16)
    return value


def _keras3_names(file_layers, model) -> list:
    """Keras 3 files written before layer names were stored hold only class-based keys
    ("conv2d_3"): those map to our layers by class and order, as Keras loads them."""
    if not all(fl.key == fl.name for fl in file_layers if not fl.is_normalization):
        return keep_names(file_layers, model)
    ours = {key: name for name, key in _keras3_keys(model).items()}
    return [fl.name if fl.is_normalization else ours.get(fl.key, fl.name) for fl in file_layers]


def _snake(name: str) -> str:  # keras' class-name -> key rule for .weights.h5 objects
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras3_keys(model) -> dict:
    """layer name -> the key Keras 3 would give it in a .weights.h5 (class name + counter)."""
    used: dict = {}
    keys = {}
    for layer in model.layers:
        base = "normalization" if is_norm_layer(layer) else _snake(layer.__class__.__name__)
        if base in used:
            used[base] += 1
            keys[layer.name] = f"{base}_{used[base]}"
        else:
            used[base] = 0
            keys[layer.name] = base
    return keys


register_format(WeightFormat(
    "keras", _is_keras_archive, _read_keras_archive, _keras3_names,
    "a Keras 3 .keras archive: a zip holding model.weights.h5"))
register_format(WeightFormat(
    "legacy_h5", _is_legacy_h5, _read_legacy_h5,
    description="keras.applications .h5 or a full-model .h5: HDF5 with a 'layer_names' attribute"))
register_format(WeightFormat(
    "keras_weights_h5", _is_keras_weights_h5, _read_keras_weights_h5, _keras3_names,
    "a Keras 3 .weights.h5 from model.save_weights: HDF5 with a 'layers' group"))
