"""weights=None | "imagenet" | path: argument checks, downloading and loading.

A path may be
  * a keras.applications weights file in the legacy HDF5 layout (how the published
    efficientnetbN.h5 / efficientnetbN_notop.h5 are stored: root attribute `layer_names`,
    one group per layer with a `weight_names` attribute), or a full-model legacy .h5;
  * a Keras 3 `.weights.h5` (`model.save_weights`), from keras.applications or from ours;
  * a Keras 3 `.keras` archive (its model.weights.h5 is read).

Weights are matched to our layers by layer name (our names are Keras Applications'). The
Normalization layer is found by its type, since Keras numbers it (normalization_1, ...) when
several models are built in one process. Everything is read and checked before anything is
assigned: a mismatching file raises ValueError and leaves the model untouched.

ImageNet normalization quirk: keras.applications' published files store the ImageNet STD
values as the Normalization "variance"; keras.applications(weights="imagenet") compensates
with an extra Rescaling(1/sqrt(std)), so it effectively computes (x/255 - mean) / std. When a
file's variance equals those std values (within 1e-6) we load variance = std**2, which gives
exactly that; any other variance is loaded as it is (what keras weights=None + load_weights does).
"""
from __future__ import annotations

import dataclasses
import hashlib
import http.client
import io
import os
import re
import tempfile
import urllib.error
import urllib.request
import warnings
import zipfile

import numpy as np

# keras/src/applications/efficientnet.py (Keras 3.15): BASE_WEIGHTS_PATH, WEIGHTS_HASHES.
# The hashes are 32 hex digits, i.e. MD5 (keras.utils.get_file picks md5 for those).
BASE_WEIGHTS_URL = "https://storage.googleapis.com/keras-applications/"
WEIGHTS_HASHES = {  # variant: (with top "efficientnetbN.h5", notop "efficientnetbN_notop.h5")
    "b0": ("902e53a9f72be733fc0bcb005b3ebbac", "50bc09e76180e00e4465e1a485ddc09d"),
    "b1": ("1d254153d4ab51201f1646940f018540", "74c4e6b3e1f6a1eea24c589628592432"),
    "b2": ("b15cce36ff4dcbd00b6dd88e7857a6ad", "111f8e2ac8aa800a7a99e3239f7bfb39"),
    "b3": ("ffd1fdc53d0ce67064dc6a9c7960ede0", "af6d107764bb5b1abb91932881670226"),
    "b4": ("18c95ad55216b8f92d7e70b3a046e2fc", "ebc24e6d6c33eaebbd558eafbeedf1ba"),
    "b5": ("ace28f2a6363774853a83a0b21b9421a", "38879255a25d3c92d5e44e04ae6cec6f"),
    "b6": ("165f6e37dce68623721b423839de8be5", "9ecce42647a20130c1f39a5d4cb75743"),
    "b7": ("8c03f828fec3ef71311cd463b6759d99", "cbcfe4450ddf6f3ad90b1b398090fe4a"),
}
URL_ENV = "EFFICIENTNET_TF_WEIGHTS_URL"
CACHE_ENV = "EFFICIENTNET_TF_CACHE"
IMAGENET_STD = (0.229, 0.224, 0.225)
HEAD_LAYERS = ("predictions",)  # weighted layers that exist only with include_top=True
_NORM_WEIGHTS = ("mean", "variance", "count")
_UNSET = object()


class WeightsDownloadError(OSError):
    """The ImageNet weights could not be downloaded (offline, HTTP error, ...)."""


class WeightsHashError(ValueError):
    """A downloaded or cached weights file does not have the published hash."""


# ----------------------------------------------------------------------------- arguments

