"""Compound scaling reproduced at small scale, with Fashion-MNIST as the proxy for ImageNet.
Prints JSON: the step-1 pick, whether each single dimension saturates, and compound vs the best
single dimension at about equal MACs, next to the spread over seeds.

    .venv/bin/python bench/research.py [--out bench_out/research] [--seeds 1 2] [--epochs 1]
    .venv/bin/python bench/research.py --quick      # a few steps on 500 images: the plumbing only

The base: the fashion_mnist recipe's network (B0 at width 0.5 / depth 0.5, stride-1 stem) at
24 px, every point trained --epochs with that recipe (SGD + Nesterov, cosine) and evaluated
on the 10,000 test images (EMA weights), after its BN statistics are re-estimated on
--bn_batches training batches (research.bn: after one epoch the running ones lag the weights
and scatter the scores; both evaluations are kept).
1. Step 1 (research.grid_search): alpha, beta, gamma on a --step grid with measured MACs within
   10% of 2x the base's; --max_candidates of them (spread over the list), every seed.
2. Curves (research.scaling_curves): width-only, depth-only and resolution-only at two
   multipliers (about 2x and 3x the MACs) and compound scaling with the picked alpha, beta,
   gamma at phi 1 and 1.5.
About 2.5 hours on a 2-core CPU (see docs/research.md for the measured time). The data come from Debian's dataset-fashion-mnist ($FASHION_MNIST_DIR overrides it).
Both share OUT/runs (a curve point that is also a candidate is trained once). Everything
resumes: run the same command again after an interruption.
"""
import argparse
import json
import os
import statistics
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
FMNIST = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def _data(out, quick):
    from efficientnet_tf.data import convert

    data_dir = os.path.join(out, "data_quick" if quick else "data")
    if not os.path.exists(os.path.join(data_dir, "dataset_info.json")):
        convert.convert_idx(FMNIST, data_dir, max_examples=500 if quick else None,
                            train_shards=4 if quick else 16, validation_shards=2,
                            progress=sys.stdout.isatty())
    return data_dir


def _gain(points, kind):
    """Top-1 gains from one multiplier to the next along a curve (mean over seeds)."""
    pts = sorted((p for p in points if p["kind"] == kind), key=lambda p: p["multiplier"])
    acc = [p["top1_mean"] for p in pts]
    return {"multipliers": [p["multiplier"] for p in pts], "macs": [p["macs"] for p in pts],
            "top1": acc, "gains": [b - a for a, b in zip(acc, acc[1:])]}


def summarize(results, curves):
    """The three answers, from results.json and curves.json."""
    pts = curves["points"]
    spread = [p["top1_std"] for p in pts if p["top1_std"] is not None]
    # The same spread from the evaluations with the running BN statistics (--bn_batches > 0).
    plain = [statistics.pstdev(p["top1_running_stats"].values()) for p in pts
             if len(p.get("top1_running_stats", {})) >= 2]
    single = {k: _gain(pts, k) for k in ("width", "depth", "resolution")}
    # None: fewer than three points on the curve, nothing to compare.
    saturates = {k: (v["gains"][-1] < v["gains"][0] if len(v["gains"]) >= 2 else None)
                 for k, v in single.items()}
    top = max(p["multiplier"] for p in pts if p["kind"] == "compound")
    comp = next(p for p in pts if p["kind"] == "compound" and p["multiplier"] == top)
    # The single-dimension point nearest the largest compound point's MACs (log scale).
    import math

    rivals = [p for p in pts if p["kind"] != "compound" and p["multiplier"] != 1.0]
    near = min(rivals, key=lambda p: abs(math.log(p["macs"] / comp["macs"])))
    best = results["best"]
    return {
        "step1_pick": best and {k: best[k] for k in ("alpha", "beta", "gamma", "macs_ratio",
                                                     "top1_mean", "top1_std")},
        "candidates_in_band": results["candidates_in_band"],
        "single_dimension": single, "saturates (last gain < first gain)": saturates,
        "compound_vs_best_single": {
            "compound": {k: comp[k] for k in ("multiplier", "macs", "top1_mean", "top1_std")},
            "single": {k: near[k] for k in ("kind", "multiplier", "macs", "top1_mean", "top1_std")},
            "difference": comp["top1_mean"] - near["top1_mean"],
            "mean_seed_std": statistics.fmean(spread) if spread else None,
            "mean_seed_std_running_bn_stats": statistics.fmean(plain) if plain else None},
    }


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="bench_out/research")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=float, default=1.0, help="training epochs per point")
    p.add_argument("--image_size", type=int, default=24, help="the base's resolution")
    p.add_argument("--step", type=float, default=0.1, help="grid step of alpha, beta, gamma")
    p.add_argument("--max_candidates", type=int, default=4)
    p.add_argument("--bn_batches", type=int, default=50, help="BN statistics re-estimated on "
                   "this many training batches before each evaluation (0: the running ones)")
    p.add_argument("--quick", action="store_true", help="2 steps per point, 500 images, one "
                   "seed, one candidate, one point per curve: checks the script runs")
    args = p.parse_args()
    t0 = time.time()
    from efficientnet_tf import config as cfglib
    from efficientnet_tf import research

    out = os.path.join(args.out, "quick") if args.quick else args.out
    data_dir = _data(args.out, args.quick)
    overrides = [f"data.data_dir={data_dir}", f"data.image_size={args.image_size}",
                 f"epochs={args.epochs}"]
    seeds, step, cands, bn_batches = args.seeds, args.step, args.max_candidates, args.bn_batches
    curves = dict(width=[1.4, 1.7], depth=[2.0, 3.0], resolution=[1.4, 1.7], phis=[1.0, 1.5])
    grid = {}
    if args.quick:
        overrides += ["train_steps=2", "steps_per_execution=1", "eval_batch_size=250"]
        seeds, step, cands, bn_batches = [1], 0.5, 1, min(2, args.bn_batches)
        curves = dict(width=[2.0], depth=[], resolution=[], phis=[1.0])
        grid = dict(tolerance=0.3, max_alpha=2.0, max_beta=1.5, max_gamma=1.5)
    base = cfglib.apply_overrides(cfglib.load_config("fashion_mnist"), overrides)
    log = lambda m: print(m, flush=True)  # noqa: E731
    results = research.grid_search(base, out, seeds=seeds, step=step,
                                   max_candidates=cands, log=log, bn_batches=bn_batches, **grid)
    best = results["best"]
    found = research.scaling_curves(base, out, seeds=seeds,
                                    alpha=best["alpha"], beta=best["beta"], gamma=best["gamma"],
                                    log=log, bn_batches=bn_batches, **curves)
    summary = {**summarize(results, found), "seeds": seeds, "epochs_per_point": args.epochs,
               "bn_batches": bn_batches,
               "quick": args.quick, "minutes": round((time.time() - t0) / 60, 1),
               "plots": [os.path.join(out, "grid_search.png"), os.path.join(out, "curves.png")]}
    with open(os.path.join(out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=2)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
