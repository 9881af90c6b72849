"""A trained model from its checkpoint alone: the model card says what to build and how to feed
it; a file that is not a usable checkpoint is named with the reason."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from hvdtrain.card import ModelCard, card_problems
from hvdtrain.errors import UserError
from hvdtrain.recipe import ModelConfig
from hvdtrain.worker.checkpoint import unusable
from hvdtrain.worker.models import build_model

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck"]


def read(path: Path) -> tuple[dict[str, Any], ModelCard]:
    """The checkpoint's contents and card; UserError naming the file when unusable."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - truncated zip, bad pickle, I/O: all "unusable"
        raise UserError(f"cannot use checkpoint {path}: {unusable(exc)}") from None
    if not isinstance(state, dict) or not isinstance(state.get("model"), dict):
        raise UserError(f"cannot use checkpoint {path}: it holds no model weights (not a "
                        "checkpoint hvdtrain wrote)")
    problems = card_problems(state.get("card"))
    if problems:
        raise UserError(f"cannot use checkpoint {path}: {problems[0]}")
    return state, state["card"]


def first_usable(paths: list[Path]) -> tuple[Path, dict[str, Any], ModelCard, list[str]]:
    """The first of ``paths`` (newest first) that reads, like --resume; the reasons of the
    others before it."""
    skipped: list[str] = []
    for path in paths:
        try:
            return (path, *read(path), skipped)
        except UserError as exc:
            if len(paths) == 1:
                raise
            skipped.append(str(exc))
    raise UserError(f"no usable checkpoint in {paths[0].parent}:", skipped)


def build(card: ModelCard, state: dict[str, Any], path: Path) -> torch.nn.Module:
    """The card's model with the checkpoint's weights, in eval mode."""
    cfg = ModelConfig.model_validate(card["model"])
    model = build_model(cfg, tuple(card["input_shape"]), card["num_classes"])
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as exc:
        first = str(exc).splitlines()[0][:200]
        raise UserError(f"cannot use checkpoint {path}: its weights do not fit the model its card "
                        f"describes ({first}): the file was edited or mixes two runs") from None
    return model.eval()


def class_names(card: ModelCard) -> list[str]:
    """What each output means: the image folder's classes, CIFAR-10's names, else the index."""
    if card["classes"]:
        return list(card["classes"])
    if card["data"].get("dataset") == "cifar10":
        return list(CIFAR10_CLASSES)
    return [str(i) for i in range(card["num_classes"])]
