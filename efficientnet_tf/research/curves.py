"""Single-dimension and compound scaling curves of a base (the paper's Fig. 3 and Fig. 8)."""
from __future__ import annotations

import json
import os

from efficientnet_tf import config as cfglib
from efficientnet_tf import fileio
from efficientnet_tf.research import plots, runs, space

KINDS = ("width", "depth", "resolution", "compound")


def curve_points(width=(), depth=(), resolution=(), phis=(), alpha: float = 1.2,
                 beta: float = 1.1, gamma: float = 1.15) -> list[tuple[str, float, space.Point]]:
    """(kind, multiplier, point) for every curve, each starting at the base (multiplier 1,
    phi 0). Compound at phi: alpha^phi, beta^phi, gamma^phi."""
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if value < 1:
            raise ValueError(f"{name} must be >= 1, got {value}.")
    for name, values in (("width", width), ("depth", depth), ("resolution", resolution)):
        if any(v <= 0 for v in values):
            raise ValueError(f"{name} multipliers must be > 0, got {list(values)}.")
    out = []
    for kind, values, make in (
            ("width", width, lambda m: space.Point(beta=m)),
            ("depth", depth, lambda m: space.Point(alpha=m)),
            ("resolution", resolution, lambda m: space.Point(gamma=m)),
            ("compound", phis, lambda p: space.Point(alpha**p, beta**p, gamma**p))):
        if not values:
            continue
        base_mult = 0.0 if kind == "compound" else 1.0
        for m in sorted({base_mult, *map(float, values)}):
            out.append((kind, m, make(m)))
    if not out:
        raise ValueError("No curve to draw: give width, depth or resolution multipliers or phis.")
    return out


def scaling_curves(base: cfglib.TrainConfig, out: str, width=(1.5, 2.0, 3.0),
                   depth=(1.5, 2.0, 3.0), resolution=(1.25, 1.5, 2.0), phis=(1.0, 2.0, 3.0),
                   alpha: float = 1.2, beta: float = 1.1, gamma: float = 1.15, seeds=(1,),
                   divisor: int = 1, num_workers: int = 1, worker_index: int = 0,
                   train: bool = True, strategy=None, log=print, bn_batches: int = 0) -> dict:
    """Trains every curve point (this worker's share of them, every seed; finished runs are
    skipped), then writes OUT/curves.json and OUT/curves.png from the runs finished so far and
    returns the curves. Points are measured on the built models (space.describe_point).
    bn_batches: as in grid_search."""
    space.partition([], num_workers, worker_index)
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("Give at least one seed.")
    profiler = space.Profiler()
    points = []
    base_macs = None
    for kind, mult, point in curve_points(width, depth, resolution, phis, alpha, beta, gamma):
        rec = space.describe_point(base, point, divisor, profiler, base_macs)
        base_macs = rec["base_macs"]
        points.append({"kind": kind, "multiplier": mult, **rec})
    if train:
        runs.train_points(base, points, out, seeds, divisor, num_workers, worker_index,
                          strategy, log, bn_batches)
    rows = runs.collect(points, out, seeds)
    curves = {"base_macs": base_macs, "alpha": alpha, "beta": beta, "gamma": gamma,
              "resolution_rounding": f"round(image_size * gamma / {divisor}) * {divisor}",
              "seeds": seeds, "kinds": [k for k in KINDS if any(p["kind"] == k for p in rows)],
              "complete": all(r["finished"] for r in rows), "points": rows}
    fileio.write_file(os.path.join(out, "curves.json"), json.dumps(curves, indent=2))
    plots.plot_curves(curves, os.path.join(out, "curves.png"))
    return curves
