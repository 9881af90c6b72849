"""Your own model and data, named in the recipe as ``"package.module:factory"`` (the convention of
torchtune's ``_component_``, Hydra's ``_target_`` and Lightning's ``class_path``):

- ``model.component``: ``factory(input_shape=(C, H, W), num_classes=N, **model.kwargs)`` returns an
  ``nn.Module``;
- ``data.component``: ``factory(**data.kwargs)`` returns ``(train_dataset, val_dataset,
  num_classes)``; each dataset item is ``(image tensor, class index)``.

Modules come from the directory hvdtrain was started in (horovodrun starts every worker there)
and from ``PYTHONPATH`` only, never the standard library or installed packages unless the user
allows one (hvdtrain/component_paths.py). Anything that goes wrong stops the run with the
component named and the reason.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hvdtrain.component_paths import component_file
from hvdtrain.errors import UserError


def resolve(spec: str, key: str) -> Callable[..., Any]:
    """The callable that ``spec`` ("package.module:factory") names."""
    module_name, _, attr = spec.partition(":")
    try:
        expected = component_file(key, spec)  # the user's own code only (component_paths.py)
    except ValueError as exc:
        raise UserError(str(exc)) from None
    try:
        module = importlib.import_module(module_name)
    except Exception as exc:  # noqa: BLE001 - ImportError or an error inside the module
        raise UserError(f"{key} {spec!r}: cannot import {module_name}: {type(exc).__name__}: "
                        f"{exc} (modules are found from the directory hvdtrain was started in "
                        "and PYTHONPATH)") from None
    loaded = getattr(module, "__file__", None)
    if loaded is None or Path(loaded).resolve() != expected.resolve():
        raise UserError(f"{key} {spec!r}: {expected} is shadowed by the module {module_name} "
                        f"already imported from {loaded or 'Python itself'}: rename your module")
    factory = getattr(module, attr, None)
    if not callable(factory):
        raise UserError(f"{key} {spec!r}: {module_name} has no callable {attr!r}")
    return factory


def _call(spec: str, key: str, **kwargs: Any) -> Any:
    try:
        return resolve(spec, key)(**kwargs)
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's factory failed: name it and why
        raise UserError(f"{key} {spec!r} raised {type(exc).__name__}: {exc}") from None


def build_component_model(spec: str, kwargs: dict[str, Any], input_shape: tuple[int, ...],
                          num_classes: int) -> torch.nn.Module:
    model = _call(spec, "model.component", input_shape=tuple(input_shape),
                  num_classes=num_classes, **kwargs)
    if not isinstance(model, torch.nn.Module):
        raise UserError(f"model.component {spec!r} returned {type(model).__name__}, not a "
                        "torch.nn.Module")
    return model


def data_component(spec: str, kwargs: dict[str, Any]) -> tuple[Any, Any, int]:
    out = _call(spec, "data.component", **kwargs)
    if not (isinstance(out, tuple) and len(out) == 3):
        raise UserError(f"data.component {spec!r} returned {type(out).__name__}: it must return "
                        "(train_dataset, val_dataset, num_classes)")
    train, val, classes = out
    for name, ds in (("train_dataset", train), ("val_dataset", val)):
        if not (hasattr(ds, "__getitem__") and hasattr(ds, "__len__")) or len(ds) == 0:
            raise UserError(f"data.component {spec!r}: its {name} is not a non-empty dataset "
                            "(an object with __len__ and __getitem__)")
    if isinstance(classes, bool) or not isinstance(classes, int) or classes < 1:
        raise UserError(f"data.component {spec!r}: num_classes must be a positive int, got "
                        f"{classes!r}")
    return train, val, classes
