"""`--resume RUN_DIR`, judged before anything starts: the folder is a run hvdtrain started and no
other launch holds it; the recipe is the run's own (manifest.json's ``recipe_resolved``) with the
command line's overrides on top, every change listed and those its checkpoints cannot take
refused; there is a checkpoint to continue from, or provably nothing was trained yet.

Reads files only (no torch): the launcher knows all of this before horovodrun starts."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from pydantic import ValidationError

from hvdtrain.errors import UserError
from hvdtrain.imagefolder import scan
from hvdtrain.launcher import checks
from hvdtrain.manifest import Manifest
from hvdtrain.recipe import Recipe
from hvdtrain.recipe_files import LoadedRecipe, load_recipe, load_recorded, resolve_recipe_path
from hvdtrain.rundir import RunDir, is_complete_checkpoint, odd_checkpoint_names

MAX_NOTED = 6  # keys listed in one note before "... and N more"


@dataclass
class Resume:
    """What continuing a run will use: its folder, the recipe, and what the plan must say."""

    folder: RunDir
    loaded: LoadedRecipe
    changes: list[str]  # "train.epochs: 12 -> 14", against what the checkpoints were trained with
    epochs_done: int
    notes: list[str] = field(default_factory=list)


def resume_run(given: str, recipe: str | None, overrides: list[str]) -> Resume:
    """The run in ``given`` with ``overrides`` on top; ``recipe`` (optional) must be the run's."""
    folder = run_folder(given)
    manifest = folder.read_manifest()
    saved = recorded_recipe(folder, manifest, given)
    name = manifest.get("recipe") if manifest and isinstance(manifest.get("recipe"), str) else None
    name = name or folder.path.name
    start, notes = starting_point(folder, recipe, overrides, saved, name, given)
    loaded = load_recorded(start, overrides, source=folder.manifest_file, name=name)
    conflicts = checks.resume_conflicts(saved, loaded.recipe)
    if loaded.recipe.data.dataset == "imagefolder":
        conflicts += checks.class_changes((manifest or {}).get("classes"),
                                          scan(loaded.recipe.data.data_dir or ".").classes,
                                          str(loaded.recipe.data.data_dir))
    if conflicts:
        raise UserError(f"cannot resume {given}: the recipe changes what its checkpoints depend "
                        "on; use the original values or start a new run:", conflicts)
    epochs_done, found = checkpoint_state(folder, given, name)
    return Resume(folder, loaded, checks.recipe_changes(saved, loaded.recipe), epochs_done,
                  notes + found)


def run_folder(given: str) -> RunDir:
    """The run directory ``given`` names, refused when it cannot be one or is in use."""
    if not given.strip():
        raise UserError("--resume is empty: give the run directory to continue (`hvdtrain runs` "
                        "lists them)")
    path = Path(given).expanduser().resolve()
    if not path.exists():
        raise UserError(f"cannot resume {given}: no such directory (`hvdtrain runs` lists the run "
                        "directories)")
    if not path.is_dir():
        raise UserError(f"cannot resume {given}: it is a file, not a run directory")
    folder = RunDir(path)
    if folder.in_use():
        raise UserError(checks.in_use(given, (folder.read_manifest() or {}).get("launcher_pid")))
    return folder


def recorded_recipe(folder: RunDir, manifest: Manifest | None, given: str) -> Recipe:
    """What the checkpoints were trained with: manifest.json's ``recipe_resolved`` (recipe.yaml
    when the manifest is from a version whose schema this one cannot read)."""
    if manifest is None:
        hint = (f"; to train with its recipe, start a new run: hvdtrain run "
                f"{folder.recipe_file} --run-dir NEW_DIR" if folder.recipe_file.is_file() else "")
        raise UserError(f"cannot resume {given}: no manifest.json there, so it is not a run "
                        f"hvdtrain started (a run writes one when it launches); nothing in it was "
                        f"changed{hint}")
    recorded = manifest.get("recipe_resolved")
    if not isinstance(recorded, dict):
        raise UserError(f"cannot resume {given}: its manifest.json records no recipe_resolved (it "
                        "was not written by an hvdtrain run): start a new run")
    try:
        return Recipe.model_validate(recorded)
    except ValidationError:
        if not folder.recipe_file.is_file():
            raise UserError(f"cannot resume {given}: manifest.json records a recipe this version "
                            "of hvdtrain cannot read, and recipe.yaml is missing") from None
        return load_recipe(str(folder.recipe_file)).recipe  # an edited one: file:line errors


def starting_point(folder: RunDir, recipe: str | None, overrides: list[str], saved: Recipe,
                   name: str, given: str) -> tuple[dict, list[str]]:
    """The recipe the overrides go on: the run's own; its recipe.yaml with the user's edits when
    RECIPE is that file. Another file of the same name only says where it differs."""
    if recipe is None:
        return saved.model_dump(mode="json"), []
    path = resolve_recipe_path(recipe)
    if path.resolve() == folder.recipe_file.resolve():
        return load_recipe(str(path)).recipe.model_dump(mode="json"), []
    other = load_recipe(recipe, overrides)
    if other.name != name:
        raise UserError(f"cannot resume {given}: it is a run of recipe {name!r}, not "
                        f"{other.name!r}; continue it with its own recipe: hvdtrain run --resume "
                        f"{given} [KEY=VALUE ...]")
    final = load_recorded(saved.model_dump(mode="json"), overrides, source=folder.manifest_file,
                          name=name).recipe
    kept = checks.recipe_changes(other.recipe, final)
    if not kept:
        return saved.model_dump(mode="json"), []
    listed = kept[:MAX_NOTED] + ([f"... and {len(kept) - MAX_NOTED} more"]
                                 if len(kept) > MAX_NOTED else [])
    return saved.model_dump(mode="json"), [
        f"the run keeps its own settings where {path} differs ({path.name} -> the run): "
        f"{'; '.join(listed)}; give KEY=VALUE overrides to change them"]


def checkpoint_state(folder: RunDir, given: str, name: str) -> tuple[int, list[str]]:
    """(complete epochs to continue after, notes); refuses a run whose checkpoints are gone or
    all unusable, which would otherwise train again from epoch 1 over its own records."""
    odd = odd_checkpoint_names(folder.checkpoints)
    notes = [f"skipped {p}: named like a checkpoint but not a regular file" for p in odd]
    found = folder.list_checkpoints()
    whole = [(e, p) for e, p in found if is_complete_checkpoint(p)]
    if whole:
        return whole[-1][0], notes
    if found or odd:
        raise UserError(f"cannot resume {given}: none of its checkpoints can be loaded; restore "
                        "one from a copy, or start a new run:",
                        [f"{p}: empty, truncated or not written by hvdtrain" for _, p in found]
                        + [f"{p}: not a regular file" for p in odd])
    records, _ = folder.read_metrics()
    epochs = sum(1 for r in records if r.get("event") == "epoch")
    if epochs:
        where = "is empty" if folder.checkpoints.is_dir() else "is missing"
        raise UserError(f"cannot resume {given}: {folder.checkpoints} {where}, but metrics.jsonl "
                        f"records {epochs} completed epoch(s): resuming would train from epoch 1 "
                        "over them. Put the checkpoints back, or start a new run: hvdtrain run "
                        f"{name} --run-dir NEW_DIR")
    return 0, notes + ["no checkpoint yet (the run stopped before its first one): training "
                       "starts at epoch 1 in the same run directory"]