def check_weights_argument(weights, include_top: bool, classes: int, variant=_UNSET) -> None:
    """Checks `weights` before the model is built. `variant` (b0..b7 or None) if known."""
    if weights is None:
        return
    if isinstance(weights, str) and weights == "imagenet":
        if variant is None:
            raise ValueError(
                "weights='imagenet' exists only for the published variants b0..b7 "
                "(EfficientNetB0..EfficientNetB7); a custom scaling has no ImageNet weights. "
                "Use weights=None or the path to a weights file made for this architecture.")
        if include_top and classes != 1000:
            raise ValueError(
                f"weights='imagenet' with include_top=True needs classes=1000 (got {classes}). "
                "For another number of classes use include_top=False and add your own head.")
        return
    if not isinstance(weights, (str, os.PathLike)) or not os.path.exists(weights):
        raise ValueError(
            f"weights must be None, 'imagenet' or the path to a weights file; {weights!r} "
            "is none of these (file not found).")


# ----------------------------------------------------------------------------- download

def weights_file_name(variant: str, include_top: bool) -> str:
    """keras.applications' file name, so an existing ~/.keras/models cache is reused."""
    return f"efficientnet{variant}{'' if include_top else '_notop'}.h5"


def default_cache_dir() -> str:
    """$EFFICIENTNET_TF_CACHE, else $KERAS_HOME/models, else ~/.keras/models (as Keras)."""
    if os.environ.get(CACHE_ENV):
        return os.path.expanduser(os.environ[CACHE_ENV])
    keras_home = os.environ.get("KERAS_HOME") or os.path.join("~", ".keras")
    return os.path.join(os.path.expanduser(keras_home), "models")


def file_digest(path: str, file_hash: str) -> str:
    """The file's hex digest with the algorithm the hash's length implies (32 md5, 64 sha256)."""
    h = _hasher(file_hash)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _hasher(file_hash: str):
    if not re.fullmatch(r"[0-9a-fA-F]{32}|[0-9a-fA-F]{64}", file_hash or ""):
        raise ValueError(f"file_hash must be 32 (md5) or 64 (sha256) hex digits, got {file_hash!r}.")
    return hashlib.md5() if len(file_hash) == 32 else hashlib.sha256()


