"""`hvdtrain bench` end to end at small sizes: real horovodrun and torchrun launches, the JSON
schema, the table at 80 columns, bad lists refused, a data set that needs files still benched."""

from __future__ import annotations

import json
import signal
import subprocess
import time
from pathlib import Path

import psutil
import pytest
from conftest import BIN, hvdtrain

pytestmark = pytest.mark.horovod

SMALL = ["--steps", "4", "--warmup", "2"]
PARAMS = 89_930  # digits-cnn's SmallCNN


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bench") / "b"
    proc = hvdtrain("bench", "digits-cnn", "--np", "1,2", "--compression", "fp16,none",
                    "--reference", "ddp", *SMALL, "--run-dir", str(folder), "--json", timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "hvdtrain np=1 fp16:" in proc.stderr and "ddp np=2 fp16:" in proc.stderr  # progress
    return json.loads(proc.stdout), folder


def test_every_configuration_is_measured(bench_json) -> None:
    out, folder = bench_json
    assert out["ok"] and out["recipe"] == "digits-cnn" and out["steps"] == 4
    got = [(r["kind"], r["np"], r["compression"]) for r in out["results"]]
    assert got == [("hvdtrain", 1, "fp16"), ("hvdtrain", 2, "fp16"), ("hvdtrain", 1, "none"),
                   ("hvdtrain", 2, "none"), ("ddp", 1, "none"), ("ddp", 2, "none"),
                   ("ddp", 1, "fp16"), ("ddp", 2, "fp16")]
    assert json.loads((folder / "bench.json").read_text())["results"] == out["results"]
    for r in out["results"]:
        assert r["images_per_s"] > 0
        assert r["images_per_s_per_rank"] == pytest.approx(r["images_per_s"] / r["np"])
        assert r["allreduce_mb_per_step"] == pytest.approx(
            PARAMS * (2 if r["compression"] == "fp16" else 4) / 1e6)
        if r["np"] == 1:
            assert r["efficiency"] == pytest.approx(1.0)
        else:
            assert 0 < r["efficiency"] < 2
        if r["kind"] == "hvdtrain":
            assert 0 <= r["allreduce_wait_share"] < 1
        else:
            assert r["allreduce_wait_share"] is None
        assert (folder / f"{r['kind']}-np{r['np']}-{r['compression']}" / "output.log").exists()


def test_the_bench_keeps_the_models_profile_for_the_plan(bench_json) -> None:
    """bench --np 1,2 here: two ranks share this machine, so their profile and the loopback are
    kept, and the plan of `--np 2` shows its forecast line without measuring."""
    from conftest import SESSION_FORECAST_DIR

    plan = hvdtrain("plan", "digits-cnn", "--np", "2",
                    env={"HVDTRAIN_FORECAST_DIR": SESSION_FORECAST_DIR[0]})
    assert plan.returncode == 0, plan.stderr
    line = next(x for x in plan.stdout.splitlines() if x.startswith("forecast "))
    assert line.endswith("scaling, fp16 on measured loopback") and " images/s (" in line


def test_table_fits_80_columns(bench_json) -> None:
    """The measured rows of the run above, drawn as `hvdtrain bench` draws them at 80 columns."""
    import io

    from rich.console import Console

    from hvdtrain.launcher.display import print_bench

    out, folder = bench_json
    buf = io.StringIO()
    print_bench(Console(file=buf, width=80, color_system=None), out["results"],
                "digits-cnn: 4 steps of batch 32/rank on this machine", folder / "bench.json")
    lines = buf.getvalue().splitlines()
    assert max(map(len, lines)) <= 80
    header = next(x for x in lines if "img/s" in x)
    for name in ("run", "np", "grads", "/rank", "eff.", "MB/step", "wait"):
        assert name in header
    rows = [[c.strip() for c in x.split("│")[1:-1]] for x in lines if x.startswith("│")]
    assert [r[:3] for r in rows] == [[r["kind"], str(r["np"]), r["compression"]]
                                     for r in out["results"]]


def test_rounds_are_interleaved_and_reported_as_medians(tmp_path: Path) -> None:
    proc = hvdtrain("bench", "digits-cnn", "--np", "1,2", "--compression", "none", "--rounds", "3",
                    *SMALL, "--run-dir", str(tmp_path / "b"), env={"COLUMNS": "80"}, timeout=300)
    assert proc.returncode == 0, proc.stderr
    order = [x.split(":")[0] + ":" + x.split(":")[1] for x in proc.stderr.splitlines()
             if x.startswith("round ")]
    assert order == [f"round {r}/3: hvdtrain np={n} none" for r in (1, 2, 3) for n in (1, 2)]
    saved = json.loads((tmp_path / "b" / "bench.json").read_text())
    assert saved["rounds"] == 3
    for r in saved["results"]:
        rates = r["rounds_images_per_s"]
        assert len(rates) == 3 and r["images_per_s"] == sorted(rates)[1]
        assert r["spread"] == pytest.approx((max(rates) - min(rates)) / sorted(rates)[1])
        for k in (1, 2, 3):
            assert (tmp_path / "b" / f"hvdtrain-np{r['np']}-none" / f"round-{k}" /
                    "output.log").exists()
    lines = proc.stdout.splitlines()
    assert max(map(len, lines)) <= 80
    assert "spread" in next(x for x in lines if "img/s" in x)
    assert "median of 3 interleaved rounds" in " ".join(proc.stdout.split())


def test_a_data_set_that_needs_files_is_benched_on_synthetic_input(tmp_path: Path) -> None:
    proc = hvdtrain("bench", "imagefolder-resnet", f"data.data_dir={tmp_path / 'nothing-here'}",
                    "data.image_size=32", "model.width=8", "--np", "1", "--compression", "none",
                    *SMALL, "--run-dir", str(tmp_path / "b"), "--json", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert json.loads(proc.stdout)["results"][0]["images_per_s"] > 0


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130),
                                           (signal.SIGHUP, 129), (signal.SIGKILL, -9)])
def test_a_stopped_bench_leaves_no_process(tmp_path: Path, sig, code) -> None:
    """As `run` does: a signal stops horovodrun and every rank first, then hvdtrain exits with
    128 + the signal; killed outright, horovodrun dies with it (PR_SET_PDEATHSIG) and takes the
    ranks along."""
    folder = tmp_path / "b"
    proc = subprocess.Popen([str(BIN / "hvdtrain"), "bench", "digits-cnn", "--np", "2",
                             "--compression", "none", "--steps", "100000", "--warmup", "1",
                             "--run-dir", str(folder)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)

    def ours() -> list[int]:
        return [p.pid for p in psutil.process_iter(["cmdline"])
                if str(folder) in " ".join(p.info["cmdline"] or []) and p.pid != proc.pid]

    deadline = time.monotonic() + 60
    while len(ours()) < 2 and time.monotonic() < deadline:  # horovodrun and the ranks started
        time.sleep(0.2)
    assert ours(), "the bench never started"
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    deadline = time.monotonic() + 20
    while ours() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert ours() == []


def test_a_data_component_is_benched_at_its_probed_shape(tmp_path: Path) -> None:
    """The shipped custom-model recipe (data and model components) used to fail in bench."""
    proc = hvdtrain("bench", "custom-model", "--np", "1", "--compression", "none", *SMALL,
                    "--run-dir", str(tmp_path / "b"), "--json", timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)["results"][0]
    assert result["images_per_s"] > 0
    assert result["allreduce_mb_per_step"] == pytest.approx(16_802 * 4 / 1e6)  # its parameters
