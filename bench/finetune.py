"""Transfer on real data, offline: does fine-tuning from pretrained weights beat training from
scratch on a small labelled set? Prints JSON (and a table) of test top-1 for three runs per seed.

    .venv/bin/python bench/finetune.py [--out bench_out/finetune] [--seeds 1 2]

1. Pretrain the fashion_mnist recipe (our B0 at width/depth 0.5, 32 px) on the Fashion-MNIST
   training images of classes 0-4 (30,000), `--pretrain_epochs` epochs.
2. On classes 5-9 (sandal, shirt, sneaker, bag, ankle boot) with only `--per_class` labelled
   training images per class (250 in all), train for the same number of steps:
   - transfer: --init_weights=<the pretrain run> (EMA weights), a new head, everything trains;
   - frozen: the same source with freeze=backbone (a linear head on frozen features), with
     Adam at 1e-2 as the Keras guide trains its head (the pooled features are small, ~0.05,
     so the recipe's SGD rate barely moves a linear head in 300 steps);
   - scratch: the same model from random weights, given 1.5x the steps (at least the transfer
     run's wall time, which includes loading the source; all times are reported).
3. Test top-1 (EMA weights) on the 5,000 test images of classes 5-9, per seed.
The data come from Debian's dataset-fashion-mnist ($FASHION_MNIST_DIR overrides the folder).
"""
import argparse
import json
import os
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
FMNIST = os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")


def _records(out, classes, per_class, seed):
    """TFRecords of the given classes (relabelled 0..k-1): train (all, or per_class of each,
    seeded) and validation = every test image of those classes."""
    import numpy as np

    from efficientnet_tf.data import convert

    if os.path.exists(os.path.join(out, "dataset_info.json")):
        return out
    items = {}
    for split, prefix in (("train", "train"), ("validation", "t10k")):
        images = convert.read_idx(convert._find_idx(FMNIST, prefix, "images-idx3"))
        labels = convert.read_idx(convert._find_idx(FMNIST, prefix, "labels-idx1"))
        keep = []
        for k, c in enumerate(classes):
            idx = np.flatnonzero(labels == c)
            if split == "train" and per_class:
                idx = np.random.default_rng(seed + c).choice(idx, per_class, replace=False)
            keep += [(int(i), k) for i in idx]
        items[split] = [convert.Item(f"{prefix}-{i:05d}.png", k, images[i]) for i, k in keep]
    names = [f"class{c}" for c in classes]
    convert._finish(out, names, names, items, {"train": 4, "validation": 2}, seed, None, 95, 2,
                    False, False)
    return out


def _train(model_dir, data_dir, overrides, log_every=None):
    from efficientnet_tf import config as cfglib
    from efficientnet_tf.train.loop import Trainer
    from efficientnet_tf.train.main import prepare_finetuning

    config = cfglib.apply_overrides(cfglib.load_config("fashion_mnist"),
                                    [f"data.data_dir={data_dir}", "data.num_classes=5",
                                     *overrides])
    config = prepare_finetuning(config, model_dir, log=lambda *_: None)
    t0 = time.perf_counter()
    log = (lambda m: print("   ", m, flush=True)) if log_every else (lambda *_: None)
    trainer = Trainer(config, model_dir, log=log)
    trainer.train()
    seconds = time.perf_counter() - t0
    cfglib.save_config(config, model_dir)
    return trainer.evaluate(), seconds


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", default="bench_out/finetune")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2])
    p.add_argument("--per_class", type=int, default=50)
    p.add_argument("--pretrain_epochs", type=float, default=3)
    p.add_argument("--steps", type=int, default=300, help="fine-tuning steps (batch 25)")
    p.add_argument("--scratch_steps", type=int, default=None, help="default: 1.5 x --steps")
    args = p.parse_args()
    t_all = time.perf_counter()
    pre_data = _records(os.path.join(args.out, "data_0_4"), range(5), None, 0)
    pre_dir = os.path.join(args.out, "pretrain")
    print(f"Pretraining on classes 0-4 ({args.pretrain_epochs} epochs) ...", flush=True)
    pre, pre_s = _train(pre_dir, pre_data, [f"epochs={args.pretrain_epochs}"], log_every=True)
    print(f"  pretrain top-1 {pre['top1']:.4f} on classes 0-4 ({pre_s / 60:.1f} min)", flush=True)
    common = ["train_batch_size=25", "eval_batch_size=1000", "steps_per_execution=25",
              "optimizer.warmup_epochs=1", "optimizer.ema_decay=0.99"]
    steps, scratch_steps = f"train_steps={args.steps}", args.scratch_steps or 3 * args.steps // 2
    runs = {
        "transfer": [steps, f"finetune.init_weights={pre_dir}", "finetune.new_head=true"],
        "frozen": [steps, f"finetune.init_weights={pre_dir}", "finetune.new_head=true",
                   "finetune.freeze=backbone", "optimizer.name=adam", "optimizer.lr=0.1"],
        "scratch": [f"train_steps={scratch_steps}"],
    }
    results = []
    for seed in args.seeds:
        data = _records(os.path.join(args.out, f"data_5_9_seed{seed}"), range(5, 10),
                        args.per_class, seed)
        for name, extra in runs.items():
            r, s = _train(os.path.join(args.out, f"{name}_seed{seed}"), data,
                          common + extra + [f"seed={seed}"])
            results.append({"run": name, "seed": seed, "top1": r["top1"], "top5": r["top5"],
                            "examples": r["examples"], "train_seconds": round(s, 1)})
            print(f"  seed {seed} {name:8s} top-1 {r['top1']:.4f} ({s:.0f} s)", flush=True)
    summary = {}
    for name in runs:
        vals = [r["top1"] for r in results if r["run"] == name]
        summary[name] = {"mean_top1": sum(vals) / len(vals), "top1": vals}
    out = {"pretrain_top1_classes_0_4": pre["top1"], "pretrain_minutes": round(pre_s / 60, 1),
           "per_class": args.per_class, "steps": args.steps, "scratch_steps": scratch_steps,
           "batch": 25, "seeds": args.seeds,
           "runs": results, "summary": summary,
           "transfer_minus_scratch_points": round(
               100 * (summary["transfer"]["mean_top1"] - summary["scratch"]["mean_top1"]), 2),
           "total_minutes": round((time.perf_counter() - t_all) / 60, 1), "cpus": os.cpu_count()}
    print(json.dumps(out, indent=2))
    with open(os.path.join(args.out, "finetune_result.json"), "w") as f:
        json.dump(out, f, indent=2)


if __name__ == "__main__":
    sys.exit(main())
