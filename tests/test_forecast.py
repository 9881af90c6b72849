"""`hvdtrain forecast` end to end at small sizes: the model measured here for real (one process;
two ranks under horovodrun for a host's loopback), the JSON, the table at 80 columns, the kept
profile read back by `plan`, and bad input refused with the option named, nothing launched.
The arithmetic itself: tests/test_costmodel.py; a measured link between two hosts:
tests/test_cluster.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

LINKS = "give 100mbit, 1gbit, 10gbit, 25gbit, 100gbit, or Gbit/s as a number (e.g. 2.5)"


@pytest.mark.parametrize("args, message", [
    (["--np", "0"], "--np '0': '0' is not a number of processes from 1 to 100,000"),
    (["--np", "2,x"], "--np '2,x': 'x' is not a number of processes from 1 to 100,000"),
    (["--np", "2,2"], "--np '2,2' lists 2 twice"),
    (["--link", "fast"], f"--link 'fast': {LINKS}; or measured (with --hosts/--hostfile)"),
    (["--link", "0"], f"--link '0': {LINKS}; or measured (with --hosts/--hostfile)"),
    (["--link", "measured"], "--link measured needs the hosts to measure between: give --hosts "
                             "or --hostfile (two of them are probed), or name the link, e.g. "
                             "--link 1gbit"),
    (["--link", "measured", "--hosts", "localhost:1"],
     "--link measured needs two different hosts, --hosts has one (localhost): add a host, or "
     "name the link, e.g. --link 1gbit"),
    (["--compression", "int8"], "--compression 'int8': 'int8' is not none, fp16 or powersgd"),
    (["--ranks-per-host", "0"], "--ranks-per-host must be between 1 and this machine's "
                                f"{os.cpu_count()} cores (the compute is measured here, with that "
                                "many ranks sharing it), got 0"),
    (["--steps", "2"], "--steps must be between 5 and 1000, got 2"),
])
def test_bad_options_are_refused_naming_the_option(in_cli, args, message) -> None:
    proc = in_cli("forecast", "digits-cnn", *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert f"error: {message}" in " ".join(proc.stderr.split())
    assert proc.stdout == ""
    assert not Path(os.environ["HVDTRAIN_FORECAST_DIR"]).exists()  # nothing measured or kept


def test_an_unreachable_host_is_refused_before_any_probe(in_cli) -> None:
    """127.0.0.2 answers nothing on the ssh port given (loopback only: no packet leaves)."""
    proc = in_cli("forecast", "digits-cnn", "--np", "2", "--link", "measured", "--hosts",
                  "127.0.0.2:1,127.0.0.3:1", "launch.ssh_port=1", "--compression", "fp16")
    assert proc.returncode == 2, proc.stdout + proc.stderr
    said = " ".join(proc.stderr.split())
    assert ("error: --link measured: 127.0.0.2, 127.0.0.3 failed the check above; nothing "
            "launched (fix the hosts in --hosts/--hostfile, or name the link: --link 1gbit)"
            ) in said
    assert "Connection refused" in said  # the check's table, with ssh's reason
    assert not (Path(os.environ["HVDTRAIN_FORECAST_DIR"]) / "links").exists()


def _rows(result: dict) -> list[tuple]:
    return [(r["np"], r["hosts"], r["compression"], r["link"]) for r in result["forecasts"]]


def test_forecast_json_table_and_the_plans_line(run_cli, tmp_path: Path) -> None:
    proc = run_cli("forecast", "digits-cnn", "--np", "1,8,2", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "measuring digits-cnn's step on this machine (1 rank(s) of" in proc.stderr
    result = json.loads(proc.stdout)
    assert set(result) == {"ok", "recipe", "overrides", "batch_size", "ranks_per_host",
                           "threads_per_rank", "link", "loopback", "profile", "model", "notes",
                           "forecasts"}
    assert result["link"] == {"name": "1gbit", "gbit": 1.0, "latency_s": 5e-05, "burst_bytes": 0,
                              "measured": False}
    assert result["model"]["params"] == 89_930 and result["model"]["tensors"] == 10
    assert _rows(result) == [(1, 1, "none", None)] + [
        (n, n, c, "1gbit") for n in (2, 8) for c in ("none", "fp16", "powersgd")]
    one = result["forecasts"][0]
    assert one["efficiency"] == pytest.approx(1.0) and one["exposed_s"] == 0.0
    assert one["images_per_s"] == pytest.approx(32 / result["profile"]["step_s"][1])
    for r in result["forecasts"]:
        assert r["band"][0] <= r["images_per_s"] <= r["band"][1]
        assert r["step_s"] == pytest.approx(r["compute_s"] + r["exposed_s"])
        assert r["images_per_s"] == pytest.approx(32 * r["np"] / r["step_s"])
    for n in (2, 8):
        group = [r for r in result["forecasts"] if r["np"] == n]
        assert sum(r["recommended"] for r in group) == 1
        none, fp16 = group[0], group[1]
        assert (none["wire_bytes"], fp16["wire_bytes"]) == (4 * 89_930, 2 * 89_930)
        assert none["images_per_s"] < fp16["images_per_s"]  # half the bytes on the same link
    assert result["forecasts"][4]["images_per_s"] > result["forecasts"][1]["images_per_s"]

    # kept: the second forecast measures nothing and says the same
    again = run_cli("forecast", "digits-cnn", "--np", "2,8", "--link", "25", "--explain",
                    env={"COLUMNS": "80"})
    assert again.returncode == 0, again.stdout + again.stderr
    assert "measuring" not in again.stderr
    lines = again.stdout.splitlines()
    assert lines[0].startswith("digits-cnn: batch 32/rank, 1 rank(s)/host, link 25 Gbit/s")
    assert max(len(line) for line in lines) <= 80
    assert "link: 25 Gbit/s, 20 us latency, assumed (or --link measured --hosts ...)" in lines
    assert "inputs (launcher/costmodel.py):" in lines
    assert "  25 Gbit/s: alpha 20 us, beta 0.320 ns/B (25 Gbit/s)" in lines
    assert any(line.startswith("np 8 fp16: T = 2x7x") for line in lines)

    # the plan of two hosts on the same model shows the kept forecast, at its own np
    plan = run_cli("plan", "digits-cnn", "--np", "2", "--hosts", "198.51.100.1:1,198.51.100.2:1",
                   "--json")
    fp16 = next(r for r in result["forecasts"] if r["np"] == 2 and r["compression"] == "fp16")
    lo, hi = fp16["band"]
    assert json.loads(plan.stdout)["forecast"] == (
        f"{fp16['images_per_s']:,.0f} images/s ({lo:,.0f}-{hi:,.0f}), "
        f"{fp16['efficiency']:.0%} scaling, fp16 on 1gbit assumed")
    # ... and none for another model (nothing measured for it)
    other = run_cli("plan", "digits-cnn", "model.width=16", "--np", "2", "--hosts",
                    "198.51.100.1:1,198.51.100.2:1", "--json")
    assert json.loads(other.stdout)["forecast"] is None


@pytest.mark.horovod
def test_one_hosts_ranks_use_its_measured_loopback(run_cli) -> None:
    proc = run_cli("forecast", "digits-cnn", "--np", "2", "--ranks-per-host", "2", "--json",
                   "--compression", "none,fp16")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "measuring the link between localhost" in proc.stderr
    result = json.loads(proc.stdout)
    assert (result["ranks_per_host"], result["threads_per_rank"]) == (2, max(1, os.cpu_count() // 2))
    assert result["profile"]["ranks"] == 2
    assert _rows(result) == [(2, 1, "none", "loopback (measured)"),
                             (2, 1, "fp16", "loopback (measured)")]
    assert result["loopback"]["gbit"] > 1  # loopback moves more than a gigabit
    plan = run_cli("plan", "digits-cnn", "--np", "2")
    assert "forecast       " in plan.stdout and "fp16 on measured loopback" in plan.stdout


def test_a_launch_stops_what_it_started_and_spares_the_callers_processes() -> None:
    """bench's and forecast's launches stop every process they left (a grandchild re-parented to
    hvdtrain too), never one the calling program had started before: `make bench` calls the
    forecast's measurement in-process, and it once killed the namespace hosts' sshd."""
    import subprocess
    import sys

    import psutil

    from hvdtrain.launcher.bench import launch_one

    theirs = subprocess.Popen(["sleep", "60"])
    code = ("import json, subprocess; subprocess.Popen(['sleep', '61'], "
            "stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL); print('@@hvdtrain@@ ' "
            "+ json.dumps({'event': 'link', 'sizes': [1], 'seconds': [0.5]}), flush=True)")
    try:
        ev, _ = launch_one([[sys.executable, "-c", code]], timeout=60, kind="link")
        assert ev is not None and (ev["sizes"], ev["seconds"]) == ([1], [0.5])
        assert theirs.poll() is None  # the caller's process lives on
        left = [p.cmdline() for p in psutil.Process().children(recursive=True)]
        assert ["sleep", "61"] not in left  # the launch's own left-over was stopped
    finally:
        theirs.kill()
        theirs.wait()


def test_the_profile_measures_plain_and_powersgd_steps_in_turns(monkeypatch) -> None:
    """Plain and PowerSGD steps alternate in chunks (a drifting machine gave the two, measured
    one after the other, different speeds): the order of the timed runs, and every step kept."""
    from hvdtrain.recipe_files import load_recipe
    from hvdtrain.worker import profile

    recipe = load_recipe("synthetic-bench", ["model.width=8",
                                             "data.synthetic.image_shape=[3,8,8]"]).recipe
    calls: list[tuple[int, bool]] = []
    real_phases = profile.phases

    def recording(model, optimizer, x, y, steps, sync, reduce=None):
        calls.append((steps, reduce is not None))
        return real_phases(model, optimizer, x, y, steps, sync, reduce)

    monkeypatch.setattr(profile, "phases", recording)
    out = profile.measure(recipe, 1, 2, 12, None, 0, lambda: None)
    assert calls == [(2, False), (2, True), (5, False), (5, True), (5, False), (5, True),
                     (2, False), (2, True)]
    assert (len(out["steps"]), len(out["powersgd"])) == (12, 12)
    assert all(len(s) == 4 and s[3] > 0 for s in out["steps"] + out["powersgd"])
