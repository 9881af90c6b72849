"""Reading recipe files: a path or a bare name (./recipes/, then the shipped ones), YAML read
safely (size and alias limits, duplicate keys refused), ``key=value`` overrides on top, and every
validation error at once with its file, line and key. The schema itself: hvdtrain/recipe.py."""

from __future__ import annotations

import copy
import difflib
import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    ValidationError,
)

from hvdtrain.errors import UserError

from hvdtrain.recipe import MAX_PROBLEMS, MAX_RECIPE_BYTES, RECIPES_DIR, Recipe
from hvdtrain.recipe_yaml import SafeLoader, TooLong

# ---------------------------------------------------------------------------------------------
# Loading: file or bare name, overrides, and every error at once.

OVERRIDE = re.compile(r"^([^\W\d]\w*(?:\.[^\W\d]\w*)*)=(.*)$", re.S)


class LoadedRecipe(BaseModel):
    """A validated recipe and where it came from."""

    model_config = ConfigDict(arbitrary_types_allowed=True)
    name: str
    path: Path
    recipe: Recipe
    overrides: list[str] = []


def shipped_recipes() -> list[Path]:
    return sorted(RECIPES_DIR.glob("*.yaml"))


def resolve_recipe_path(source: str) -> Path:
    """A path to a file, or a bare name looked up in ./recipes/ and then the shipped recipes/."""
    path = Path(source)
    if path.is_file():
        return path
    if path.exists():
        kind = "a directory" if path.is_dir() else "not a regular file (a device, FIFO or socket)"
        raise UserError(f"recipe {source} is {kind}: give the path of a YAML file")
    if "/" not in source and not source.endswith((".yaml", ".yml")):
        for folder in (Path.cwd() / "recipes", RECIPES_DIR):
            candidate = folder / f"{source}.yaml"
            if candidate.is_file():
                return candidate
        names = [p.stem for p in shipped_recipes()]
        hint = difflib.get_close_matches(source, names, n=1)
        raise UserError(
            f"no recipe named {source!r}"
            + (f" (did you mean {hint[0]!r}?)" if hint else "")
            + f"; shipped recipes: {', '.join(names) or 'none'} (see `hvdtrain recipes`), "
            "or pass a path to a YAML file")
    raise UserError(f"recipe file not found: {source}")


def parse_override(item: str) -> tuple[list[str], Any]:
    m = OVERRIDE.match(item)
    if not m:
        raise UserError(f"override {item!r} is not KEY=VALUE with a dotted key, "
                        "e.g. optimizer.base_lr=0.1 or train.epochs=3")
    try:
        refuse_aliases(m.group(2), f"override {item!r}", lines=False)
        value = yaml.load(m.group(2), Loader=SafeLoader) if m.group(2).strip() else None
    except TooLong as exc:  # YAML, but a value no setting takes
        shown = item if len(item) <= 60 else item[:40] + f"... ({len(item)} characters)"
        raise UserError(f"override {shown!r}: {exc.problem}") from None
    except yaml.YAMLError:
        value = m.group(2)  # not YAML: take it as the literal string, the schema judges it
    return m.group(1).split("."), value


def apply_overrides(raw: dict, overrides: list[str]) -> dict[tuple[str, ...], str]:
    """Set each override into ``raw`` in place; returns which key path each override set."""
    origin: dict[tuple[str, ...], str] = {}
    problems: list[str] = []
    for item in overrides:
        try:
            keys, value = parse_override(item)
        except UserError as exc:
            problems.append(str(exc))
            continue
        node = raw
        for i, key in enumerate(keys[:-1]):
            child = node.get(key)
            if child is None:
                child = node[key] = {}
            if not isinstance(child, dict):
                problems.append(f"override {item!r}: {'.'.join(keys[:i + 1])} is not a section")
                break
            node = child
        else:
            node[keys[-1]] = value
            origin[tuple(keys)] = item
    if problems:
        raise UserError(f"invalid override{'s' if len(problems) > 1 else ''}:", problems)
    return origin


def refuse_aliases(text: str, where: str, lines: bool = True) -> None:
    """Refuse YAML anchors and aliases (``&a`` / ``*a``) before anything is built: nested aliases
    expand exponentially (a "billion laughs" file of a few hundred bytes needs gigabytes), and a
    recipe never needs them. Parsing events only is fast and small on any input."""
    for event in yaml.parse(text, Loader=SafeLoader):
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None):
            at = f"{where}:{event.start_mark.line + 1}" if lines else where
            raise UserError(f"{at}: YAML anchors and aliases (&name, *name) are not allowed in "
                            "recipes: write the values out")


def _key_lines(root: yaml.Node | None, file: str) -> dict[tuple[str, ...], int]:
    """Map each dotted key path in a YAML mapping document to its 1-based line; a key given twice
    in one mapping is an error (YAML would silently keep the last one)."""
    lines: dict[tuple[str, ...], int] = {}
    duplicates: list[str] = []

    def walk(node: yaml.Node, prefix: tuple[str, ...]) -> None:
        if isinstance(node, yaml.MappingNode):
            seen: dict[str, int] = {}
            for key_node, value_node in node.value:
                key, line = str(key_node.value), key_node.start_mark.line + 1
                if key in seen:
                    duplicates.append(f"{file}:{line}: {'.'.join(prefix + (key,))}: duplicate key "
                                      f"(first at line {seen[key]}); YAML would keep only the "
                                      "last one: remove one of them")
                seen[key] = line
                lines[prefix + (key,)] = line
                walk(value_node, prefix + (key,))
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                lines[prefix + (str(i),)] = item.start_mark.line + 1
                walk(item, prefix + (str(i),))

    if root is not None:
        walk(root, ())
    if duplicates:
        raise UserError(f"recipe {file} has duplicate keys:", duplicates)
    return lines


