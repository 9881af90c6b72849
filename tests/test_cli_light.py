"""`--help`, `--version` and the pure commands never import torch or horovod."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ROOT

from hvdtrain import __version__

PROBE = """
import sys
sys.argv = ["hvdtrain", *sys.argv[1:]]
from hvdtrain.cli import app
try:
    app()
except SystemExit as exc:
    code = exc.code
heavy = sorted(m for m in ("torch", "horovod", "sklearn", "numpy") if m in sys.modules)
print("HEAVY=" + ",".join(heavy))
"""


def run_probe(*args: str) -> str:
    proc = subprocess.run([sys.executable, "-c", PROBE, *args], capture_output=True, text=True,
                          timeout=60, cwd=ROOT)
    return proc.stdout


@pytest.mark.parametrize("args", [
    ["--help"], ["--version"], ["doctor", "--help"], ["run", "--help"],
    ["plan", "digits-cnn", "--np", "2"], ["plan", "synthetic-bench", "--json"],
    ["run", "digits-cnn", "--dry-run"], ["show", "digits-cnn"], ["recipes"],
    ["hosts", "hostfiles/localhost"], ["validate", "digits-cnn", "--hostfile", "hostfiles/localhost"],
])
def test_light_commands_import_nothing_heavy(args: list[str]) -> None:
    out = run_probe(*args)
    assert out.rstrip().splitlines()[-1] == "HEAVY=", out


def test_version_prints_package_version(run_cli) -> None:
    proc = run_cli("--version")
    assert (proc.returncode, proc.stdout) == (0, f"hvdtrain {__version__}\n")


def test_python_dash_m_works() -> None:
    proc = subprocess.run([sys.executable, "-m", "hvdtrain", "--version"], capture_output=True,
                          text=True)
    assert proc.stdout == f"hvdtrain {__version__}\n"
