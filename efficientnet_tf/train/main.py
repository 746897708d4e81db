"""The training job: `python -m efficientnet_tf.train --model_name=efficientnet-b0 ...`.

Flags are defined only when this runs as a program (define_flags() from __main__.py), so the
library never reads global flags: main() turns them into a TrainConfig and calls the library.
"""
from __future__ import annotations

import contextlib
import os
import sys

from absl import flags, logging

from efficientnet_tf import cli
from efficientnet_tf import config as cfglib  # light: no TensorFlow until the job starts
from efficientnet_tf.weights.download import URL_ENV, WeightsDownloadError
from efficientnet_tf.weights.published import CHECKPOINTS_URL_ENV

FLAGS = flags.FLAGS


def define_strategy_flags(fv: flags.FlagValues = FLAGS) -> None:
    """--strategy, --tpu, --tpu_zone, --gcp_project (for make_strategy): the training job's, also
    defined by the evaluator and the research commands."""
    f = dict(flag_values=fv)
    flags.DEFINE_string("tpu", None, "TPU name, or 'local' on a TPU VM. Implies --strategy=tpu.",
                        **f)
    flags.DEFINE_string("tpu_zone", None, "GCE zone of the TPU (with --tpu).", **f)
    flags.DEFINE_string("gcp_project", None, "GCP project of the TPU (with --tpu).", **f)
    flags.DEFINE_enum("strategy", "default",
                      ["tpu", "multi_worker_mirrored", "mirrored", "one_device", "default"],
                      "Distribution strategy.", **f)


def define_flags():
    f = flags
    define_strategy_flags()
    f.DEFINE_string("model_name", None, "A registered variant (efficientnet-b0, ...): the ImageNet "
                    "recipe at that variant. With --config, only the model it builds.")
    f.DEFINE_string("config", None, "A YAML config (path, or a name in configs/). Default: --model_name.")
    f.DEFINE_string("data_dir", None, "TFRecord directory (train-*, validation-*) or tfds:<name>.")
    f.DEFINE_string("model_dir", None, "Checkpoints, summaries, config.yaml. Required.")
    f.DEFINE_enum("mode", "train_and_eval", ["train", "eval", "train_and_eval"], "What to run.")
    f.DEFINE_integer("train_steps", None, "Total training steps (overrides epochs).")
    f.DEFINE_float("epochs", None, "Training epochs.")
    f.DEFINE_integer("train_batch_size", None, "Global training batch size.")
    f.DEFINE_integer("eval_batch_size", None, "Global evaluation batch size.")
    f.DEFINE_integer("steps_per_execution", None, "Steps per device loop (iterations_per_loop).")
    f.DEFINE_integer("num_label_classes", None, "Number of classes.")
    f.DEFINE_string("augment_name", None, "autoaugment | randaugment | none.")
    f.DEFINE_enum("precision", None, ["float32", "bfloat16", "float16"],
                  "Activation precision (variables, logits and loss stay float32): bfloat16 on "
                  "TPU / A100 / H100, float16 (with dynamic loss scaling) on V100 / T4.")
    f.DEFINE_bool("use_bfloat16", None, "Older spelling: true = --precision=bfloat16.")
    f.DEFINE_bool("use_synthetic_data", False, "Random data of the right shapes (step throughput).")
    f.DEFINE_string("export_dir", None, "Export a SavedModel here at the end of training.")
    f.DEFINE_float("eval_every_epochs", None, "Evaluate during train_and_eval every N epochs "
                   "(default: 10 times over the run, at most once per epoch).")
    f.DEFINE_integer("eval_timeout", 3600, "--mode=eval: stop after this many seconds without a "
                     "new checkpoint.")
    f.DEFINE_bool("jit_compile", False, "XLA-compile the train step (always on TPU).")
    f.DEFINE_multi_string("override", [], "Config overrides, e.g. --override=optimizer.lr=0.1.")
    f.DEFINE_string("init_weights", None, "Fine-tune from: imagenet, a published set (advprop, "
                    "noisy-student, ...), a keras file, a TF1 checkpoint or one of our model_dirs. "
                    "Loaded once at step 0 (= finetune.init_weights).")
    f.DEFINE_string("freeze", None, "none | backbone | blockN: layers not trained "
                    "(= finetune.freeze).")


