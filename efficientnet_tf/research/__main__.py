"""python -m efficientnet_tf.research <command> --flags

Commands:
  grid_search     step 1: alpha, beta, gamma on a grid under a measured-MACs band, each
                  candidate trained and evaluated; OUT/results.json, OUT/grid_search.png
  scaling_curves  width-, depth-, resolution-only and compound scaling of the base;
                  OUT/curves.json, OUT/curves.png
  cam             class activation maps of --images for each of --model_dirs; OUT/cam.png

The flags live here only; the commands call the library (efficientnet_tf.research).
"""
from __future__ import annotations

import sys

from absl import flags

from efficientnet_tf.train.main import define_strategy_flags

COMMANDS = ("grid_search", "scaling_curves", "cam")


def define_flags(fv: flags.FlagValues) -> None:
    f = dict(flag_values=fv)
    flags.DEFINE_string("out", None, "Output folder (local or gs://). Required.", **f)
    flags.DEFINE_string("config", "efficientnet-b0", "The base: a YAML recipe (path or name in "
                        "configs/, e.g. fashion_mnist) whose model, resolution and training "
                        "recipe every point starts from.", **f)
    flags.DEFINE_multi_string("override", [], "Overrides of the base config, e.g. "
                              "--override=model.width_coefficient=0.5.", **f)
    flags.DEFINE_string("data_dir", None, "TFRecords (train-*, validation-*) or tfds:<name>.", **f)
    flags.DEFINE_bool("use_synthetic_data", False, "Random images and labels (smoke runs).", **f)
    flags.DEFINE_integer("train_steps", None, "Training steps per run (the short recipe).", **f)
    flags.DEFINE_float("epochs", None, "Training epochs per run (when no --train_steps).", **f)
    flags.DEFINE_integer("train_batch_size", None, "Global training batch size.", **f)
    flags.DEFINE_integer("eval_batch_size", None, "Global evaluation batch size.", **f)
    flags.DEFINE_list("seeds", ["1"], "Seeds; every point is trained once per seed.", **f)
    flags.DEFINE_integer("resolution_divisor", 1, "Image size of a point: round(base size * "
                         "gamma / d) * d (1: nearest integer, 8: as compound_scaling).", **f)
    flags.DEFINE_integer("num_workers", 1, "Machines sharing the points.", **f)
    flags.DEFINE_integer("worker_index", 0, "This machine's index, 0 .. num_workers - 1.", **f)
    flags.DEFINE_integer("bn_batches", 0, "Before evaluating a run (cam: before mapping), "
                         "re-estimate its BN statistics on this many training batches (0: "
                         "off). For runs of an epoch or so, whose moving statistics lag the "
                         "weights.", **f)
    flags.DEFINE_bool("collect_only", False, "Train nothing: write the results of the runs "
                      "finished so far (e.g. after all workers are done).", **f)
    define_strategy_flags(fv)
    # grid_search
    flags.DEFINE_float("step", 0.05, "grid_search: grid step of alpha, beta, gamma.", **f)
    flags.DEFINE_float("target", 2.0, "grid_search: MACs target, times the base's.", **f)
    flags.DEFINE_float("tolerance", 0.10, "grid_search: kept within this fraction of target.", **f)
    flags.DEFINE_float("max_alpha", 2.5, "grid_search: largest alpha (depth) on the grid.", **f)
    flags.DEFINE_float("max_beta", 1.6, "grid_search: largest beta (width) on the grid.", **f)
    flags.DEFINE_float("max_gamma", 1.6, "grid_search: largest gamma (resolution).", **f)
    flags.DEFINE_integer("max_candidates", None, "grid_search: train only this many candidates, "
                         "spread evenly over the candidate list.", **f)
    # scaling_curves
    flags.DEFINE_list("width_multipliers", ["1.5", "2", "3"], "scaling_curves: width-only.", **f)
    flags.DEFINE_list("depth_multipliers", ["1.5", "2", "3"], "scaling_curves: depth-only.", **f)
    flags.DEFINE_list("resolution_multipliers", ["1.25", "1.5", "2"],
                      "scaling_curves: resolution-only.", **f)
    flags.DEFINE_list("phis", ["1", "2", "3"], "scaling_curves: compound coefficients.", **f)
    flags.DEFINE_float("alpha", 1.2, "scaling_curves: compound depth base.", **f)
    flags.DEFINE_float("beta", 1.1, "scaling_curves: compound width base.", **f)
    flags.DEFINE_float("gamma", 1.15, "scaling_curves: compound resolution base.", **f)
    flags.DEFINE_string("from_grid_search", None, "scaling_curves: take alpha, beta, gamma from "
                        "the best candidate of this results.json.", **f)
    # cam
    flags.DEFINE_list("model_dirs", [], "cam: training model_dirs (side by side).", **f)
    flags.DEFINE_list("images", [], "cam: image files (PNG/JPEG).", **f)
    flags.DEFINE_integer("class_index", None, "cam: this class for every image (default: "
                         "each model's top-1).", **f)
    flags.DEFINE_enum("method", "auto", ["auto", "cam", "grad_cam"], "cam: CAM (plain pooled "
                      "dense head), Grad-CAM, or auto (CAM when the head allows it).", **f)


