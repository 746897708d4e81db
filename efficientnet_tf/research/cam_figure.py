"""The cam command: maps of a few images from several trained models, side by side (as the
paper's Fig. 7 compares scaling methods), in OUT/cam.png."""
from __future__ import annotations

import os

import numpy as np
import tensorflow as tf

from efficientnet_tf.research import cam, plots


def read_image(path: str, size: int) -> np.ndarray:
    """An image file as float32 [size, size, 3] pixels in [0, 255] (grayscale repeated,
    resized bilinearly, the whole image: no crop)."""
    data = tf.io.gfile.GFile(path, "rb").read()
    image = tf.io.decode_image(data, channels=3, expand_animations=False)
    image = tf.image.resize(tf.cast(image, tf.float32), [size, size], method="bilinear")
    return tf.clip_by_value(image, 0.0, 255.0).numpy()


def write_cam_figure(model_dirs, images, out: str, class_index=None, method: str = "auto",
                     bn_batches: int = 0) -> str:
    """Loads each training model_dir (latest checkpoint, EMA weights), maps every image at that
    model's resolution, and writes OUT/cam.png; returns its path. bn_batches > 0: each model's
    BN statistics are first re-estimated on that many batches of its training data (bn)."""
    from efficientnet_tf.data import pipeline
    from efficientnet_tf.export.load_run import load_model_for_export, read_label_names
    from efficientnet_tf.research import bn

    if not model_dirs or not images:
        raise ValueError("cam: give --model_dirs (training model_dirs) and --images (files).")
    missing = [p for p in images if not tf.io.gfile.exists(p)]
    if missing:
        raise ValueError(f"cam: image files not found: {', '.join(missing)}.")
    columns, shown = [], None
    for model_dir in model_dirs:
        loaded = load_model_for_export(model_dir)
        size = loaded.config.data.image_size
        if bn_batches:
            data = pipeline.build_dataset(loaded.config.data, "train",
                                          loaded.config.train_batch_size)
            bn.recalibrate_bn(loaded.model, data, bn_batches)
        batch = np.stack([read_image(p, size) for p in images])
        maps = cam.activation_map(loaded.model, batch, class_index, method)
        logits = loaded.model(batch, training=False).numpy()
        names = read_label_names(loaded.config.data.data_dir) if (
            loaded.config.data.data_dir and not loaded.config.data.data_dir.startswith("tfds:")) else None
        pred = logits.argmax(-1)
        captions = [names[k] if names else f"class {k}" for k in pred]
        label = "/".join(os.path.normpath(model_dir).split(os.sep)[-2:])
        columns.append((label, maps, [f"pred: {c}" for c in captions]))
        if shown is None:
            shown = batch
    return plots.plot_cams(shown, columns, os.path.join(out, "cam.png"))
