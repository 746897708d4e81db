"""Top-1 / top-5 of any weights on ImageNet-style validation TFRecords, with their own
preprocessing: python -m efficientnet_tf.evaluate --weights=advprop --model_name=efficientnet-b0
--data_dir=gs://bucket/imagenet [--tpu=local] [--output=results.json]

--weights takes anything weights= takes (a published set, "imagenet", a keras file, a TF1
checkpoint); --model_dir takes a training run of ours instead (its config and EMA weights).
The eval crop is the reference's: center crop of size / (size + 32) of the short side, TF1
bicubic resize, at the weights' resolution (the variant's, or the set's: L2-475 at 475 px) and
normalization (AdvProp: x / 127.5 - 1). Metrics and batching are the training job's own
(train/evaluation.EvalPass over ClassificationTask.eval_metrics: the eval loop the trainer runs;
the last batch padded, so TPUs see static shapes).
"""
from __future__ import annotations

import json
import sys

import tensorflow as tf

from efficientnet_tf import config as cfglib
from efficientnet_tf import spec
from efficientnet_tf.constants import DEFAULT_CROP_PADDING


def eval_config(model_name: str, data_dir: str, *, weights=None, image_size: int | None = None,
                batch_size: int | None = None, overrides=()) -> cfglib.TrainConfig:
    """The config an evaluation of `weights` runs with: the variant's recipe, the weights' own
    settings (a published set's normalization and image size), the reference's eval crop, and
    the data set's classes and label offset from its dataset_info.json when it has one."""
    from efficientnet_tf.data.pipeline import read_dataset_info
    from efficientnet_tf.weights.published import get_weight_set

    key = spec.variant_key(model_name)
    spec.get_variant(key)
    config = cfglib.load_config(f"efficientnet-{key}")
    ws = get_weight_set(weights)
    info = (read_dataset_info(data_dir) or {}) if data_dir and not data_dir.startswith(
        "tfds:") else {}
    values = [f"data.data_dir={data_dir}", f"data.crop_padding={DEFAULT_CROP_PADDING}",
              "data.resize_method=bicubic_tf1", "data.augment_name=none"]
    if ws is not None:
        values.append(f"model.normalization={ws.normalization}")
    size = image_size or (ws.image_size if ws else None)
    if size:
        values.append(f"data.image_size={size}")
    for k in ("num_classes", "label_offset"):
        if k in info:
            values.append(f"data.{k}={info[k]}")
    if batch_size:
        values.append(f"eval_batch_size={batch_size}")
    return cfglib.apply_overrides(config, values + list(overrides))


def evaluate_model(model, config: cfglib.TrainConfig, strategy=None) -> dict:
    """One pass over config.data's validation split: {top1, top5, loss, examples (the images
    the accuracy is over), skipped (undecodable images left out; None where not counted)}."""
    from efficientnet_tf.train.evaluation import EvalPass
    from efficientnet_tf.train.task import ClassificationTask

    strategy = strategy or tf.distribute.get_strategy()
    return EvalPass(ClassificationTask(config), model, strategy, config.eval_batch_size)()


def evaluate_weights(weights, model_name: str, data_dir: str, *, image_size=None,
                     batch_size=None, use_ema: bool = True, strategy=None, overrides=()) -> dict:
    """Builds the variant with `weights` (under `strategy`) and evaluates it."""
    from efficientnet_tf.factory import build_model
    from efficientnet_tf.weights.load import load_weights

    config = eval_config(model_name, data_dir, weights=weights, image_size=image_size,
                         batch_size=batch_size, overrides=overrides)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        model = build_model(config.model, config.data.image_size, config.data.num_classes)
        report = load_weights(model, weights, variant=spec.variant_key(model_name),
                              use_ema=use_ema)
    result = evaluate_model(model, config, strategy)
    return {**result, "weights": str(weights), "path": report.path,
            "model_name": config.model.model_name, "image_size": config.data.image_size,
            "normalization": report.normalization, "ema": report.ema,
            "crop_padding": config.data.crop_padding, "resize_method": config.data.resize_method}