def _floats(values) -> list[float]:
    return [float(v) for v in values]


def base_config(fv):
    from efficientnet_tf import config as cfglib

    config = cfglib.load_config(fv.config)
    overrides = []
    for flag, key in (("data_dir", "data.data_dir"), ("train_steps", "train_steps"),
                      ("epochs", "epochs"), ("train_batch_size", "train_batch_size"),
                      ("eval_batch_size", "eval_batch_size")):
        if getattr(fv, flag) is not None:
            overrides.append(f"{key}={getattr(fv, flag)}")
    if fv.use_synthetic_data:
        overrides.append("data.synthetic=true")
    config = cfglib.apply_overrides(config, overrides + list(fv.override))
    if not config.data.synthetic and not config.data.data_dir:
        raise ValueError("Give --data_dir (TFRecords from python -m efficientnet_tf.data.convert, "
                         "or tfds:<name>), or --use_synthetic_data for a smoke run.")
    return config


def _strategy(fv):
    from efficientnet_tf.train.strategy import make_strategy

    return make_strategy(fv.strategy, fv.tpu, fv.tpu_zone, fv.gcp_project)


def run(command: str, fv) -> None:
    if not fv.out:
        raise ValueError("--out is required (a local folder or gs://bucket/path).")
    from efficientnet_tf import research

    common = dict(seeds=[int(s) for s in fv.seeds], divisor=fv.resolution_divisor,
                  num_workers=fv.num_workers, worker_index=fv.worker_index,
                  train=not fv.collect_only, bn_batches=fv.bn_batches)
    if command == "grid_search":
        base = base_config(fv)
        research.grid_search(base, fv.out, step=fv.step, target=fv.target,
                             tolerance=fv.tolerance, max_alpha=fv.max_alpha,
                             max_beta=fv.max_beta, max_gamma=fv.max_gamma,
                             max_candidates=fv.max_candidates,
                             strategy=None if fv.collect_only else _strategy(fv), **common)
        print(f"Wrote {fv.out}/results.json and {fv.out}/grid_search.png")
    elif command == "scaling_curves":
        base = base_config(fv)
        alpha, beta, gamma = fv.alpha, fv.beta, fv.gamma
        if fv.from_grid_search:
            from efficientnet_tf import fileio

            best = (fileio.read_json(fv.from_grid_search) or {}).get("best")
            if not best:
                raise ValueError(f"{fv.from_grid_search} has no best candidate yet (missing, or "
                                 "no candidate finished every seed).")
            alpha, beta, gamma = best["alpha"], best["beta"], best["gamma"]
        research.scaling_curves(base, fv.out, _floats(fv.width_multipliers),
                                _floats(fv.depth_multipliers),
                                _floats(fv.resolution_multipliers), _floats(fv.phis),
                                alpha, beta, gamma,
                                strategy=None if fv.collect_only else _strategy(fv), **common)
        print(f"Wrote {fv.out}/curves.json and {fv.out}/curves.png")
    else:
        from efficientnet_tf.research.cam_figure import write_cam_figure

        path = write_cam_figure(fv.model_dirs, fv.images, fv.out, fv.class_index, fv.method,
                                fv.bn_batches)
        print(f"Wrote {path}")


def main(argv) -> int:
    fv = flags.FlagValues()
    define_flags(fv)
    if {"-h", "--help", "-help", "--helpfull", "--helpshort"} & set(argv[1:]):
        print(f"{__doc__}\nFlags:\n{fv.get_help()}")
        return 0
    try:
        rest = fv(list(argv))
    except flags.Error as e:
        print(f"efficientnet_tf.research: error: {e}", file=sys.stderr)
        return 2
    if len(rest) != 2 or rest[1] not in COMMANDS:
        print(f"efficientnet_tf.research: give one command: {' | '.join(COMMANDS)} (got "
              f"{rest[1:] or 'none'}).\n{__doc__}", file=sys.stderr)
        return 2
    from efficientnet_tf.research.runs import Preempted

    try:
        run(rest[1], fv)
    except ValueError as e:
        print(f"efficientnet_tf.research: error: {e}", file=sys.stderr)
        return 2
    except Preempted as e:
        from efficientnet_tf.train.preemption import EXIT_CODE

        print(f"efficientnet_tf.research: {e} Run the same command again to resume.",
              file=sys.stderr)
        return EXIT_CODE
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
