"""python -m efficientnet_tf.weights convert --weights=<source> --model_name=efficientnet-b0
--output=<file>

<source>: anything weights= takes ("imagenet", a published set such as "advprop", a keras file,
a TF1 checkpoint prefix or directory). <file> ends in .weights.h5, .keras or .h5 (see
efficientnet_tf/weights/write.py). Also: `list` prints the published sets.
"""
from __future__ import annotations

import sys

from absl import app, flags

FLAGS = flags.FLAGS


def _define_flags():
    f = flags
    f.DEFINE_string("weights", None, "The source: imagenet, a published set, a file or a TF1 "
                    "checkpoint.")
    f.DEFINE_string("model_name", None, "The variant, e.g. efficientnet-b0 (or b0).")
    f.DEFINE_string("output", None, "The file to write: .weights.h5, .keras or .h5.")
    f.DEFINE_bool("include_top", True, "Keep the classifier (False: the feature extractor).")
    f.DEFINE_bool("use_ema", True, "A TF1 checkpoint's EMA shadows (False: raw weights).")
    f.DEFINE_string("normalization", "auto", "auto | imagenet | advprop | lite | none.")


def _list() -> str:
    from efficientnet_tf.weights.published import weight_sets

    lines = []
    for ws in weight_sets().values():
        extra = f", {ws.image_size} px" if ws.image_size else ""
        lines.append(f"{ws.name}: {ws.description} (normalization {ws.normalization}{extra})")
        lines.append("  " + ", ".join(f"{v} {t}%" for v, t in ws.top1.items()))
    return "\n".join(lines)


def run(command: str) -> str:
    if command == "list":
        return _list()
    if command != "convert":
        raise ValueError(f"Unknown command {command!r}; use 'convert' or 'list'.")
    for name in ("weights", "model_name", "output"):
        if not getattr(FLAGS, name):
            raise ValueError(f"--{name} is required.")
    from efficientnet_tf.weights.write import convert_weights, output_kind

    output_kind(FLAGS.output)  # check before any download
    norm = None if FLAGS.normalization.lower() == "none" else FLAGS.normalization
    from efficientnet_tf import spec

    variant = spec.variant_key(FLAGS.model_name)
    r = convert_weights(FLAGS.weights, FLAGS.output, variant, include_top=FLAGS.include_top,
                        use_ema=FLAGS.use_ema, normalization=norm)
    ema = {True: ", EMA weights", False: ", raw weights", None: ""}[r.ema]
    skipped = f", left out: {', '.join(r.skipped)}" if r.skipped else ""
    return (f"Wrote {FLAGS.output}: {r.layers_loaded} layers from {r.path} ({r.format}{ema}, "
            f"normalization {r.normalization}{skipped}).")


def main(argv):
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    try:
        print(run(argv[1]))
    except ValueError as e:
        print(f"efficientnet_tf.weights: error: {e}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    _define_flags()
    app.run(main)
