"""Fine-tuning: start from pretrained weights, freeze part of the network, scale learning rates
by depth. Used by FinetuneTask (train/task.py) when the config's `finetune:` section asks for it.

Freeze specs: "none"; "backbone" (everything but the classifier); "blockN" (the stem and stages
1..N: `block5` trains stages 6 and 7, the head conv and the classifier). A frozen layer has
trainable=False: no gradients, no optimizer slots, no L2, and its BatchNormalization runs in
inference mode with its moving statistics untouched (Keras does that for trainable=False BN).
"""
from __future__ import annotations

import json
import os
import re
import tempfile

from efficientnet_tf.config import FREEZE_SPEC
from efficientnet_tf.modelspec import block_plan, layer_stage

HEAD = "predictions"


def _stages(model) -> dict:
    """{layer name: stage}: 0 for the stem, a block's stage (1-based) for its layers, None for
    the head (top_*, predictions) and the input normalization: read from the model's blocks."""
    plan = block_plan(model)
    return {la.name: layer_stage(plan, la.name) for la in model.layers}


def num_stages(model, stages: dict | None = None) -> int:
    """The model's last stage (stages: its _stages map, when already made)."""
    return max((s or 0) for s in (stages or _stages(model)).values())


def parse_freeze(spec: str | None) -> str:
    """'none' | 'backbone' | 'blockN' (N >= 1), or ValueError saying what is accepted."""
    spec = (spec or "none").strip().lower()
    if re.fullmatch(FREEZE_SPEC, spec):
        return spec
    raise ValueError(f"finetune freeze spec {spec!r}: use none, backbone, or blockN (the stem "
                     "and stages 1..N frozen, e.g. block5).")


def frozen_layers(model, spec: str) -> list:
    """The layers (with weights) that `spec` freezes; ValueError when it freezes nothing that
    exists or everything."""
    spec = parse_freeze(spec)
    weighted = [la for la in model.layers if la.weights]
    if spec == "none":
        return []
    if spec == "backbone":
        frozen = [la for la in weighted if la.name != HEAD]
    else:
        stage = _stages(model)
        n, stages = int(spec[len("block"):]), num_stages(model, stage)
        if n >= stages:
            raise ValueError(f"freeze {spec!r} freezes every stage of this model (it has "
                             f"{stages}); use block1..block{stages - 1}, or backbone.")
        frozen = [la for la in weighted if stage[la.name] is not None and stage[la.name] <= n]
    trainable = [la for la in weighted if la not in frozen and la.trainable_weights]
    if not frozen:
        raise ValueError(f"freeze {spec!r} matches no layer of {model.name}.")
    if not trainable:
        raise ValueError(f"freeze {spec!r} leaves nothing to train in {model.name} (it has no "
                         f"'{HEAD}' layer: build it with the classifier).")
    return frozen


def apply_freeze(model, spec: str, freeze_bn: bool = False) -> list:
    """Sets trainable per `spec` (all other layers trainable); freeze_bn also keeps the
    trainable layers' BatchNormalization in inference mode. Returns the frozen layer names."""
    import keras

    frozen = {la.name for la in frozen_layers(model, spec)}
    for la in model.layers:
        if la.weights:
            la.trainable = la.name not in frozen and not (
                freeze_bn and isinstance(la, keras.layers.BatchNormalization))
    return sorted(frozen)


def layer_lr_scales(model, decay: float) -> dict:
    """{id(variable): scale} with scale = decay ** k, k = 0 for the head (top conv and
    classifier), 1 for the last stage, ..., num_stages + 1 for the stem: timm's layer decay, by
    stage. decay 1 (or None) scales nothing."""
    if not decay or decay == 1:
        return {}
    if not 0 < decay < 1:
        raise ValueError(f"finetune.layer_decay must be in (0, 1], got {decay}.")
    stage = _stages(model)
    stages = num_stages(model, stage)
    out = {}
    for la in model.layers:
        s = stage[la.name]
        depth = 0 if s is None else stages + 1 - s
        for v in la.weights:
            out[id(v)] = decay ** depth
    return out


