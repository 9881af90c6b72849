"""Run directories: where a run's recipe, manifest, metrics, checkpoints and logs live."""

from __future__ import annotations

import time
from pathlib import Path

from hvdtrain.recipe import LoadedRecipe


def default_run_dir(loaded: LoadedRecipe, now: float | None = None) -> Path:
    """``<launch.output_dir>/<recipe>-<YYYYmmdd-HHMMSS>``, absolute (workers may cd elsewhere)."""
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(now))
    return (Path(loaded.recipe.launch.output_dir) / f"{loaded.name}-{stamp}").resolve()
