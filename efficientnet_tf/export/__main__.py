"""python -m efficientnet_tf.export --model_dir=<training model_dir> --export_dir=<serving dir>

Rebuilds the model from model_dir/config.yaml, restores the latest checkpoint (EMA weights when
the checkpoint has them), and writes export_dir/<version>/ for TF Serving; optionally .tflite too.
"""
from __future__ import annotations

import os
import sys

from absl import app, flags

from efficientnet_tf import cli

FLAGS = flags.FLAGS


def _define_flags():
    f = flags
    f.DEFINE_string("model_dir", None, "Training model_dir (config.yaml + checkpoints). Required.")
    f.DEFINE_string("export_dir", None, "Serving base directory; the SavedModel goes to "
                    "<export_dir>/<version>/. Required.")
    f.DEFINE_string("checkpoint", None, "A specific checkpoint (model_dir/ckpt-N); default latest.")
    f.DEFINE_string("version", None, "Integer version, or 'timestamp'; default: next integer.")
    f.DEFINE_bool("use_ema", True, "Export the EMA weights when the checkpoint has them.")
    f.DEFINE_integer("top_k", 5, "k of the top_k_classes / top_k_scores outputs.")
    f.DEFINE_string("label_names", None, "labels.txt / labels.json (or a directory holding one); "
                    "default: the one in the config's data_dir, if any.")
    f.DEFINE_integer("image_size", None, "Serve at this resolution instead of the config's "
                     "(the model is rebuilt at this size).")
    f.DEFINE_integer("crop_padding", None, "Override the config's eval crop_padding.")
    f.DEFINE_string("resize_method", None, "Override the config's resize method "
                    "(bicubic_tf1 | bicubic | bilinear).")
    f.DEFINE_bool("fold_batch_norm", False, "Fold BN into the convolutions before exporting.")
    f.DEFINE_bool("overwrite", False, "Replace an existing <export_dir>/<version>.")
    f.DEFINE_enum("tflite", "none", ["none", "float32", "int8", "both"],
                  "Also write <export_dir>/tflite/<version>_{float32,int8}.tflite.")
    f.DEFINE_integer("tflite_calibration_images", 64,
                     "int8: images from the config's validation TFRecords used for calibration.")


def run() -> str:
    from efficientnet_tf.export import load_run
    from efficientnet_tf.export.saved_model import check_export_dir, export_saved_model

    if not FLAGS.model_dir or not FLAGS.export_dir:
        raise ValueError("--model_dir and --export_dir are both required.")
    check_export_dir(FLAGS.export_dir)  # before loading anything
    config = None
    if FLAGS.image_size:  # the model is rebuilt at the new size (the weights do not depend on it)
        from efficientnet_tf import config as cfglib

        config = cfglib.apply_overrides(load_run.read_run_config(FLAGS.model_dir),
                                        [f"data.image_size={FLAGS.image_size}"])
    loaded = load_run.load_model_for_export(FLAGS.model_dir, FLAGS.checkpoint, FLAGS.use_ema,
                                            config=config)
    print(f"Exporting {loaded.describe()}")
    config = loaded.config
    size = FLAGS.image_size or config.data.image_size
    crop = FLAGS.crop_padding if FLAGS.crop_padding is not None else config.data.crop_padding
    resize = FLAGS.resize_method or config.data.resize_method
    data_dir = config.data.data_dir
    labels = None
    if FLAGS.label_names:
        labels = load_run.read_label_names(FLAGS.label_names)
    elif data_dir and not data_dir.startswith("tfds:"):
        import tensorflow as tf

        labels = load_run.read_label_names(data_dir) if tf.io.gfile.isdir(data_dir) else None
    path = export_saved_model(loaded.model, FLAGS.export_dir, image_size=size, crop_padding=crop,
                              resize_method=resize, top_k=FLAGS.top_k, label_names=labels,
                              version=FLAGS.version, outputs_are_logits=None,
                              fold_batch_norm=FLAGS.fold_batch_norm, overwrite=FLAGS.overwrite)
    print(f"SavedModel ({'with' if labels else 'without'} label names) written to {path}")
    if FLAGS.tflite != "none":
        from efficientnet_tf.export import tflite

        kinds = ["float32", "int8"] if FLAGS.tflite == "both" else [FLAGS.tflite]
        for kind in kinds:
            data = None
            if kind == "int8":
                if not data_dir:
                    raise ValueError("--tflite=int8 calibrates on the config's data_dir "
                                     "TFRecords, and the config has none.")
                data = tflite.tfrecord_calibration_images(
                    data_dir, size, int(loaded.model.outputs[0].shape[-1]),
                    FLAGS.tflite_calibration_images, crop_padding=crop, resize_method=resize,
                    data_config=config.data)
            # Beside the versions, not inside: TF Serving's version dirs hold only the SavedModel.
            name = f"{os.path.basename(path)}_{kind}.tflite"
            out = tflite.export_tflite(loaded.model, os.path.join(FLAGS.export_dir, "tflite", name),
                                       quantization=kind, representative_data=data,
                                       image_size=size, crop_padding=crop,
                                       resize_method=resize, label_names=labels)
            print(f"TFLite ({kind}) written to {out}")
    return path


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        run()
    except (ValueError, FileNotFoundError, FileExistsError) as e:
        print(f"efficientnet_tf.export: error: {e}", file=sys.stderr)
        sys.exit(2)


def entry():
    _define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    entry()
