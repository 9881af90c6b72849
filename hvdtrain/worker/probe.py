"""``python -m hvdtrain.worker.probe`` (recipe JSON on stdin): build a recipe's data and model the
way a worker will, on the CPU, push two samples through the model (logits of shape (N,
num_classes), labels in range, parameters to train), and print what the plan needs as one JSON
line. The launcher runs it
in a child process (it must not import torch itself) before launching a recipe with a
``data.component`` or ``model.component``, so a component that cannot be imported, raises, or
returns the wrong type is refused before horovodrun starts."""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING

import torch

from hvdtrain.errors import UserError
from hvdtrain.recipe import Recipe

if TYPE_CHECKING:
    from hvdtrain.worker.sources import Source


def probe(recipe: Recipe) -> dict:
    from hvdtrain.worker.models import build_model
    from hvdtrain.worker.sources import open_source

    data = recipe.data.model_copy(update={"loader_workers": 0})  # no loader processes here
    source = open_source(data, recipe.train.seed, pin_memory=False)
    model = build_model(recipe.model, source.input_shape, source.num_classes)
    params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    what = f"model.component {recipe.model.component!r}" if recipe.model.component else "the model"
    if params == 0:
        raise UserError(f"{what} has no trainable parameters: there is nothing to train (does "
                        "it register its layers as attributes of the nn.Module?)")
    one_batch(recipe, source, model, what)
    return {"train_samples": source.train_size, "eval_samples": source.eval_size,
            "num_classes": source.num_classes, "input_shape": list(source.input_shape),
            "params": params, "shapes": shapes(model)}


def shapes(model: torch.nn.Module) -> list[list]:
    """[name, shape] of every trainable parameter: what PowerSGD's layout needs for the plan."""
    return [[n, list(p.shape)] for n, p in model.named_parameters() if p.requires_grad]


def one_batch(recipe: Recipe, source: Source, model: torch.nn.Module, what: str) -> None:
    """Push two training samples through the model: labels in range, logits (N, num_classes)."""
    n, classes = min(2, source.train_size), source.num_classes
    x, y = next(iter(source.train_batches(list(range(n)))))
    data = (f"data.component {recipe.data.component!r}" if recipe.data.component
            else f"data set {recipe.data.dataset}")
    if y.dtype.is_floating_point or (len(y) and not 0 <= int(y.min()) <= int(y.max()) < classes):
        raise UserError(f"{data}: labels {y.tolist()} of its first samples are not class indices "
                        f"0..{classes - 1} (num_classes={classes})")
    model.eval()
    try:
        with torch.no_grad():
            out = model(x)
    except Exception as exc:  # noqa: BLE001 - the user's forward failed: name it and why
        raise UserError(f"{what} failed on a batch of {tuple(x.shape)}: {type(exc).__name__}: "
                        f"{exc}") from None
    shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
    if shape != (len(x), classes):
        raise UserError(f"{what} returned {shape} for a batch of {tuple(x.shape)}: it must return "
                        f"logits of shape (batch, num_classes) = ({len(x)}, {classes})")


def main() -> int:
    """``--model CLASSES``: only build the built-in model on the data's shape (as `bench` does:
    no file read) and print its parameter shapes; CLASSES: an image folder's class count or 0."""
    recipe = Recipe.model_validate(json.loads(sys.stdin.read()))
    try:
        if sys.argv[1:2] == ["--model"]:
            from hvdtrain.worker.bench import model_of

            model = model_of(recipe, int(sys.argv[2]) or None)
            print(json.dumps({"shapes": shapes(model)}), flush=True)
            return 0
        print(json.dumps(probe(recipe)), flush=True)
    except UserError as exc:
        print(json.dumps({"error": exc.render()}), flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