def _fields_at(loc: tuple[str, ...]) -> list[str]:
    """Field names of the model at ``loc`` (for "did you mean")."""
    model: Any = Recipe
    for part in loc:
        field = getattr(model, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        candidates = [ann, *getattr(ann, "__args__", ())]
        model = next((c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)), None)
        if model is None:
            return []
    return list(getattr(model, "model_fields", {}))


def _describe(err: dict) -> str:
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "extra_forbidden":
        loc = tuple(str(p) for p in err["loc"])
        hint = difflib.get_close_matches(loc[-1], _fields_at(loc[:-1]), n=1, cutoff=0.6)
        valid = ", ".join(_fields_at(loc[:-1]))
        return "unknown key" + (f" (did you mean {hint[0]!r}?)" if hint else f"; valid keys: {valid}")
    if err["type"] == "missing":
        return "required key is missing"
    value = err.get("input")
    if isinstance(value, (str, int, float, bool)) or value is None:
        msg += f", got {value!r}"
    return msg


def format_validation_errors(exc: ValidationError, file: str, lines: dict[tuple[str, ...], int],
                             origin: dict[tuple[str, ...], str]) -> list[str]:
    out = []
    errors = exc.errors()
    for err in errors[:MAX_PROBLEMS]:
        loc, text = tuple(str(p) for p in err["loc"]), _describe(err)
        named = None if loc else re.match(r"^(\w+(?:\.\w+)+): (.*)$", text, re.S)
        if named:  # a recipe-wide check names its key first ("horovod.op: ..."): point there
            loc, text = tuple(named[1].split(".")), named[2]
        dotted = ".".join(loc) or "(top level)"
        source = next((f"override {item!r}" for keys, item in origin.items()
                       if loc[:len(keys)] == keys), None)
        if source is None:  # a section-level check (two keys at once): the override it names
            source = next((f"override {item!r}" for keys, item in origin.items()
                           if keys[:len(loc)] == loc and (keys[-1] in err["msg"] or
                                                          err["type"] == "extra_forbidden")), None)
        if source is None:
            line = next((lines[loc[:i]] for i in range(len(loc), 0, -1) if loc[:i] in lines), None)
            source = f"{file}:{line}" if line else file
        out.append(f"{source}: {dotted}: {text}")
    if len(errors) > MAX_PROBLEMS:
        out.append(f"... and {len(errors) - MAX_PROBLEMS} more problems")
    return out


def _read(path: Path) -> tuple[Any, dict[tuple[str, ...], int]]:
    """The parsed YAML of a recipe file and the line of every key; raises ``UserError``."""
    try:
        if path.stat().st_size > MAX_RECIPE_BYTES:
            raise UserError(f"recipe {path} is larger than {MAX_RECIPE_BYTES >> 10} KiB: a recipe "
                            "is a short YAML file (see `hvdtrain show digits-cnn`)")
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read recipe {path}: {exc}") from None
    try:
        refuse_aliases(text, str(path))
        lines = _key_lines(yaml.compose(text, Loader=SafeLoader), str(path))
        raw = yaml.load(text, Loader=SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        kind = "" if isinstance(exc, TooLong) else "YAML syntax error: "
        raise UserError(f"{where}: {kind}{problem}") from None
    if raw is None:
        raise UserError(f"recipe {path} is empty: start from a shipped one, e.g. "
                        "`hvdtrain show digits-cnn > my-recipe.yaml`")
    if not isinstance(raw, dict):
        raise UserError(f"{path}: a recipe is a YAML mapping of sections (data:, model:, ...), "
                        f"got a {type(raw).__name__}")
    return raw, lines


def load_recipe(source: str, overrides: list[str] | None = None) -> LoadedRecipe:
    """Read, override and validate a recipe; raise ``UserError`` listing every problem."""
    path = resolve_recipe_path(source)
    raw, lines = _read(path)
    return _validated(raw, list(overrides or []), path, lines, path.stem)


def load_recorded(raw: dict, overrides: list[str], *, source: Path, name: str) -> LoadedRecipe:
    """A recipe recorded as data (a run's ``recipe_resolved``), with ``overrides`` on top."""
    return _validated(copy.deepcopy(raw), list(overrides), source, {}, name)


def _validated(raw: dict, overrides: list[str], path: Path, lines: dict[tuple[str, ...], int],
               name: str) -> LoadedRecipe:
    origin = apply_overrides(raw, overrides)
    try:
        recipe = Recipe.model_validate(raw)
    except ValidationError as exc:
        problems, count = format_validation_errors(exc, str(path), lines, origin), exc.error_count()
        raise UserError(f"recipe {path} is invalid ({count} problem{'s' if count > 1 else ''}):",
                        problems) from None
    return LoadedRecipe(name=name, path=path, recipe=recipe, overrides=overrides)