def resolve_config(argv_flags) -> "object":
    """Config file -> flag values -> --override, validated."""
    name = argv_flags.config or argv_flags.model_name
    if not name:
        raise ValueError("Give --model_name (e.g. efficientnet-b0) or --config (a YAML path or "
                         "a name in configs/, e.g. fashion_mnist).")
    config = cfglib.load_config(name)
    overrides, given = [], []
    mapping = {
        "model_name": "model.model_name", "data_dir": "data.data_dir",
        "train_steps": "train_steps", "epochs": "epochs",
        "train_batch_size": "train_batch_size", "eval_batch_size": "eval_batch_size",
        "steps_per_execution": "steps_per_execution", "num_label_classes": "data.num_classes",
        "augment_name": "data.augment_name", "use_bfloat16": "use_bfloat16",
        "precision": "precision",
        "init_weights": "finetune.init_weights", "freeze": "finetune.freeze",
    }
    for flag, key in mapping.items():
        value = getattr(argv_flags, flag)
        if value is not None and not (flag == "model_name" and argv_flags.config is None):
            overrides.append(f"{key}={value}")
            given.append(f"--{flag}={value}")
    if argv_flags.use_synthetic_data:
        overrides.append("data.synthetic=true")
        given.append("--use_synthetic_data")
    given += [f"--override={o}" for o in argv_flags.override]
    config = cfglib.apply_overrides(config, overrides + list(argv_flags.override),
                                    where=f"{name} with " + " ".join(given) if given else name)
    cfglib.check_for_training(config)
    return config


def download_hint(e: WeightsDownloadError) -> str:
    """The download error in the training CLI's words (flags, not the Python API)."""
    if not e.url:  # e.g. the cache folder could not be made: its message says what to do
        return str(e)
    name = os.path.basename(e.url)
    if name.endswith(".tar.gz"):  # a published TF1 checkpoint
        return (f"could not download {e.url} ({e.reason}) for --init_weights. If this machine "
                f"is offline, download it on one that is not, extract it (tar xzf {name}) and "
                "pass --init_weights=/path/to/the/extracted/folder, or set "
                f"${CHECKPOINTS_URL_ENV} to a mirror.")
    return (f"could not download {e.url} ({e.reason}) for --init_weights. If this machine is "
            f"offline, download {name} on one that is not and pass --init_weights=/path/to/"
            f"{name}, or copy it to {e.path} (it is checked against its published hash), or "
            f"set ${URL_ENV} to a mirror.")


