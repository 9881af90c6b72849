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


def test_installed_horovod_carries_this_checkouts_patch() -> None:
    """The fp16 reduction below is hvdtrain's: the wheel was built from the current patch."""
    from hvdtrain.machine import horovod_build_info
    from hvdtrain.setup.horovod_build import detect_config

    assert horovod_build_info()["key"] == detect_config().key


def test_fp16_sum_allreduce_matches_the_float32_reference_bit_for_bit() -> None:
    """The vectorised float16 reduction of the patch: odd lengths, lengths below one vector, a
    million elements, Inf/NaN propagation, overflow, subnormals and round-to-nearest-even ties,
    against the float32 sum rounded once (tests/scripts/fp16_sum.py)."""
    argv = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
            sys.executable, str(ROOT / "tests" / "scripts" / "fp16_sum.py")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=180)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out
    for rank in (0, 1):
        line = next(x for x in proc.stdout.splitlines() if f'"rank": {rank}' in x)
        assert line.endswith('"mismatches": {}}'), line
