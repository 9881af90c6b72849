"""The model card: what every checkpoint carries so that `eval`, `predict` and `export` need
nothing else (no recipe, no run directory): the model to build, the input it takes, how pixels are
normalised and what each output means. The worker writes it (worker/loop.py); the inference
process (worker/infer.py) and the export sidecar read it. Standard library only.
"""

from __future__ import annotations

from typing import Any, TypedDict

CARD_FORMAT = 1  # bumped when a field changes meaning; readers refuse a newer one


class ModelCard(TypedDict):
    format: int  # CARD_FORMAT
    model: dict[str, Any]  # the recipe's model section: arch/width/depth/dropout or component+kwargs
    data: dict[str, Any]  # the recipe's data section (dataset, data_dir, image_size, mean, std...)
    seed: int  # train.seed: the synthetic set and the digits split are drawn from it
    input_shape: list[int]  # (C, H, W) the model was built for
    num_classes: int
    classes: list[str] | None  # image folders: the class name of each output
    # What is subtracted from and divided into each channel before the model sees it: for image
    # folders in 0..1 pixel units (data.mean/std), for the built-in sets in the file's own pixel
    # units (the training split's statistics: digits 0..16, MNIST and CIFAR-10 0..255).
    mean: list[float] | None  # None: a data component does its own preprocessing
    std: list[float] | None
    epoch: int  # complete epochs behind these weights
    eval_acc: float | None  # held-out accuracy of these weights (None: not evaluated this epoch)


def card_problems(card: object) -> list[str]:
    """What makes ``card`` unusable, [] when it can be used (a checkpoint from before cards has
    none: the caller says so)."""
    if not isinstance(card, dict):
        return ["it has no model card (an hvdtrain from before model cards wrote it: resume "
                "the run for one more epoch to write one)"]
    fmt = card.get("format")
    if not isinstance(fmt, int) or fmt > CARD_FORMAT:
        return [f"its model card has format {fmt!r}; this hvdtrain reads up to {CARD_FORMAT}: "
                "install the hvdtrain that wrote it"]
    return [f"its model card lacks {k!r}" for k in ModelCard.__annotations__ if k not in card]
