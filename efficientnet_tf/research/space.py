"""The scaling search space: a base config, points (alpha, beta, gamma) around it, their
measured multiply-adds, the step-1 grid and its split over workers.

A point multiplies the base's depth by alpha, its width by beta and its resolution by gamma
(the paper's d, w, r). The model of a point is built with the reference's rounding (filters to
multiples of 8, repeats rounded up, scaling.py), so its real cost is counted on its network
(ModelSpec.macs: the built model's convolutions and classifier), not taken from
alpha * beta^2 * gamma^2.
"""
from __future__ import annotations

import dataclasses
import itertools

from efficientnet_tf import config as cfglib
from efficientnet_tf.modelspec import resolve


@dataclasses.dataclass(frozen=True)
class Point:
    """Depth x alpha, width x beta, resolution x gamma of the base."""

    alpha: float = 1.0
    beta: float = 1.0
    gamma: float = 1.0

    @property
    def name(self) -> str:
        """The point's folder name under OUT/runs, e.g. d1.2_w1.1_r1.15."""
        return f"d{self.alpha:.4g}_w{self.beta:.4g}_r{self.gamma:.4g}"


def image_size(base_size: int, gamma: float, divisor: int = 1) -> int:
    """base_size * gamma rounded to the nearest multiple of divisor (1: the nearest integer;
    8: as scaling.compound_scaling rounds B0's resolutions); at least divisor."""
    return max(divisor, int(round(base_size * gamma / divisor)) * divisor)


def base_scaling(base: cfglib.TrainConfig) -> tuple[float, float, int]:
    """(width, depth, image size) of the base config; refuses bases the scaling cannot vary."""
    s = base.model.to_spec(base.data.image_size)
    as_b0 = resolve(width_coefficient=s.width_coefficient, depth_coefficient=s.depth_coefficient,
                    stem_strides=s.stem_strides, normalization=s.normalization)
    if s.architecture_key() != as_b0.architecture_key(s.resolution):
        # e.g. a Lite base (also at custom width): not B0's blocks, activation and stem/head
        raise ValueError(f"Base {base.model.model_name}: scaling points are built from B0's "
                         "block table with every stage scaled; use a B-series variant or a "
                         "width/depth base (model.width_coefficient, model.depth_coefficient).")
    return s.width_coefficient, s.depth_coefficient, int(base.data.image_size)


def point_config(base: cfglib.TrainConfig, point: Point, divisor: int = 1) -> cfglib.TrainConfig:
    """The base's config with the point's width, depth and image size (the base's recipe)."""
    width, depth, size = base_scaling(base)
    return cfglib.apply_overrides(base, [
        f"model.width_coefficient={width * point.beta!r}",
        f"model.depth_coefficient={depth * point.alpha!r}",
        f"data.image_size={image_size(size, point.gamma, divisor)}"])


def architecture_key(config: cfglib.TrainConfig) -> tuple:
    """What the built model depends on (ModelSpec.architecture_key: image size, stem/head
    filters, every block's shape). Two points with one key build the same network."""
    return config.model.to_spec(config.data.image_size).architecture_key()


class Profiler:
    """Multiply-adds and parameters of a config's network, counted from its ModelSpec (no
    build; the counts equal profile.model_profile of the built model, tests/test_research.py
    checks that against built models)."""

    def __call__(self, config: cfglib.TrainConfig) -> dict:
        s = config.model.to_spec(config.data.image_size)
        classes = config.data.num_classes
        return {"macs": s.macs(classes=classes), "params": s.params(classes=classes)}


def _axis(step: float, top: float) -> list[float]:
    n = int(round((top - 1.0) / step))
    return [round(1.0 + i * step, 6) for i in range(n + 1)]


def grid_candidates(base: cfglib.TrainConfig, step: float = 0.05, target: float = 2.0,
                    tolerance: float = 0.10, max_alpha: float = 2.5, max_beta: float = 1.6,
                    max_gamma: float = 1.6, divisor: int = 1, unique: bool = True,
                    profiler: Profiler | None = None) -> tuple[int, list[dict]]:
    """(base MACs, candidates): every grid point alpha, beta, gamma >= 1 (multiples of step up to
    the max_*) whose built model has MACs within tolerance of target x the base's, in grid order
    (alpha, then beta, then gamma). unique: drop candidates that build the same network as an
    earlier one (the rounding maps neighbouring points to one model).

    Exact without building every point: measured MACs never decrease when alpha, beta or gamma
    grows (filter and repeat rounding and the resolution rounding are monotone), so a row stops
    at its first point above the band.
    """
    if step <= 0 or tolerance < 0 or target <= 0:
        raise ValueError(f"grid: need step > 0, tolerance >= 0, target > 0 (got step={step}, "
                         f"tolerance={tolerance}, target={target}).")
    profiler = profiler or Profiler()
    base_macs = profiler(point_config(base, Point(), divisor))["macs"]
    lo, hi = (1 - tolerance) * target * base_macs, (1 + tolerance) * target * base_macs
    kept, seen = [], set()
    for alpha in _axis(step, max_alpha):
        beta_rows = 0
        for beta in _axis(step, max_beta):
            gammas = 0
            for gamma in _axis(step, max_gamma):
                point = Point(alpha, beta, gamma)
                config = point_config(base, point, divisor)
                prof = profiler(config)
                if prof["macs"] > hi:
                    break
                gammas += 1
                key = architecture_key(config)
                if prof["macs"] >= lo and not (unique and key in seen):
                    seen.add(key)
                    kept.append(_describe(point, config, prof, base_macs))
            if not gammas:  # beta's row is over the band already at gamma = 1
                break
            beta_rows += 1
        if not beta_rows:
            break
    if not kept:
        raise ValueError(
            f"No grid point has measured MACs within {tolerance:.0%} of {target}x the base's "
            f"({base_macs:,}): the grid (step {step}, alpha <= {max_alpha}, beta <= {max_beta}, "
            f"gamma <= {max_gamma}) is too coarse or too small for the rounding. Use a finer "
            "--step, larger --max_alpha/--max_beta/--max_gamma or a wider --tolerance.")
    return base_macs, kept


def _describe(point: Point, config, prof: dict, base_macs: int) -> dict:
    return {"name": point.name, "alpha": point.alpha, "beta": point.beta, "gamma": point.gamma,
            "width_coefficient": config.model.width_coefficient,
            "depth_coefficient": config.model.depth_coefficient,
            "image_size": config.data.image_size, "macs": prof["macs"], "base_macs": base_macs,
            "macs_ratio": prof["macs"] / base_macs, "params": prof["params"]}


def describe_point(base, point: Point, divisor: int = 1, profiler: Profiler | None = None,
                   base_macs: int | None = None) -> dict:
    """The record grid_candidates keeps for a point, for any point."""
    profiler = profiler or Profiler()
    if base_macs is None:
        base_macs = profiler(point_config(base, Point(), divisor))["macs"]
    config = point_config(base, point, divisor)
    return _describe(point, config, profiler(config), base_macs)


def partition(items: list, num_workers: int = 1, worker_index: int = 0) -> list:
    """Worker worker_index's share: items worker_index, worker_index + num_workers, ... Every
    item goes to exactly one worker; round robin spreads cheap and costly points evenly."""
    if num_workers < 1:
        raise ValueError(f"num_workers must be >= 1, got {num_workers}.")
    if not 0 <= worker_index < num_workers:
        raise ValueError(f"worker_index must be in [0, num_workers) = [0, {num_workers}), got "
                         f"{worker_index}: number the workers 0 .. {num_workers - 1}.")
    return list(itertools.islice(items, worker_index, None, num_workers))
