"""Where a recipe's component modules may come from, one rule for the launcher (before launch)
and the workers (before import): the directory hvdtrain starts in and the ``PYTHONPATH``
entries, i.e. the user's own project. A shared recipe naming ``subprocess:run`` or an installed
package would otherwise run code its author chose on the reader's machine during `plan`. An
installed package is allowed only when the person running hvdtrain names it in the environment
(``HVDTRAIN_COMPONENT_PACKAGES=timm,mypkg``): a recipe cannot grant itself that.

Standard library only; finding a module here runs none of its code."""

from __future__ import annotations

import os
import sys
from importlib.machinery import PathFinder
from pathlib import Path

ALLOW_ENV = "HVDTRAIN_COMPONENT_PACKAGES"


def project_path() -> list[str]:
    """The start directory, then the PYTHONPATH entries: where components are looked for."""
    return [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]


def allowed_packages() -> set[str]:
    return {p.strip() for p in os.environ.get(ALLOW_ENV, "").split(",") if p.strip()}


def locate(name: str, path: list[str]) -> Path | None:
    """The file that would be imported for module ``name`` from ``path``, or None."""
    parts, found = name.split("."), None
    for i in range(len(parts)):
        spec = PathFinder.find_spec(".".join(parts[:i + 1]), path)
        if spec is None:
            return None
        found = spec.origin
        path = list(spec.submodule_search_locations or [])
    return Path(found) if found and found not in ("built-in", "frozen") else None


def component_file(key: str, spec: str) -> Path:
    """The file of ``spec``'s module (``"package.module:factory"``), or ``ValueError`` saying
    why it may not be used."""
    module = spec.partition(":")[0]
    top = module.split(".")[0]
    here = locate(module, project_path())
    if here is not None:
        return here
    if top in allowed_packages():
        elsewhere = locate(module, sys.path)
        if elsewhere is not None:
            return elsewhere
    installed = locate(module, sys.path) or (module if module in sys.builtin_module_names
                                             else None)
    if installed is not None:
        raise ValueError(
            f"{key} {spec!r}: module {module} is not part of your project ({os.getcwd()} or "
            f"PYTHONPATH): it is installed ({installed}). A recipe's components run only your "
            f"own code; to use an installed package, name it when you run hvdtrain: "
            f"{ALLOW_ENV}={top}")
    raise ValueError(f"{key} {spec!r}: module {module} not found from {os.getcwd()} or "
                     "PYTHONPATH: run hvdtrain from the directory that holds it (workers start "
                     "in the same directory), or add its folder to PYTHONPATH")
