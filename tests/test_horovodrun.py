"""A real `horovodrun -np 2` with Gloo on localhost: the build is usable end to end."""

from __future__ import annotations

import json
import os
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


def run_script(name: str, marker: str) -> dict[int, dict]:
    """``tests/scripts/NAME`` under `horovodrun -np 2 --gloo`; each rank's ``MARKER {json}`` line."""
    argv = [str(BIN / "horovodrun"), "-np", "2", "-H", "localhost:2", "--gloo",
            sys.executable, str(ROOT / "tests" / "scripts" / name)]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOROVOD_STALL_SHUTDOWN_TIME_SECONDS": "20"})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = [json.loads(x.split(f"{marker} ", 1)[1]) for x in proc.stdout.splitlines()
             if f"{marker} " in x]
    return {r["rank"]: r for r in lines}


def test_grouped_allreduce_honours_predivide_and_reduces_an_incomplete_group_as_a_group() -> None:
    """Patch item 7 (hvdtrain's default groups gradients, horovod.group_mb)."""
    ranks = run_script("grouped_allreduce.py", "GROUPED")
    assert sorted(ranks) == [0, 1]
    for r in ranks.values():
        # 40000 + 40000 overflows float16; divided by 2 first it does not: the average is exact
        assert r["overflow"] == {"a": [40000.0] * 5, "b": [40000.0] * 3}
        # rank 1 computed no gradient for b: its zeros are averaged with rank 0's 3s
        assert r["unused"] == {"a": [3.0] * 5, "b": [1.5] * 3}


def test_an_idle_or_waiting_rank_does_not_burn_cpu() -> None:
    """Patch items 5 and 6: an idle background loop sleeps until work arrives, and synchronize()
    sleeps until its allreduce is done (it polled: a core spinning while rank 0 waited 2 s for a
    late peer). CPU seconds over ~2 s of wall time; spinning would take nearly all of it."""
    ranks = run_script("idle_cpu.py", "IDLE_CPU")
    for r in ranks.values():
        assert r["sum"] == 2.0
        assert r["idle_wall"] >= 1.9 and r["idle_cpu"] < 0.08, r  # idle cycles: ~0.17 s here
    assert ranks[0]["wait_wall"] >= 1.5 and ranks[0]["wait_cpu"] < 0.2, ranks[0]


def test_powersgd_reduce_is_the_algorithm_on_real_allreduces() -> None:
    """Issue 28: hvdtrain's PowerSGD against the algorithm written out in the script for both
    ranks (averaged P, orthonormal, averaged Q, each rank's error carried to its next step); the
    warmup and the uncompressed bias are plain averages; the ranks hold identical gradients."""
    ranks = run_script("powersgd_ranks.py", "POWERSGD")
    for r in ranks.values():
        assert r["warmup_err"] == [0.0] and r["bias_err"] == [0.0] * 4
        assert max(r["weight_err"]) < 1e-6 and len(r["weight_err"]) == 3
        assert r["error_err"] < 1e-6  # the residual each rank carries into the next step
    assert ranks[0]["hashes"] == ranks[1]["hashes"]
