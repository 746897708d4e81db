"""Weights file formats: FileLayer, WeightFormat and the registry that picks a file's format.

A format reads a file into FileLayers under the file's own names, then maps those names to our
layer names (keras.applications' names: stem_conv, block1a_dwconv, top_conv, predictions, ...).
The matcher (load.py) sees only that mapped result.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Callable


@dataclasses.dataclass
class FileLayer:
    """One layer's weights as read from a file, all in memory.

    weights: [(weight basename or None, array)]. Named weights ("kernel", "gamma", ...) are
    matched by name; None (the format stores no names) by position, in Keras' saving order.
    """
    name: str  # the file's layer name; after the format's map_names, our layer name
    weights: list
    key: str | None = None  # the file's own object key, if any (Keras 3: "conv2d_3")
    is_normalization: bool = False  # matched to our Normalization layer by type, not name
    stored_name: str | None = None  # the file's name, when map_names changed it
    ema: bool | None = None  # the weights are EMA shadows (None: the format has no EMA)


def keep_names(file_layers, model) -> list:
    """The default map_names: the file already uses our layer names."""
    return [fl.name for fl in file_layers]


@dataclasses.dataclass(frozen=True)
class WeightFormat:
    """A weights file format.

    sniff(path) -> bool: cheap test (extension, magic bytes, a marker file in a directory).
    read(path) -> [FileLayer] under the file's own names.
    map_names(file_layers, model) -> [our layer name for each of them], same order.
    """
    name: str
    sniff: Callable[[str], bool]
    read: Callable[[str], list]
    map_names: Callable[[list, object], list] = keep_names
    description: str = ""
    ema_aware: bool = False  # read(path, use_ema=...) picks EMA shadows or raw weights
    stores_normalization: bool = True  # False: the model keeps its own input normalization


_FORMATS: list[WeightFormat] = []  # sniffed in this order: the first match wins


def register_format(fmt: WeightFormat, *, first: bool = False) -> WeightFormat:
    """Adds `fmt` after the registered formats (before them with first=True)."""
    if not isinstance(fmt, WeightFormat):
        raise TypeError(f"register_format takes a WeightFormat, got {type(fmt).__name__}.")
    if any(f.name == fmt.name for f in _FORMATS):
        raise ValueError(f"A weights format named {fmt.name!r} is already registered.")
    _FORMATS.insert(0 if first else len(_FORMATS), fmt)
    return fmt


def unregister_format(name: str) -> WeightFormat:
    """Removes the format called `name` and returns it."""
    for i, f in enumerate(_FORMATS):
        if f.name == name:
            return _FORMATS.pop(i)
    known = ", ".join(f.name for f in _FORMATS) or "none"
    raise ValueError(f"No weights format named {name!r}; registered: {known}.")


def formats() -> tuple:
    """The registered formats, in sniffing order."""
    return tuple(_FORMATS)


def find_format(path) -> WeightFormat:
    """The first registered format whose sniff accepts `path`."""
    path = os.fspath(path)
    for f in _FORMATS:
        if f.sniff(path):
            return f
    known = "; ".join(f"{f.name} ({f.description})" if f.description else f.name
                      for f in _FORMATS)
    raise ValueError(f"{path} is not an HDF5 weights file or any other known weights format. "
                     f"Known formats: {known or 'none'}.")


def read_weights_file(path) -> tuple[str, list[FileLayer]]:
    """Reads a weights file into memory: (format name, layers under the file's names)."""
    fmt = find_format(path)
    return fmt.name, fmt.read(os.fspath(path))


def read_for_model(path, model, use_ema: bool = True) -> tuple[WeightFormat, list[FileLayer]]:
    """Finds the file's format, reads it and maps its names to `model`'s layer names.
    use_ema: EMA shadows where the format has them (else the raw weights)."""
    fmt = find_format(path)
    file_layers = (fmt.read(os.fspath(path), use_ema=use_ema) if fmt.ema_aware
                   else fmt.read(os.fspath(path)))
    names = list(fmt.map_names(file_layers, model))
    if len(names) != len(file_layers):
        raise ValueError(f"Weights format {fmt.name!r}: map_names gave {len(names)} names "
                         f"for {len(file_layers)} layers.")
    out, seen = [], {}
    for fl, name in zip(file_layers, names):
        if name in seen:
            raise ValueError(f"Weights file {path}: layers '{seen[name]}' and '{fl.name}' "
                             f"both map to layer '{name}'.")
        seen[name] = fl.name
        stored = fl.name if name != fl.name else fl.stored_name
        out.append(dataclasses.replace(fl, name=name, stored_name=stored))
    return fmt, out


# Helpers for formats and the matcher.

def basename(weight_name: str) -> str:
    """'block1a_dwconv/depthwise_kernel:0' -> 'depthwise_kernel'."""
    return weight_name.split("/")[-1].split(":")[0]


def is_norm_layer(layer) -> bool:
    """Our Normalize or keras' Normalization: the layer FileLayer.is_normalization goes to."""
    import keras

    from efficientnet_tf.layers import Normalize

    return isinstance(layer, (Normalize, keras.layers.Normalization))
