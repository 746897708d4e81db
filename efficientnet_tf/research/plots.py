"""PNGs of a grid search, of scaling curves and of class activation maps (matplotlib, Agg, as
train/evaluate.plot_history draws the training curves)."""
from __future__ import annotations

import io

from efficientnet_tf import fileio


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str) -> str:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90)
    _pyplot().close(fig)
    return fileio.write_file(path, buf.getvalue())


def plot_grid_search(results: dict, path: str) -> str:
    """Top-1 (mean, error bars: std over seeds) of each finished candidate against its measured
    MACs relative to the base; the best one marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    done = [c for c in results["candidates"] if c["top1_mean"] is not None]
    ax.errorbar([c["macs_ratio"] for c in done], [c["top1_mean"] for c in done],
                yerr=[c["top1_std"] for c in done], fmt="o", capsize=3, label="candidate")
    for c in done:
        ax.annotate(f"{c['alpha']:g},{c['beta']:g},{c['gamma']:g}", (c["macs_ratio"], c["top1_mean"]),
                    fontsize=7, xytext=(3, 3), textcoords="offset points")
    best = results.get("best")
    if best:
        ax.plot([best["macs_ratio"]], [best["top1_mean"]], "r*", markersize=14, label="best")
    lo, hi = results["band"]
    ax.axvspan(lo, hi, color="grey", alpha=0.1, label="MACs band")
    ax.set_xlabel("measured MACs / base MACs")
    ax.set_ylabel("top-1 (mean over seeds)")
    ax.set_title("Step 1 grid search: alpha (depth), beta (width), gamma (resolution)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_curves(curves: dict, path: str) -> str:
    """Top-1 against MACs, one line per kind of scaling (width, depth, resolution, compound),
    error bars: std over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for kind in curves["kinds"]:
        pts = sorted((p for p in curves["points"] if p["kind"] == kind and p["top1_mean"] is not None),
                     key=lambda p: p["macs"])
        if not pts:
            continue
        ax.errorbar([p["macs"] / 1e6 for p in pts], [p["top1_mean"] for p in pts],
                    yerr=[p["top1_std"] for p in pts], fmt="o-", capsize=3, label=kind)
    ax.set_xscale("log")
    ax.set_xlabel("measured MACs (millions)")
    ax.set_ylabel("top-1 (mean over seeds)")
    ax.set_title("Scaling one dimension vs compound scaling")
    ax.grid(alpha=0.3, which="both")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)


def plot_cams(images, columns: list[tuple[str, object, list[str]]], path: str) -> str:
    """images [n, H, W, 3] in [0, 255]; columns: (model name, maps [n, h, w] in [0, 1], one
    caption per image). Row i: the image, then each model's map over it."""
    import numpy as np
    import tensorflow as tf

    plt = _pyplot()
    n = len(images)
    fig, axes = plt.subplots(n, len(columns) + 1, figsize=(2.4 * (len(columns) + 1), 2.4 * n),
                             squeeze=False)
    for i in range(n):
        img = np.asarray(images[i], np.float32) / 255.0
        axes[i][0].imshow(img)
        axes[i][0].set_title("input", fontsize=8)
        for j, (name, maps, captions) in enumerate(columns, start=1):
            m = tf.image.resize(np.asarray(maps[i])[..., None], img.shape[:2]).numpy()[..., 0]
            axes[i][j].imshow(img)
            axes[i][j].imshow(m, cmap="jet", alpha=0.5, vmin=0.0, vmax=1.0)
            axes[i][j].set_title(f"{name}\n{captions[i]}", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, path)
