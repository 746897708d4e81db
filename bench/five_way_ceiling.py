"""How high can a model get on bench/finetune.py's task at all? A run trained with every label
(the demo's: all 60,000 Fashion-MNIST training images, 10 classes), scored on the 5,000 test
images of classes 5-9 as the 5-way task bench/finetune.py scores (argmax over those 5 classes).

    .venv/bin/python bench/five_way_ceiling.py --model_dir=demo_out/model

Transfer from 50 images per class cannot be expected above this, so transfer minus scratch
cannot exceed it minus scratch's accuracy. Prints JSON (EMA weights, the run's eval preprocessing).
"""
import argparse
import dataclasses
import json
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402

from efficientnet_tf.data import pipeline  # noqa: E402
from efficientnet_tf.export import load_run  # noqa: E402

CLASSES = (5, 6, 7, 8, 9)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model_dir", required=True, help="a 10-class Fashion-MNIST training run")
    args = p.parse_args()
    loaded = load_run.load_model_for_export(args.model_dir)
    data = dataclasses.replace(loaded.config.data, deterministic=True, cache=False)
    logits, labels = [], []
    for x, y in pipeline.build_dataset(data, "validation", 1000, repeat=False):
        logits.append(loaded.model(x, training=False).numpy())
        labels.append(y.numpy())
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    keep = np.isin(labels, CLASSES)
    five = np.array(CLASSES)[logits[keep][:, list(CLASSES)].argmax(1)]
    truth = labels[keep]
    print(json.dumps({
        "model_dir": args.model_dir, "checkpoint": loaded.checkpoint,
        "ten_class_top1": round(float((logits.argmax(1) == labels).mean()), 4),
        "images": int(keep.sum()), "five_way_top1": round(float((five == truth).mean()), 4),
        "per_class": {int(c): round(float((five[truth == c] == c).mean()), 4) for c in CLASSES},
    }, indent=1))


if __name__ == "__main__":
    main()
