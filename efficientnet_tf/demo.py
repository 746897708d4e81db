"""The README's main job: Fashion-MNIST, end to end, on this machine.

    python -m efficientnet_tf.demo [--out demo_out] [--config fashion_mnist] [--epochs N] [--fresh]

A second run resumes the model it finds in --out (a finished one goes straight to evaluation);
--fresh deletes it and trains from scratch. Nothing is deleted without --fresh.

1. convert Debian's dataset-fashion-mnist IDX files to TFRecords (once),
2. train the fashion_mnist recipe (a scaled-down B0) from scratch,
3. evaluate the EMA weights on the 10,000 test images,
4. export a SavedModel for TF Serving and a LiteRT file for CPUs and phones,
5. reload the SavedModel alone and classify the test images from their encoded bytes
   (serving_default), printing a few predictions and the accuracy.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

FASHION_DIR = "/usr/share/datasets/fashion-mnist"


def _need_data(idx_dir):
    if os.path.isdir(idx_dir) and any(n.startswith("t10k-images") for n in os.listdir(idx_dir)):
        return
    sys.exit(f"Fashion-MNIST not found in {idx_dir}.\n"
             "On Debian/Ubuntu: sudo apt-get install dataset-fashion-mnist\n"
             "Elsewhere: download the four *-ubyte.gz files of Fashion-MNIST into a folder and "
             "pass --idx_dir=FOLDER.")


def main(argv=None) -> int:
    try:
        return _main(argv)
    except ValueError as e:  # a config or run-directory problem: the message says what to do
        print(f"efficientnet_tf.demo: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C outside the training loop (which saves and stops)
        print("efficientnet_tf.demo: interrupted (Ctrl-C); run the same command to resume.",
              file=sys.stderr)
        return 130


def _main(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_out", help="working directory (data, model, export)")
    p.add_argument("--idx_dir", default=FASHION_DIR)
    p.add_argument("--config", default="fashion_mnist")
    p.add_argument("--epochs", type=float, default=None, help="override the recipe's epochs")
    p.add_argument("--fresh", action="store_true",
                   help="delete the model in --out and train from scratch (default: resume it)")
    p.add_argument("--resume", action="store_true", help=argparse.SUPPRESS)  # the default now
    p.add_argument("--show", type=int, default=8, help="test images to print predictions for")
    p.add_argument("--max_images", type=int, default=None,
                   help="a quick try-out: N random training images and the first N test images "
                        "(converted into their own data folder)")
    args = p.parse_args(argv)
    t_start = time.time()
    _need_data(args.idx_dir)

    import tensorflow as tf

    from efficientnet_tf import config as cfglib
    from efficientnet_tf.data import convert, pipeline
    from efficientnet_tf.rundir import RunDir
    from efficientnet_tf.train.loop import Trainer

    suffix = f"-first{args.max_images}" if args.max_images else ""
    data_dir = os.path.join(args.out, "data" + suffix)
    model_dir = os.path.join(args.out, "model" + suffix)
    export_dir = os.path.join(args.out, "export")
    if not os.path.exists(os.path.join(data_dir, "dataset_info.json")):
        print(f"[1/5] Converting {args.idx_dir} -> {data_dir}")
        convert.convert_idx(args.idx_dir, data_dir, progress=sys.stdout.isatty(),
                            max_examples=args.max_images)
    else:
        print(f"[1/5] Using the TFRecords in {data_dir}")

    overrides = [f"data.data_dir={data_dir}"]
    if args.epochs:
        overrides.append(f"epochs={args.epochs}")
    config = cfglib.apply_overrides(cfglib.load_config(args.config), overrides)
    if args.fresh and os.path.isdir(model_dir):
        print(f"      --fresh: deleting {model_dir}")
        shutil.rmtree(model_dir)
    rundir = RunDir(model_dir)
    rundir.check_writable()
    try:
        rundir.check_config(config)
    except ValueError as e:
        raise ValueError(f"{e} (Or pass --fresh to delete it and start over.)") from None
    with rundir.locked():
        trainer = Trainer(config, model_dir, rundir=rundir)
        rundir.record_start(config)
        resumed = tf.train.latest_checkpoint(model_dir)
        print(f"[2/5] Training {config.model.model_name} ({trainer.model.count_params():,} "
              f"params) for {config.epochs:g} epochs of {trainer.steps_per_epoch} steps"
              + (f", resuming {resumed} (--fresh starts over)" if resumed else ""))
        t0 = time.time()
        state = trainer.train()
        train_s = time.time() - t0
    if state.get("preempted"):
        print(f"Stopped at step {state['step']} with a checkpoint saved: run the same command to "
              "resume.", file=sys.stderr)
        return state["exit_code"]
    from efficientnet_tf.train.continuous_eval import plot_history

    plot_history(model_dir)

    test_images = f"{min(args.max_images, 10000):,}" if args.max_images else "10,000"
    print(f"[3/5] Evaluating on the {test_images} test images")
    result = trainer.evaluate()
    print(f"      top-1 {result['top1']:.4f}  top-5 {result['top5']:.4f}  "
          f"({'EMA' if result['ema'] else 'raw'} weights)")

    print(f"[4/5] Exporting a SavedModel to {export_dir}")
    from efficientnet_tf.export import export_saved_model, load_model_for_export
    from efficientnet_tf.export.load_run import read_label_names

    names = read_label_names(data_dir)
    loaded = load_model_for_export(model_dir)  # the last checkpoint, EMA weights
    path = export_saved_model(loaded.model, export_dir, image_size=config.data.image_size,
                              crop_padding=config.data.crop_padding,
                              resize_method=config.data.resize_method, label_names=names,
                              outputs_are_logits=True)
    print(f"      {loaded.describe()}")
    from efficientnet_tf.export.tflite import export_tflite

    tflite = export_tflite(loaded.model, os.path.join(export_dir, "tflite",
                                                      os.path.basename(path) + "_float32.tflite"),
                           crop_padding=config.data.crop_padding,
                           resize_method=config.data.resize_method, label_names=names)
    print(f"      LiteRT float32: {tflite} (python -m efficientnet_tf.predict --model={tflite} "
          "IMAGE...)")

    print(f"[5/5] Classifying the test images with {path} (encoded bytes -> serving_default)")
    serve = tf.saved_model.load(path).signatures["serving_default"]
    dc = config.data
    files = pipeline.list_files(dc, "validation")
    from efficientnet_tf.data.tfrecord import parse_example

    records = tf.data.TFRecordDataset(files).map(parse_example).batch(500)
    correct = total = 0
    shown = []
    for batch in records:
        out = serve(image_bytes=batch["image/encoded"])
        labels = batch["image/class/label"].numpy() - dc.label_offset
        pred = out["classes"].numpy()
        top_prob = out["probabilities"].numpy().max(axis=1)
        correct += int((pred == labels).sum())
        total += len(labels)
        if len(shown) < args.show:
            for i in range(min(args.show - len(shown), len(labels))):
                shown.append((names[labels[i]] if names else labels[i],
                              names[pred[i]] if names else pred[i],
                              float(top_prob[i])))
    for truth, guess, prob in shown:
        mark = "ok " if truth == guess else "MISS"
        print(f"      {mark} true {truth:<12} predicted {guess:<12} p={prob:.3f}")
    accuracy = correct / max(total, 1)
    total_s = time.time() - t_start
    summary = {"test_accuracy_savedmodel": accuracy, "test_top1_trainer": result["top1"],
               "images": total, "train_seconds": round(train_s), "total_seconds": round(total_s),
               "epochs": config.epochs, "export": path, "tflite": tflite}
    with open(os.path.join(args.out, "demo_result.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(f"SavedModel accuracy on {total} test images: {accuracy:.4f}  "
          f"(training {train_s / 60:.1f} min, total {total_s / 60:.1f} min)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