def evaluate_run(model_dir: str, data_dir: str | None = None, *, use_ema: bool = True,
                 batch_size=None, strategy=None, overrides=()) -> dict:
    """Evaluates a training run's latest checkpoint with the run's own config."""
    from efficientnet_tf.export.load_run import load_model_for_export, read_run_config

    config = read_run_config(model_dir)
    values = ([f"data.data_dir={data_dir}"] if data_dir else []) + (
        [f"eval_batch_size={batch_size}"] if batch_size else [])
    config = cfglib.apply_overrides(config, values + list(overrides))
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        loaded = load_model_for_export(model_dir, use_ema=use_ema, config=config)
    result = evaluate_model(loaded.model, config, strategy)
    return {**result, "model_dir": model_dir, "checkpoint": loaded.checkpoint,
            "step": loaded.step, "ema": loaded.ema, "image_size": config.data.image_size}


def _define_flags():
    from absl import flags

    f = flags
    f.DEFINE_string("weights", None, "A weights= source: a published set (baseline, "
                    "autoaugment, randaugment, advprop, noisy-student, noisy-student-475), "
                    "imagenet, a keras file or a TF1 checkpoint.")
    f.DEFINE_string("model_name", None, "The variant of --weights, e.g. efficientnet-b0.")
    f.DEFINE_string("model_dir", None, "Instead of --weights: a training run's model_dir.")
    f.DEFINE_string("data_dir", None, "Validation TFRecords (validation-*), or tfds:<name>.")
    f.DEFINE_integer("image_size", None, "Evaluate at this resolution (default: the weights').")
    f.DEFINE_integer("batch_size", None, "Global batch size (default: the recipe's 1024).")
    f.DEFINE_bool("use_ema", True, "EMA weights where the source has them.")
    f.DEFINE_string("output", None, "Also write the result as JSON here (local or gs://).")
    from efficientnet_tf.train.main import define_strategy_flags

    define_strategy_flags()
    f.DEFINE_multi_string("override", [], "Config overrides, e.g. data.crop_padding=0.")


def _main(argv):
    from absl import flags

    from efficientnet_tf.train.strategy import make_strategy

    del argv
    FLAGS = flags.FLAGS
    try:
        if bool(FLAGS.weights) == bool(FLAGS.model_dir):
            raise ValueError("Give --weights (with --model_name) or --model_dir, one of them.")
        if FLAGS.weights and not FLAGS.model_name:
            raise ValueError("--weights needs --model_name (e.g. efficientnet-b0).")
        if FLAGS.weights and not FLAGS.data_dir:
            raise ValueError("--data_dir is required (validation TFRecords).")
        strategy = make_strategy(FLAGS.strategy, FLAGS.tpu, FLAGS.tpu_zone, FLAGS.gcp_project)
        if FLAGS.weights:
            result = evaluate_weights(FLAGS.weights, FLAGS.model_name, FLAGS.data_dir,
                                      image_size=FLAGS.image_size, batch_size=FLAGS.batch_size,
                                      use_ema=FLAGS.use_ema, strategy=strategy,
                                      overrides=FLAGS.override)
        else:
            result = evaluate_run(FLAGS.model_dir, FLAGS.data_dir, use_ema=FLAGS.use_ema,
                                  batch_size=FLAGS.batch_size, strategy=strategy,
                                  overrides=FLAGS.override)
    except (ValueError, FileNotFoundError) as e:
        print(f"efficientnet_tf.evaluate: error: {e}", file=sys.stderr)
        sys.exit(2)
    skipped = f", {result['skipped']} unreadable skipped" if result.get("skipped") else ""
    print(f"top-1 {100 * result['top1']:.2f}%  top-5 {100 * result['top5']:.2f}%  over "
          f"{result['examples']} images{skipped}  ({json.dumps(result)})")
    if FLAGS.output:
        from efficientnet_tf import fileio

        fileio.write_file(FLAGS.output, json.dumps(result, indent=2) + "\n")


def entry():
    from efficientnet_tf import cli

    _define_flags()
    cli.run(_main, __name__)


if __name__ == "__main__":
    entry()
