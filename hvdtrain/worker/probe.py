"""``python -m hvdtrain.worker.probe`` (recipe JSON on stdin): build a recipe's data and model the
way a worker will, on the CPU, and print what the plan needs as one JSON line. The launcher runs it
in a child process (it must not import torch itself) before launching a recipe with a
``data.component`` or ``model.component``, so a component that cannot be imported, raises, or
returns the wrong type is refused before horovodrun starts."""

from __future__ import annotations

import json
import sys

from hvdtrain.errors import UserError
from hvdtrain.recipe import Recipe


def probe(recipe: Recipe) -> dict:
    from hvdtrain.worker.models import build_model
    from hvdtrain.worker.sources import open_source

    data = recipe.data.model_copy(update={"loader_workers": 0})  # no loader processes here
    source = open_source(data, recipe.train.seed, pin_memory=False)
    model = build_model(recipe.model, source.input_shape, source.num_classes)
    return {"train_samples": source.train_size, "eval_samples": source.eval_size,
            "num_classes": source.num_classes, "input_shape": list(source.input_shape),
            "params": sum(p.numel() for p in model.parameters())}


def main() -> int:
    recipe = Recipe.model_validate(json.loads(sys.stdin.read()))
    try:
        print(json.dumps(probe(recipe)), flush=True)
    except UserError as exc:
        print(json.dumps({"error": exc.render()}), flush=True)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