def describe_load(report, source: str, head_reinitialized: bool) -> str:
    ema = {True: "EMA weights", False: "raw weights", None: "weights"}[report.ema]
    left = list(report.skipped)
    head = "; the classifier was re-initialized (other classes)" if head_reinitialized else ""
    where = f" ({report.path})" if report.path and report.path != source else ""
    return (f"Initialized from {source}{where}: {ema}, {report.layers_loaded} "
            f"layers, format {report.format}"
            + (f", left out: {', '.join(left)}" if left else "") + head + ".")


def initialize(model, source: str, variant: str | None, use_ema: bool = True,
               new_head: bool = False):
    """Loads `source` into `model` once, before training: anything weights= takes, or one of our
    training model_dirs (its latest checkpoint, EMA weights). A classifier of another class
    count is left freshly initialized; new_head=True keeps the fresh one also when the counts
    match (other classes). Returns (LoadReport, head_reinitialized)."""
    head = [la for la in model.layers if la.name == HEAD]
    fresh = [v.numpy() for v in head[0].weights] if head and new_head else None
    report, reinit = _load(model, source, variant, use_ema)
    if fresh is not None:
        for v, value in zip(head[0].weights, fresh):
            v.assign(value)
        if HEAD not in report.reinitialized:
            report.reinitialized.append(HEAD)
        reinit = True
    return report, reinit


def _load(model, source, variant, use_ema):
    import tensorflow as tf

    from efficientnet_tf.weights.load import load_weights

    if tf.io.gfile.exists(os.path.join(source, "config.yaml")):
        from efficientnet_tf.export.load_run import load_model_for_export

        loaded = load_model_for_export(source, use_ema=use_ema)
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "run.weights.h5")
            loaded.model.save_weights(path)
            report = load_weights(model, path, variant=variant, reinit_head=True)
        report.path, report.ema = loaded.checkpoint, loaded.ema
    else:
        report = load_weights(model, source, variant=variant, use_ema=use_ema, reinit_head=True)
    return report, HEAD in report.reinitialized


# ---------------------------------------------------------------- a folder of the user's images
def is_image_folder(data_dir: str, train_file_pattern: str = "train-*") -> bool:
    """A directory with class sub-folders and no TFRecords of its own."""
    import tensorflow as tf

    if not data_dir or data_dir.startswith("tfds:") or not tf.io.gfile.isdir(data_dir):
        return False
    if tf.io.gfile.glob(os.path.join(data_dir, train_file_pattern)):
        return False
    return any(tf.io.gfile.isdir(os.path.join(data_dir, n)) for n in tf.io.gfile.listdir(data_dir))


def scan_image_folder(data_dir: str) -> list:
    """The class names of an image folder, checked without writing anything: ValueError for
    fewer than two classes or no images."""
    from efficientnet_tf.data import convert

    classes = convert._class_dirs(data_dir)
    if len(classes) < 2:
        raise ValueError(
            f"--data_dir {data_dir} has {len(classes)} class folder(s)"
            f"{' (' + ', '.join(classes) + ')' if classes else ''}; a classifier needs at least "
            f"two: put each class's images in its own sub-folder ({data_dir}/<class>/*.jpg).")
    empty = [c for c in classes if not convert._list_images(os.path.join(data_dir, c))[0]]
    if len(empty) == len(classes):
        raise ValueError(f"--data_dir {data_dir}: no images in its class folders (extensions "
                         f"{', '.join(convert.IMAGE_EXTENSIONS)}).")
    if empty:
        raise ValueError(f"--data_dir {data_dir}: class folder(s) {', '.join(empty)} hold no "
                         "images; add some or remove the folder.")
    return classes


