"""Shared fixtures: paths and a runner for the installed `hvdtrain` command."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
CLI_ENV = {"COLUMNS": "200", "NO_COLOR": "1"}  # both runners: wide, uncoloured output


def hvdtrain(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
             timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """Run the installed console script, as a user would."""
    full_env = {**os.environ, **CLI_ENV, **(env or {})}
    return subprocess.run([str(BIN / "hvdtrain"), *args], cwd=cwd or ROOT, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def cli(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None,
        timeout: float | None = None) -> subprocess.CompletedProcess[str]:
    """`hvdtrain ARGS` in this process (typer's CliRunner isolation): ``hvdtrain.cli.main`` with
    its one error edge, exit code and both streams, as the console script runs it, without the
    ~0.5 s of a new interpreter. For messages and exit codes; real launches, signals, tracebacks
    and import weight use ``hvdtrain`` (a subprocess). ``timeout`` is accepted and unused."""
    from typer.testing import CliRunner

    from hvdtrain import cli as entry

    saved = {sig: signal.getsignal(sig) for sig in (signal.SIGUSR1, signal.SIGINT,
                                                    signal.SIGTERM, signal.SIGHUP)}
    argv, here, code = sys.argv, os.getcwd(), 0
    with CliRunner().isolation(env={**CLI_ENV, **(env or {})}) as (
            out, err, _):
        sys.argv = ["hvdtrain", *args]
        os.chdir(cwd or ROOT)
        try:
            entry.main()
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else 0 if exc.code is None else 1
        finally:
            sys.argv = argv
            os.chdir(here)
            for sig, handler in saved.items():
                signal.signal(sig, handler)
        sys.stdout.flush()
        sys.stderr.flush()
        stdout, stderr = out.getvalue().decode(), err.getvalue().decode()
    return subprocess.CompletedProcess(["hvdtrain", *args], code, stdout, stderr)


@pytest.fixture
def run_cli():
    """The installed console script in a subprocess: for real launches."""
    return hvdtrain


@pytest.fixture
def in_cli():
    """`hvdtrain` in this process (``cli``): for what is refused or printed before any launch."""
    return cli


_BASETEMP: list[str] = []  # this session's pytest temp root (set by the fixture below)
SESSION_FORECAST_DIR: list[str] = []  # what module fixtures' forecasts keep (the fixture below)


@pytest.fixture(autouse=True, scope="session")
def _own_paths(tmp_path_factory):
    _BASETEMP.append(f"{tmp_path_factory.getbasetemp()}/")
    # (module fixtures run before the per-test cache below: they too keep nothing of the user's)
    SESSION_FORECAST_DIR.append(str(tmp_path_factory.mktemp("forecast-cache")))
    os.environ["HVDTRAIN_FORECAST_DIR"] = SESSION_FORECAST_DIR[0]


def _job_processes() -> list[str]:
    """This suite's horovodrun and worker processes: this checkout's .venv and a run directory
    under this session's temp root, or started by this process (another suite, or a user's own
    run from the same checkout, may be running on the machine)."""
    import psutil

    found, own = [], f"{ROOT}/"
    mine = {c.pid for c in psutil.Process().children(recursive=True)}
    for p in psutil.process_iter(["cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        ours = p.pid in mine or any(base in cmd for base in _BASETEMP)
        if ours and own in cmd and ("hvdtrain.worker" in cmd or "bin/horovodrun" in cmd):
            found.append(f"{p.pid}: {cmd[:160]}")
    return found


@pytest.fixture(autouse=True)
def own_forecast_cache(monkeypatch, tmp_path):
    """What `forecast` measures is kept per test: a user's kept profile never shows in a plan
    a test asserts, and one test's never in another's."""
    monkeypatch.setenv("HVDTRAIN_FORECAST_DIR", str(tmp_path / "forecast-cache"))


@pytest.fixture(autouse=True)
def outside_slurm(monkeypatch):
    """Tests say where they run: a suite started inside a Slurm job must not pick its hosts."""
    for key in [k for k in os.environ if k.startswith("SLURM_")]:
        monkeypatch.delenv(key)


@pytest.fixture(autouse=True)
def no_orphans(request):
    """After every real run: no horovodrun or worker process is left behind."""
    yield
    if request.node.get_closest_marker("horovod") is None:
        return
    import time

    deadline = time.monotonic() + 10
    while _job_processes() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _job_processes() == [], "processes outlived the test"


# Log windows of 5 steps (digits-cnn logs once per epoch at np=2), so that the warmup over epoch 1
# shows in several points of metrics.jsonl.
LOG5 = ["train.log_interval=5"]


@pytest.fixture(scope="session")
def digits_run(tmp_path_factory) -> tuple[Path, subprocess.CompletedProcess[str]]:
    """One full digits-cnn run (the demo, with LOG5), shared by test_train_run and test_after."""
    run_dir = tmp_path_factory.mktemp("digits") / "run"
    proc = hvdtrain("run", "digits-cnn", *LOG5, "--np", "2", "--run-dir", str(run_dir),
                    timeout=300)
    return run_dir, proc
