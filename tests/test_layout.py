"""The layout is a rule, not a habit: folders say which process runs a module, read off the source.

- hvdtrain/launcher/ runs in the `hvdtrain` process: never torch, horovod or the worker side;
- hvdtrain/worker/ runs under horovodrun: never the launcher or set-up side, never draws;
- hvdtrain/setup/ builds Horovod and checks the machine: never the launcher or worker side;
- hvdtrain/*.py (the shared floor) imports none of the three folders, and never torch or horovod;
- no import cycles, not even type-only ones; worker and launcher functions fit on a screen (50
  lines), modules in 400 lines; CLI commands only forward.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT

PKG = ROOT / "hvdtrain"
HEAVY = ("torch", "horovod", "numpy", "sklearn")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(p): p for p in sorted(PKG.rglob("*.py"))}


def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                lines.update(range(inner.lineno, (inner.end_lineno or inner.lineno) + 1))
    return lines


def imports_of(path: Path, type_only: bool = False) -> set[str]:
    """Every module ``path`` imports at run time (module level or inside functions), and with
    ``type_only`` also those under ``if TYPE_CHECKING:``."""
    tree = ast.parse(path.read_text())
    skip = set() if type_only else _type_checking_lines(tree)
    found: set[str] = set()
    for node in ast.walk(tree):
        if getattr(node, "lineno", None) in skip:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if f"{node.module}.{a.name}" in MODULES)
    return found


def side(name: str) -> str:
    parts = name.split(".")
    if len(parts) > 2 and parts[1] in ("launcher", "worker", "setup"):
        return parts[1]
    if len(parts) == 2 and parts[1] in ("launcher", "worker", "setup"):
        return parts[1]
    return "cli" if name in ("hvdtrain.cli", "hvdtrain.__main__") else "shared"


FORBIDDEN = {
    "launcher": ("torch", "horovod", "sklearn", "hvdtrain.worker"),  # numpy: report's matplotlib
    "worker": ("hvdtrain.launcher", "hvdtrain.setup", "hvdtrain.cli", "rich", "typer", "mlflow"),
    "setup": ("hvdtrain.launcher", "hvdtrain.worker", "hvdtrain.cli"),
    "shared": ("torch", "horovod", "numpy", "sklearn", "hvdtrain.launcher", "hvdtrain.worker",
               "hvdtrain.setup", "hvdtrain.cli", "rich", "typer"),
    "cli": ("torch", "horovod", "hvdtrain.worker"),
}


def test_every_module_belongs_to_a_side() -> None:
    sides = {side(n) for n in MODULES}
    assert sides == {"launcher", "worker", "setup", "shared", "cli"}
    assert {"hvdtrain.launcher.plan", "hvdtrain.worker.loop", "hvdtrain.setup.doctor",
            "hvdtrain.rundir", "hvdtrain.events"} <= set(MODULES)


@pytest.mark.parametrize("name", sorted(MODULES))
def test_folder_rule(name: str) -> None:
    bad = sorted(i for i in imports_of(MODULES[name])
                 for f in FORBIDDEN[side(name)] if i == f or i.startswith(f + "."))
    assert bad == [], f"{name} ({side(name)} side) imports {bad}"


def test_the_folder_rule_catches_a_violation(tmp_path: Path) -> None:
    """The checker itself can fail: a launcher module importing torch inside a function."""
    probe = tmp_path / "probe.py"
    probe.write_text("def f():\n    import torch.nn\n    from hvdtrain.worker import loop\n")
    assert {"torch.nn", "hvdtrain.worker", "hvdtrain.worker.loop"} <= imports_of(probe)


def import_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports) as a path, or None."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str] | None:
        if node in path:
            return path[path.index(node):] + [node]
        if node in done:
            return None
        for nxt in sorted(graph.get(node, ())):
            if (found := visit(nxt, path + [node])) is not None:
                return found
        done.add(node)
        return None

    return next((c for name in sorted(graph) if (c := visit(name, [])) is not None), None)


def test_no_import_cycles_not_even_type_only() -> None:
    graph = {n: {i for i in imports_of(p, type_only=True) if i in MODULES and i != n}
             for n, p in MODULES.items()}
    cycle = import_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_check_sees_type_only_imports(tmp_path: Path) -> None:
    probe = tmp_path / "probe.py"
    probe.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from hvdtrain.recipe import Recipe\n")
    assert "hvdtrain.recipe" not in imports_of(probe)
    assert "hvdtrain.recipe" in imports_of(probe, type_only=True)
    assert import_cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert import_cycle({"a": {"b"}, "b": set()}) is None


def test_launcher_and_shared_modules_import_nothing_heavy_at_run_time() -> None:
    names = [n for n in MODULES if side(n) in ("launcher", "shared", "cli")]
    code = ("import sys\n" + "".join(f"import {n}\n" for n in names)
            + f"print(sorted(m for m in {HEAVY!r} if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("name", sorted(n for n in MODULES if side(n) in ("worker", "launcher")))
def test_worker_and_launcher_functions_fit_on_a_screen(name: str) -> None:
    tree = ast.parse(MODULES[name].read_text())
    long = [(f.name, f.end_lineno - f.lineno + 1) for f in ast.walk(tree)
            if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef))
            and f.end_lineno - f.lineno + 1 > 50]
    assert long == []


def test_no_module_is_over_400_lines() -> None:
    long = {n: lines for n, p in MODULES.items() if (lines := len(p.read_text().splitlines())) > 400}
    assert long == {}


def test_cli_commands_only_forward() -> None:
    """Every Typer command body is a docstring and at most three statements (no logic, no drawing)."""
    tree = ast.parse((PKG / "cli.py").read_text())
    commands = [f for f in tree.body if isinstance(f, ast.FunctionDef)
                and any("command" in ast.unparse(d) for d in f.decorator_list)]
    after = {"eval_": "eval_command", "predict": "predict_command", "export": "export_command"}
    assert {f.name for f in commands} == {"doctor", "recipes", "show", "validate", "hosts", "plan",
                                          "run", "runs", "report", "sbatch", "bench", "forecast",
                                          "track", *after}
    for f in commands:
        body = [s for s in f.body if not (isinstance(s, ast.Expr)
                                          and isinstance(s.value, ast.Constant))]
        assert len(body) <= 3, f.name
        forwards = [c for c in ast.walk(f) if isinstance(c, ast.Call)
                    and isinstance(c.func, ast.Attribute)
                    and ast.unparse(c.func.value) in ("_commands()", "commands", "_after()")]
        assert after.get(f.name, f.name) in {c.func.attr for c in forwards}, \
            f"{f.name} forwards to commands (or launcher/after.py)"
        assert all(not c.args for c in forwards), f"{f.name} forwards by keyword only"
    tree_after = ast.parse((PKG / "launcher" / "after.py").read_text())
    assert [f.name for f in tree_after.body if isinstance(f, ast.FunctionDef)
            and f.name in after.values() and f.args.args] == []
    assert "locals()" not in (PKG / "cli.py").read_text()
    # ... to keyword-only functions
    tree = ast.parse((PKG / "launcher" / "commands.py").read_text())
    public = [f for f in tree.body if isinstance(f, ast.FunctionDef) and f.name in
              {c.name for c in commands}]
    assert [f.name for f in public if f.args.args] == []
    assert "Table" not in (PKG / "cli.py").read_text() and "rich.table" not in \
        (PKG / "cli.py").read_text()
