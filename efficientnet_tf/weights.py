"""weights=None | "imagenet" | path: argument checks and loading."""
from __future__ import annotations

import os


def check_weights_argument(weights, include_top: bool, classes: int) -> None:
    if weights is None:
        return
    if weights == "imagenet":
        if include_top and classes != 1000:
            raise ValueError(
                f"weights='imagenet' with include_top=True needs classes=1000 (got {classes}). "
                "For another number of classes use include_top=False and add your own head.")
        return
    if not isinstance(weights, (str, os.PathLike)) or not os.path.exists(weights):
        raise ValueError(
            f"weights must be None, 'imagenet' or the path to a weights file; {weights!r} "
            "is none of these (file not found).")


def load_weights(model, weights, variant=None, include_top=True) -> None:
    raise NotImplementedError("weights loading lands with the weights module")
