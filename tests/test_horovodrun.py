"""A real `horovodrun -np 2` with Gloo on localhost: the build is usable end to end."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import BIN, ROOT

pytestmark = pytest.mark.horovod


def test_horovodrun_np2_gloo_allreduce_sums_on_every_rank() -> None:
    argv = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
            sys.executable, str(ROOT / "tests" / "scripts" / "allreduce_sum.py")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    # Gloo prefixes worker lines with [rank]<stdout>:
    assert "[0]<stdout>:SMOKE rank=0 size=2 sum=3 expected=3" in out
    assert "[1]<stdout>:SMOKE rank=1 size=2 sum=3 expected=3" in out