def folder_fingerprint(*folders: str | None) -> dict:
    """What identifies an image folder's content: its class names and a SHA-256 over every
    file's relative path, size and modification time (tf.io.gfile, so gs:// too)."""
    import hashlib

    import tensorflow as tf

    digest, files, classes = hashlib.sha256(), 0, []
    for folder in folders:
        if not folder:
            continue
        classes.append(sorted(n.rstrip("/") for n in tf.io.gfile.listdir(folder)
                              if tf.io.gfile.isdir(os.path.join(folder, n))))
        for root, _, names in sorted(tf.io.gfile.walk(folder)):
            for name in sorted(names):
                path = os.path.join(root, name)
                try:
                    st = tf.io.gfile.stat(path)
                    size, mtime = st.length, st.mtime_nsec
                except tf.errors.OpError:  # a dangling link: the converter lists it
                    size, mtime = -1, -1
                digest.update(f"{os.path.relpath(path, folder)}\t{size}\t{mtime}\n".encode())
                files += 1
    return {"sources": [f for f in folders if f], "classes": classes, "files": files,
            "sha256": digest.hexdigest()}


def image_folder_records(data_dir: str, model_dir: str, validation_dir: str | None,
                         validation_fraction: float, seed: int = 12345, log=print):
    """(TFRecord dir, convert) for an image folder: model_dir/data, and a function that
    converts the folder there, or None when model_dir/data already holds this folder's
    TFRecords. Writes nothing; ValueError when model_dir/data was converted from another
    folder or from this one since changed (data/source.json's fingerprint differs)."""
    from efficientnet_tf import fileio
    from efficientnet_tf.rundir import RunDir

    out = RunDir(model_dir).data_dir
    source_path = os.path.join(out, "source.json")
    fingerprint = folder_fingerprint(data_dir, validation_dir)
    recorded = fileio.read_json(source_path)
    if recorded is not None:
        if recorded.get("sha256") != fingerprint["sha256"]:
            raise ValueError(
                f"{out} holds the TFRecords of {', '.join(recorded.get('sources', []))} "
                f"({recorded.get('files')} files, classes {recorded.get('classes')}), not of "
                f"{data_dir} as it is now ({fingerprint['files']} files, classes "
                f"{fingerprint['classes']}). A run trains on one data set: use a new --model_dir "
                "for other images.")
        log(f"Reusing the TFRecords of {data_dir} in {out} (same files as when converted).")
        return out, None
    if not validation_dir and not validation_fraction:
        raise ValueError("An image folder needs an eval split: set finetune.validation_dir or "
                         "finetune.validation_fraction > 0.")

    def convert_now():
        from efficientnet_tf.data import convert

        log(f"Converting {data_dir} into TFRecords in {out} (once) ...")
        summary = convert.convert_folder(
            data_dir, out, validation_dir=validation_dir, train_shards=4, validation_shards=1,
            seed=seed, num_workers=2, progress=False, validation_fraction=validation_fraction,
            min_classes=2, overwrite=True)
        for split, s in summary.splits.items():
            bad = f"; skipped {len(s.bad)} unreadable: " + ", ".join(
                f"{path} ({why})" for path, why in s.bad[:10]) if s.bad else ""
            log(f"  {split}: {s.num_written} images{bad}")
        fileio.write_file(source_path, json.dumps(fingerprint, indent=1))  # last: complete
        return out

    return out, convert_now


def prepare_image_folder(data_dir: str, model_dir: str, validation_dir: str | None,
                         validation_fraction: float, seed: int = 12345, log=print) -> str:
    """TFRecords of an image folder under model_dir/data, converted once (a restart reuses
    them, and refuses another folder's). Returns the TFRecord directory."""
    out, convert_now = image_folder_records(data_dir, model_dir, validation_dir,
                                            validation_fraction, seed, log)
    return convert_now() if convert_now else out


def check_setup(config) -> None:
    """Builds the model once and applies freeze and init_weights to it, so that a wrong source
    or freeze spec stops the job (ValueError) before anything is written."""
    from efficientnet_tf import factory

    ft = config.finetune
    model = factory.build_model_from_config(config)
    for spec in {ft.freeze, ft.unfreeze_to if ft.unfreeze_at_epoch else ft.freeze}:
        apply_freeze(model, spec, ft.freeze_bn)
    if ft.init_weights:
        initialize(model, ft.init_weights, config.model.to_spec().variant, ft.init_use_ema)
