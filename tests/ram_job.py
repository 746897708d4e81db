"""The training job, eval and export with every path on ram:// (TensorFlow's in-memory
filesystem, which only this process can see); prints what ended up there as JSON.

    python tests/ram_job.py   (run with an empty working directory: nothing may appear in it)
"""
import json
import os
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import tensorflow as tf  # noqa: E402
from absl import flags  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import tiny_records  # noqa: E402

DATA, MODEL, EXPORT = "ram://job/data", "ram://job/model", "ram://job/export"


def main():
    from efficientnet_tf import config as cfglib
    from efficientnet_tf.train import main as train_main
    from efficientnet_tf.train.continuous_eval import continuous_eval
    from efficientnet_tf.train.loop import Trainer

    tiny_records.write_records(DATA)
    train_main.define_flags()
    args = [f"--override={o}" for o in tiny_records.overrides(DATA)]
    flags.FLAGS(["train", "--config=fashion_mnist", f"--model_dir={MODEL}",
                 f"--export_dir={EXPORT}", "--mode=train_and_eval", *args])
    train_main.run()  # train, eval, history, PNG, config.yaml, export (with label names)
    config = cfglib.load_config(f"{MODEL}/config.yaml")
    best = continuous_eval(Trainer(config, MODEL, log=print), timeout=1)
    files = sorted(f"{root}/{name}" for root, _, names in tf.io.gfile.walk("ram://job")
                   for name in names)
    served = tf.saved_model.load(f"{EXPORT}/1").signatures["serving_default"](
        image_bytes=tf.constant([tiny_records.jpeg(0)]))
    print("RESULT" + json.dumps({"files": files, "best": best,
                                 "class_name": served["class_names"].numpy()[0].decode()}))


if __name__ == "__main__":
    main()