def fetch_weights(variant: str, include_top: bool = True, *, base_url: str | None = None,
                  file_hash: str | None = None, cache_dir: str | None = None,
                  timeout: float = 60.0) -> str:
    """Returns the local path of keras.applications' ImageNet weights file for `variant`.

    Uses the cached copy when its hash is right, else downloads `base_url + file name`
    (base_url defaults to $EFFICIENTNET_TF_WEIGHTS_URL, then Keras' bucket), checks the hash
    before the file gets its final name, and renames it into the cache atomically.
    `file_hash` overrides the published md5 (md5 or sha256 hex).
    """
    if variant not in WEIGHTS_HASHES:
        raise ValueError(f"No ImageNet weights for variant {variant!r}; "
                         f"valid: {', '.join(WEIGHTS_HASHES)}.")
    name = weights_file_name(variant, include_top)
    expected = (file_hash or WEIGHTS_HASHES[variant][0 if include_top else 1]).lower()
    _hasher(expected)
    base = base_url or os.environ.get(URL_ENV) or BASE_WEIGHTS_URL
    url = base.rstrip("/") + "/" + name
    cache = os.path.expanduser(cache_dir) if cache_dir else default_cache_dir()
    path = os.path.join(cache, name)

    if os.path.exists(path):
        if file_digest(path, expected) == expected:
            return path
        warnings.warn(f"Cached {path} does not have the expected hash {expected}; "
                      "downloading it again.", stacklevel=2)
    try:
        os.makedirs(cache, exist_ok=True)
    except OSError as e:
        raise WeightsDownloadError(
            f"Cannot create the weights cache directory {cache} ({e}). Set ${CACHE_ENV} "
            "to a writable directory.") from e

    fd, tmp = tempfile.mkstemp(prefix=name + ".", suffix=".part", dir=cache)
    try:
        h = _hasher(expected)
        try:
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                for chunk in iter(lambda: resp.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
            reason = e if isinstance(e, urllib.error.HTTPError) else getattr(e, "reason", e)
            raise WeightsDownloadError(
                f"Could not download the EfficientNet-{variant.upper()} ImageNet weights from "
                f"{url}: {reason}.\nIf this machine is offline, get that file on a machine "
                f"with internet access ({url}, hash {expected}) "
                f"and pass its path instead: EfficientNet{variant.upper()}("
                f"include_top={include_top}, weights=\"/path/to/{name}\"); or copy it to "
                f"{path} (it is checked against the hash), or point ${URL_ENV} at a mirror."
            ) from e
        got = h.hexdigest()
        if got != expected:
            raise WeightsHashError(
                f"Downloaded {url} has hash {got} but {expected} was expected; the file was "
                "discarded (corrupt download or wrong mirror). Try again, or download it "
                f"yourself and pass weights=\"/path/to/{name}\".")
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; keras' cache files are world-readable
        os.replace(tmp, path)
        tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.remove(tmp)
    return path


# ----------------------------------------------------------------------------- reading files

@dataclasses.dataclass
class FileLayer:
    """One layer's weights as stored: names (None when the format stores none) and arrays."""
    name: str
    weights: list  # [(weight basename or None, np.ndarray)]
    key: str | None = None  # Keras 3 .weights.h5 object key ("conv2d_3"); None for legacy
    is_normalization: bool = False


def read_weights_file(path) -> tuple[str, list[FileLayer]]:
    """Reads a weights file into memory: (format name, layers with weights)."""
    import h5py

    path = os.fspath(path)
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            if "model.weights.h5" not in zf.namelist():
                raise ValueError(f"{path} is a zip archive without model.weights.h5; "
                                 "expected a Keras .keras file.")
            data = io.BytesIO(zf.read("model.weights.h5"))
        with h5py.File(data, "r") as f:
            return "keras", _read_keras3(f, path)
    if not h5py.is_hdf5(path):
        raise ValueError(
            f"{path} is not an HDF5 weights file. Supported: keras.applications .h5 files "
            "(legacy layout), Keras 3 .weights.h5 (model.save_weights) and .keras archives.")
    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        if _h5_attr_list(group, "layer_names") is not None:
            return "legacy_h5", _read_legacy(group, path)
        if "layers" in f:
            return "keras_weights_h5", _read_keras3(f, path)
    raise ValueError(f"{path} is HDF5 but neither a legacy Keras weights file (no 'layer_names' "
                     "attribute) nor a Keras 3 .weights.h5 (no 'layers' group).")


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


def _basename(weight_name: str) -> str:
    return weight_name.split("/")[-1].split(":")[0]


def _read_legacy(group, path) -> list[FileLayer]:
    out = []
    for lname in _h5_attr_list(group, "layer_names"):
        if lname not in group:
            raise ValueError(f"{path}: layer '{lname}' is listed in layer_names but has no group.")
        g = group[lname]
        wnames = _h5_attr_list(g, "weight_names") or []
        if not wnames:
            continue
        weights = [(_basename(w), _dataset(g[w])) for w in wnames]
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


# ----------------------------------------------------------------------------- loading

@dataclasses.dataclass
class LoadReport:
    format: str
    layers_loaded: int
    skipped: list  # file layers not loaded (the classifier head into an include_top=False model)
    imagenet_variance_fixed: bool  # std-as-variance file: variance set to std**2


def _is_norm_layer(layer) -> bool:
    import keras

    from efficientnet_tf.layers import Normalize

    return isinstance(layer, (Normalize, keras.layers.Normalization))


def _layer_vars(layer) -> list:
    """A layer's variables in the order Keras saves them (trainable first, as created)."""
    if hasattr(layer, "_trainable_variables"):
        return list(layer._trainable_variables) + list(layer._non_trainable_variables)
    return list(layer.weights)


def _snake(name: str) -> str:  # keras' class-name -> key rule for .weights.h5 objects
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _keras3_keys(model) -> dict:
    """layer name -> the key Keras 3 would give it in a .weights.h5 (class name + counter)."""
    used: dict = {}
    keys = {}
    for layer in model.layers:
        base = "normalization" if _is_norm_layer(layer) else _snake(layer.__class__.__name__)
        if base in used:
            used[base] += 1
            keys[layer.name] = f"{base}_{used[base]}"
        else:
            used[base] = 0
            keys[layer.name] = base
    return keys


def _fmt(shape) -> str:
    return str(tuple(int(d) for d in shape))


def load_weights(model, weights, variant=None, include_top=True, *, base_url=None,
                 cache_dir=None) -> LoadReport:
    """Loads `weights` ("imagenet" or a path) into `model`, all or nothing."""
    if isinstance(weights, str) and weights == "imagenet":
        check_weights_argument(weights, include_top, 1000, variant=variant)
        path = fetch_weights(variant, include_top, base_url=base_url, cache_dir=cache_dir)
    else:
        check_weights_argument(weights, include_top, 1000)
        path = os.fspath(weights)
    fmt, file_layers = read_weights_file(path)
    plan, loaded, skipped, fixed = _match(model, file_layers, path, fmt)
    for var, value in plan:  # everything checked: now assign
        var.assign(np.asarray(value).astype(var.dtype))
    return LoadReport(fmt, loaded, skipped, fixed)


def _match(model, file_layers, path, fmt):
    norms = [fl for fl in file_layers if fl.is_normalization]
    if len(norms) > 1:
        raise ValueError(f"{path} has {len(norms)} normalization layers "
                         f"({', '.join(fl.name for fl in norms)}); expected one.")
    others = [fl for fl in file_layers if not fl.is_normalization]
    by_name = {fl.name: fl for fl in others}
    by_key = {fl.key: fl for fl in others if fl.key is not None}
    # Keras 3 files written before layer names were stored hold only class-based keys.
    use_keys = fmt != "legacy_h5" and all(fl.key == fl.name for fl in others)
    keys = _keras3_keys(model) if use_keys else {}

    plan, used, fixed = [], set(), False
    for layer in model.layers:
        lvars = _layer_vars(layer)
        if not lvars:
            continue
        if _is_norm_layer(layer):
            fl = norms[0] if norms else None
        elif use_keys:
            fl = by_key.get(keys[layer.name])
        else:
            fl = by_name.get(layer.name)
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
            raise ValueError(f"Weights file {path}: layer '{fl.name}' has {len(fl.weights)} "
                             f"weights, but '{layer.name}' here needs {len(lvars)}: {expected}.")
        names = [n for n, _ in fl.weights]
        if None not in names:  # legacy files name their weights: match by name
            ours = {_basename(v.path): v for v in lvars}
            if set(names) != set(ours):
                raise ValueError(f"Weights file {path}: layer '{fl.name}' holds {names}, but "
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
        if _is_norm_layer(layer):
            pairs, fixed = _fix_imagenet_variance(pairs)
        plan += pairs

    skipped = []
    for fl in file_layers:
        if id(fl) in used:
            continue
        if fl.name in HEAD_LAYERS and not any(layer.name == fl.name for layer in model.layers):
            skipped.append(fl.name)  # a top file into an include_top=False model, as Keras
            continue
        raise ValueError(
            f"Weights file {path} has layer '{fl.name}' with weights that this model "
            f"('{model.name}') lacks: the file is for another architecture or variant "
            "(e.g. a deeper EfficientNet). Refusing a partial load.")
    return plan, len(used), skipped, fixed


def _fix_imagenet_variance(pairs):
    """keras.applications' ImageNet files store std as variance: use std**2 instead."""
    out, fixed = [], False
    for var, value in pairs:
        if _basename(var.path) == "variance":
            v = np.asarray(value, dtype=np.float64)
            if v.shape == (3,) and np.allclose(v, IMAGENET_STD, rtol=0, atol=1e-6):
                value, fixed = np.square(np.asarray(IMAGENET_STD, dtype=np.float64)), True
        out.append((var, value))
    return out, fixed
