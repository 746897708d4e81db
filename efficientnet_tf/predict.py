"""python -m efficientnet_tf.predict --model=<.tflite or SavedModel dir> img1.jpg img2.png ...

Prints the top-k classes with names for each image (ImageNet names for 1000-class models, the
export's label names otherwise), or JSON with --json. A file that cannot be read or decoded is
reported by name and the others still run; the exit code is 1 when any failed, 2 for a bad
flag (--top_k and --batch_size must be >= 1).
"""
from __future__ import annotations

import json
import sys


def _define_flags():
    from absl import flags

    flags.DEFINE_string("model", None, "A .tflite file (from the export) or a SavedModel dir.")
    flags.DEFINE_integer("top_k", 5, "Classes to print per image.")
    flags.DEFINE_integer("num_threads", None, "Interpreter threads (.tflite); default: all.")
    flags.DEFINE_integer("batch_size", 32, "Images per interpreter call.")
    flags.DEFINE_bool("json", False, "Print one JSON list instead of text.")
    flags.DEFINE_integer("crop_padding", None, "Override the model's eval crop padding.")
    flags.DEFINE_string("resize_method", None, "Override the model's resize method.")


def _main(argv):
    from absl import flags

    from efficientnet_tf.export.predictor import Predictor, positive_int

    FLAGS = flags.FLAGS
    files = argv[1:]
    try:
        if not FLAGS.model:
            raise ValueError("--model is required (a .tflite file or a SavedModel directory).")
        if not files:
            raise ValueError("Give one or more image files after the flags.")
        for name in ("top_k", "batch_size"):
            positive_int(f"--{name}", getattr(FLAGS, name))
        p = Predictor(FLAGS.model, num_threads=FLAGS.num_threads, top_k=FLAGS.top_k,
                      crop_padding=FLAGS.crop_padding, resize_method=FLAGS.resize_method)
    except ValueError as e:
        print(f"efficientnet_tf.predict: error: {e}", file=sys.stderr)
        sys.exit(2)
    results = p.predict(files, batch_size=FLAGS.batch_size)
    if FLAGS.json:
        print(json.dumps([r.as_dict() for r in results], indent=1))
    else:
        print(f"# {FLAGS.model} ({p.runtime}, {p.image_size} px)")
        for r in results:
            if not r.ok:
                print(f"{r.source}: ERROR {r.error}")
                continue
            top = ", ".join(f"{n} {100 * q:.1f}%" for n, q in zip(r.names, r.probabilities))
            print(f"{r.source}: {top}")
    failed = [r.source for r in results if not r.ok]
    if failed:
        print(f"{len(failed)} of {len(results)} file(s) failed: {', '.join(failed)}",
              file=sys.stderr)
        sys.exit(1)


def entry():
    from efficientnet_tf import cli

    _define_flags()
    cli.run(_main, __name__)


if __name__ == "__main__":
    entry()
