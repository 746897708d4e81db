"""Step 1 of compound scaling: the grid search over alpha, beta, gamma under a MACs budget."""
from __future__ import annotations

import json
import os

from efficientnet_tf import config as cfglib
from efficientnet_tf import fileio
from efficientnet_tf.research import plots, runs, space


def pick(items: list, count: int | None) -> list:
    """count items spread evenly over the list (first and last included); all when None."""
    if not count or count >= len(items):
        return list(items)
    if count == 1:
        return [items[0]]
    return [items[round(i * (len(items) - 1) / (count - 1))] for i in range(count)]


def grid_search(base: cfglib.TrainConfig, out: str, seeds=(1,), step: float = 0.05,
                target: float = 2.0, tolerance: float = 0.10, max_alpha: float = 2.5,
                max_beta: float = 1.6, max_gamma: float = 1.6, divisor: int = 1,
                max_candidates: int | None = None, num_workers: int = 1, worker_index: int = 0,
                train: bool = True, strategy=None, log=print,
                profiler: space.Profiler | None = None, bn_batches: int = 0) -> dict:
    """Finds the candidates (space.grid_candidates), trains and evaluates this worker's share
    with base's recipe for every seed (runs.train_points; finished runs are skipped), then
    writes OUT/results.json and OUT/grid_search.png from every run finished so far in OUT (any
    worker's) and returns the results. train=False only collects.

    best: the finished candidate (all seeds) with the highest mean top-1. profiler: a
    space.Profiler (counts each candidate's MACs and parameters from its ModelSpec). bn_batches: re-estimate BN statistics
    on that many training batches before each evaluation (runs.train_point; for short runs).
    """
    space.partition([], num_workers, worker_index)  # bad worker flags fail before any build
    seeds = [int(s) for s in seeds]
    if not seeds:
        raise ValueError("Give at least one seed.")
    base_macs, candidates = space.grid_candidates(
        base, step, target, tolerance, max_alpha, max_beta, max_gamma, divisor,
        profiler=profiler)
    found = len(candidates)
    candidates = pick(candidates, max_candidates)
    log(f"{found} candidates within {tolerance:.0%} of {target}x the base's {base_macs:,} MACs; "
        f"searching {len(candidates)}, {len(space.partition(candidates, num_workers, worker_index))}"
        f" on this worker ({worker_index} of {num_workers}).")
    if train:
        runs.train_points(base, candidates, out, seeds, divisor, num_workers, worker_index,
                          strategy, log, bn_batches)
    rows = runs.collect(candidates, out, seeds)
    finished = [r for r in rows if r["finished"]]
    best = max(finished, key=lambda r: r["top1_mean"]) if finished else None
    results = {
        "base": {"width_coefficient": base.model.to_spec().width_coefficient,
                 "depth_coefficient": base.model.to_spec().depth_coefficient,
                 "image_size": base.data.image_size, "macs": base_macs},
        "resolution_rounding": f"round(image_size * gamma / {divisor}) * {divisor}",
        "step": step, "target": target, "tolerance": tolerance,
        "band": [(1 - tolerance) * target, (1 + tolerance) * target],
        "seeds": seeds, "candidates_in_band": found, "complete": len(finished) == len(rows),
        "candidates": rows, "best": best,
    }
    fileio.write_file(os.path.join(out, "results.json"), json.dumps(results, indent=2))
    plots.plot_grid_search(results, os.path.join(out, "grid_search.png"))
    if best:
        log(f"best: alpha {best['alpha']:g}, beta {best['beta']:g}, gamma {best['gamma']:g} "
            f"({best['macs_ratio']:.2f}x MACs), top-1 {best['top1_mean']:.4f}")
    return results
