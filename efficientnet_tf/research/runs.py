"""Training the points of a search or a curve: one model_dir per point and seed under
OUT/runs/<point>/seed<N>, finished when its result.json exists.

A restart skips finished runs and resumes unfinished ones from their checkpoints (the Trainer
does that); a run whose saved config.yaml differs from the recipe asked for is refused, so a
result is never reused for another recipe.
"""
from __future__ import annotations

import contextlib
import json
import os
import statistics
import time

from efficientnet_tf import config as cfglib
from efficientnet_tf import fileio
from efficientnet_tf.rundir import RunDir
from efficientnet_tf.research import bn
from efficientnet_tf.research.space import Point, partition, point_config

RESULT = "result.json"


class Preempted(RuntimeError):
    """SIGTERM during a run: its checkpoint is saved; run the same command again to resume."""


def run_dir(out: str, name: str, seed: int) -> str:
    return os.path.join(out, "runs", name, f"seed{seed}")


def read_result(model_dir: str) -> dict | None:
    """The finished run's result, None while it is not finished."""
    return fileio.read_json(os.path.join(model_dir, RESULT))


def train_point(config: cfglib.TrainConfig, model_dir: str, strategy=None, log=print,
                bn_batches: int = 0) -> dict:
    """Trains config in model_dir (resuming a checkpoint there), evaluates it and writes
    model_dir/result.json; a finished run is returned as it is, untrained.

    bn_batches > 0: the evaluated weights' BN statistics are first re-estimated on that many
    training batches (research.bn); top1/top5/loss are then those, and `running_stats` holds
    the plain evaluation. A finished run evaluated with another bn_batches is evaluated again
    from its final checkpoint, still untrained."""
    import tensorflow as tf

    done = read_result(model_dir)
    if done is not None and done.get("bn_batches", 0) == bn_batches:
        return done
    saved = RunDir(model_dir).config_path
    if tf.io.gfile.exists(saved) and (cfglib.dump_config(cfglib.load_config(saved))
                                      != cfglib.dump_config(config)):
        raise ValueError(f"{model_dir} holds a run of another recipe (its config.yaml differs "
                         "from this one): use a new --out, or delete that folder to retrain.")
    from efficientnet_tf.train.loop import Trainer

    t0 = time.time()
    trainer = Trainer(config, model_dir, strategy, log=log)
    if done is None:
        trainer.rundir.record_start(config)
        state = trainer.train()
        if state.get("preempted"):
            raise Preempted(f"Stopped by SIGTERM in {model_dir}; its checkpoint is saved.")
        step, seconds = state["step"], round(time.time() - t0, 1)
    else:
        step, seconds = trainer.restore(), done["seconds"]
        if step != done["steps"]:
            raise ValueError(f"{model_dir}: its latest checkpoint is step {step}, its "
                             f"result.json says {done['steps']}; delete the folder to retrain.")
    ev = trainer.evaluate()
    result = {"top1": ev["top1"], "top5": ev["top5"], "loss": ev["loss"],
              "examples": ev["examples"], "ema": ev["ema"], "steps": step, "seconds": seconds}
    if bn_batches:
        plain = {k: result[k] for k in ("top1", "top5", "loss")}
        with trainer.ema_weights() if ev["ema"] else contextlib.nullcontext():
            data = trainer.strategy.distribute_datasets_from_function(
                lambda ctx: trainer.task.train_dataset(ctx, trainer.global_batch))
            used = bn.recalibrate_bn(trainer.model, data, bn_batches, trainer.strategy)
            # evaluate() swaps the EMA in again: the recalibrated statistics would be lost.
            ev = trainer.evaluate(use_ema=False)
        if used < bn_batches:
            raise ValueError(f"{model_dir}: the training data gave {used} batches for BN "
                             f"re-estimation, {bn_batches} were asked for.")
        result.update(top1=ev["top1"], top5=ev["top5"], loss=ev["loss"], bn_batches=used,
                      running_stats=plain)
    if trainer.is_chief:
        fileio.write_file(os.path.join(model_dir, RESULT), json.dumps(result, indent=2))
    return result


def _point(rec: dict) -> Point:
    return Point(rec["alpha"], rec["beta"], rec["gamma"])


def train_points(base: cfglib.TrainConfig, points: list[dict], out: str, seeds, divisor: int = 1,
                 num_workers: int = 1, worker_index: int = 0, strategy=None, log=print,
                 bn_batches: int = 0) -> int:
    """Trains this worker's share of the distinct points (by name), every seed; returns how
    many runs it trained (finished ones are skipped; see train_point for bn_batches)."""
    unique = list({p["name"]: p for p in points}.values())
    trained = 0
    for rec in partition(unique, num_workers, worker_index):
        for seed in seeds:
            model_dir = run_dir(out, rec["name"], seed)
            done = read_result(model_dir)
            if done is not None and done.get("bn_batches", 0) == bn_batches:
                continue
            config = cfglib.apply_overrides(point_config(base, _point(rec), divisor),
                                            [f"seed={int(seed)}"])
            log(f"[{rec['name']} seed {seed}] width {config.model.width_coefficient:.4g} depth "
                f"{config.model.depth_coefficient:.4g} at {config.data.image_size} px, "
                f"{rec['macs']:,} MACs")
            result = train_point(config, model_dir, strategy, log, bn_batches)
            log(f"[{rec['name']} seed {seed}] top-1 {result['top1']:.4f}" + (
                f" (running BN statistics: {result['running_stats']['top1']:.4f})"
                if bn_batches else ""))
            trained += done is None
    return trained


def collect(points: list[dict], out: str, seeds) -> list[dict]:
    """The points with their results: top1 per seed (None while unfinished), mean and
    population standard deviation over the finished seeds, finished (all seeds done), and
    where BN was re-estimated (train_point's bn_batches) the plain top1 per seed as
    top1_running_stats."""
    rows = []
    for rec in points:
        per_seed, plain = {}, {}
        for seed in seeds:
            result = read_result(run_dir(out, rec["name"], seed))
            per_seed[str(seed)] = None if result is None else result["top1"]
            if result is not None and "running_stats" in result:
                plain[str(seed)] = result["running_stats"]["top1"]
        got = [v for v in per_seed.values() if v is not None]
        extra = {"top1_running_stats": plain} if plain else {}
        rows.append({**rec, "top1": per_seed, **extra,
                     "top1_mean": statistics.fmean(got) if got else None,
                     "top1_std": statistics.pstdev(got) if got else None,
                     "finished": len(got) == len(per_seed)})
    return rows