def main(argv):
    del argv
    try:
        run()
    except ValueError as e:
        print(f"efficientnet_tf.train: error: {e}", file=sys.stderr)
        sys.exit(2)
    except (FloatingPointError, RuntimeError) as e:  # the message says what was kept
        print(f"efficientnet_tf.train: error: {e}", file=sys.stderr)
        sys.exit(1)
    except WeightsDownloadError as e:
        print(f"efficientnet_tf.train: error: {download_hint(e)}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves and exits 130)
        print("efficientnet_tf.train: interrupted (Ctrl-C) outside the training loop; the "
              "latest checkpoint, if any, is kept.", file=sys.stderr)
        sys.exit(130)


def run():
    from efficientnet_tf.rundir import RunDir, check_writable_dir
    from efficientnet_tf.train.strategy import make_strategy

    if not FLAGS.model_dir:
        raise ValueError("--model_dir is required (local path or gs://bucket/path).")
    config = resolve_config(FLAGS)
    if config.data.synthetic is False and not config.data.data_dir:
        raise ValueError("--data_dir is required (TFRecords from python -m efficientnet_tf.data.convert, "
                         "or tfds:<name>), or pass --use_synthetic_data to measure throughput.")
    rundir = RunDir(FLAGS.model_dir)
    if FLAGS.mode == "eval":
        return run_eval(config, rundir)
    # Everything that can be known now is checked before anything is written.
    rundir.check_writable()
    if FLAGS.export_dir:
        check_writable_dir(FLAGS.export_dir, "--export_dir")
    config, convert_data = plan_finetuning(config, FLAGS.model_dir)
    if not convert_data:  # else the records are made under the run's lock, then read
        from efficientnet_tf.data.pipeline import check_source

        check_source(config.data, ("train", "validation") if FLAGS.mode == "train_and_eval"
                     else ("train",))
    changes = rundir.check_config(config)
    strategy = make_strategy(FLAGS.strategy, FLAGS.tpu, FLAGS.tpu_zone, FLAGS.gcp_project)
    from efficientnet_tf.train.loop import Trainer, _is_chief

    log = logging.info if not sys.stdout.isatty() else print
    chief = _is_chief(strategy)
    with rundir.locked(log) if chief else contextlib.nullcontext():
        if convert_data:
            convert_data()
        trainer = Trainer(config, FLAGS.model_dir, strategy, jit_compile=FLAGS.jit_compile,
                          log=log, rundir=rundir)
        if chief:
            rundir.record_start(config)
            if changes:
                log("Restart with " + ", ".join(f"{k}: {a!r} -> {b!r}"
                                                for k, (a, b) in changes.items())
                    + f" (recorded in {rundir.join('restarts.jsonl')}).")
        eval_every = None
        if FLAGS.mode == "train_and_eval":
            eval_every = eval_interval(trainer.total_steps, trainer.steps_per_epoch,
                                       FLAGS.eval_every_epochs)
        state = trainer.train(eval_every_steps=eval_every)
        if state.get("preempted"):
            sys.exit(state.get("exit_code", 143))  # saved; the same command resumes from it
        from efficientnet_tf.train.continuous_eval import plot_history

        plot_history(FLAGS.model_dir)
        if FLAGS.mode == "train_and_eval":
            result = trainer.evaluate()
            print(f"Final eval (EMA={result['ema']}): top-1 {result['top1']:.4f} top-5 "
                  f"{result['top5']:.4f} on {result['examples']} images ({result['skipped']} "
                  "undecodable ones skipped)")
    if FLAGS.export_dir and trainer.is_chief:
        from efficientnet_tf.export import export_saved_model, load_model_for_export

        # Rebuilt in float32 from the last checkpoint, EMA weights swapped in.
        loaded = load_model_for_export(FLAGS.model_dir)
        path = export_saved_model(loaded.model, FLAGS.export_dir,
                                  image_size=config.data.image_size,
                                  crop_padding=config.data.crop_padding,
                                  resize_method=config.data.resize_method,
                                  outputs_are_logits=True,
                                  label_names=_label_names(config.data.data_dir))
        print(f"Exported {loaded.describe()} to {path}")


def run_eval(config, rundir):
    """--mode=eval: evaluates each new checkpoint of a training run; writes no config."""
    import tensorflow as tf

    from efficientnet_tf.train.continuous_eval import continuous_eval
    from efficientnet_tf.train.loop import Trainer
    from efficientnet_tf.train.strategy import make_strategy

    if rundir.stored_config() is not None:
        config = plan_finetuning(config, FLAGS.model_dir, check=False)[0]
        rundir.check_config(config)
    strategy = make_strategy(FLAGS.strategy, FLAGS.tpu, FLAGS.tpu_zone, FLAGS.gcp_project)
    trainer = Trainer(config, FLAGS.model_dir, strategy, jit_compile=FLAGS.jit_compile,
                      log=logging.info if not sys.stdout.isatty() else print, rundir=rundir)
    best = continuous_eval(trainer, timeout=FLAGS.eval_timeout)
    if best is None and not tf.train.latest_checkpoint(FLAGS.model_dir):
        raise RuntimeError(f"no checkpoint appeared in {FLAGS.model_dir} within --eval_timeout="
                           f"{FLAGS.eval_timeout} s: is the training job running with this "
                           "--model_dir?")


def plan_finetuning(config, model_dir: str, log=print, check: bool = True):
    """(config, convert) without writing anything: a folder of images as data_dir becomes
    model_dir/data (convert() makes it, None when it holds this folder's TFRecords already),
    and the fine-tuning source and freeze spec are checked on a built model (check=True)."""
    import tensorflow as tf

    from efficientnet_tf.train import finetune

    convert_data = None
    folder = finetune.is_image_folder(config.data.data_dir, config.data.train_file_pattern)
    if folder:
        classes = finetune.scan_image_folder(config.data.data_dir)
        config = cfglib.apply_overrides(config, [f"data.num_classes={len(classes)}"])
    from efficientnet_tf.weights.published import get_weight_set

    ws = get_weight_set(config.finetune.init_weights)
    if ws is not None and config.model.normalization != ws.normalization:
        log(f"model.normalization={ws.normalization}: what the {ws.name!r} weights were trained "
            f"with (the config said {config.model.normalization!r}).")
        config = cfglib.apply_overrides(config, [f"model.normalization={ws.normalization}"])
    if check and config.finetune.enabled and not tf.train.latest_checkpoint(model_dir):
        finetune.check_setup(config)
    if folder:
        ft = config.finetune
        records, convert_data = finetune.image_folder_records(
            config.data.data_dir, model_dir, ft.validation_dir, ft.validation_fraction, log=log)
        config = cfglib.apply_overrides(config, [f"data.data_dir={records}"])
    return config, convert_data


def prepare_finetuning(config, model_dir: str, log=print):
    """plan_finetuning, then the image folder's conversion (when needed); returns the config."""
    config, convert_data = plan_finetuning(config, model_dir, log)
    if convert_data:
        convert_data()
    return config


def eval_interval(total_steps: int, steps_per_epoch: int, every_epochs: float | None) -> int:
    """Steps between evaluations: every_epochs epochs, else a tenth of the run (train_steps or
    epochs), but at most once per epoch."""
    if every_epochs:
        return max(1, int(every_epochs * steps_per_epoch))
    return max(1, total_steps // 10, min(steps_per_epoch, total_steps))


def _label_names(data_dir):
    from efficientnet_tf.export.load_run import read_label_names

    if not data_dir or data_dir.startswith("tfds:"):
        return None
    return read_label_names(data_dir)


def entry():
    define_flags()
    cli.run(main, __name__)


if __name__ == "__main__":
    entry()
