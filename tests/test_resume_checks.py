"""`--resume RUN_DIR` before launch (hvdtrain/launcher/resumable.py): the run's own recipe with
the new overrides on top and every change shown; folders that are not runs, are in use, or have
nothing to continue from are refused with what to do, and nothing in them is touched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from datafiles import fake_run

# The run was started as `hvdtrain run digits-cnn` with these: resume must keep every one.
STARTED = ["optimizer.base_lr=0.05", "horovod.compression=none", "launch.env={HVD_MARK: kept}",
           "train.epochs=40"]


def _files(folder: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_resume_keeps_the_runs_overrides_and_shows_each_change(tmp_path: Path, in_cli) -> None:
    run = fake_run(tmp_path / "run", STARTED)
    before = _files(run)
    plan = json.loads(in_cli("plan", "--resume", str(run), "train.epochs=44", "--json").stdout)
    got = plan["recipe_resolved"]
    assert (got["optimizer"]["base_lr"], got["horovod"]["compression"], got["launch"]["env"],
            got["train"]["epochs"]) == (0.05, "none", {"HVD_MARK": "kept"}, 44)
    assert plan["env"] == {"HVD_MARK": "kept"} and plan["recipe"] == "digits-cnn"
    assert (plan["resume_changes"], plan["epochs_done"]) == (["train.epochs: 40 -> 44"], 3)
    # The README's way (the shipped recipe named again) continues the same run, and says which
    # of the run's settings it kept where the shipped file differs.
    named = in_cli("plan", "digits-cnn", "train.epochs=44", "--resume", str(run), "--json")
    assert json.loads(named.stdout)["recipe_resolved"] == got
    assert json.loads(named.stdout)["warnings"][-1] == (
        f"the run keeps its own settings where {_shipped()} differs (digits-cnn.yaml -> the run): "
        "horovod.compression: 'fp16' -> 'none'; launch.env.HVD_MARK: (unset) -> 'kept'; "
        "optimizer.base_lr: 0.1 -> 0.05; give KEY=VALUE overrides to change them")
    text = in_cli("plan", "--resume", str(run)).stdout
    assert "resume         continues after epoch 3 with the run's own recipe, unchanged" in text
    assert _files(run) == before  # plan writes nothing


def _shipped() -> Path:
    from hvdtrain.recipe import RECIPES_DIR

    return RECIPES_DIR / "digits-cnn.yaml"


def _fifo(folder: Path) -> None:
    os.mkfifo(folder / "checkpoints" / "epoch-0004.pt")


# (id, how the folder is made, extra args, exact stderr with {d} = the folder)
CASES = [
    ("empty", None, ["--resume", ""],
     "error: --resume is empty: give the run directory to continue (`hvdtrain runs` lists them)\n"),
    ("missing", None, ["--resume", "{d}/nope"],
     "error: cannot resume {d}/nope: no such directory (`hvdtrain runs` lists the run "
     "directories)\n"),
    ("a-users-folder", lambda d: (d / "recipe.yaml").write_text("# my notes\ntrain: {epochs: 2}\n"),
     ["--resume", "{d}"],
     "error: cannot resume {d}: no manifest.json there, so it is not a run hvdtrain started (a run "
     "writes one when it launches); nothing in it was changed; to train with its recipe, start a "
     "new run: hvdtrain run {d}/recipe.yaml --run-dir NEW_DIR\n"),
    ("manifest-of-something-else", lambda d: (d / "manifest.json").write_text('{"name": "x"}'),
     ["--resume", "{d}"],
     "error: cannot resume {d}: its manifest.json records no recipe_resolved (it was not written "
     "by an hvdtrain run): start a new run\n"),
    ("another-recipe", fake_run, ["mnist-cnn", "--resume", "{d}"],
     "error: cannot resume {d}: it is a run of recipe 'digits-cnn', not 'mnist-cnn'; continue it "
     "with its own recipe: hvdtrain run --resume {d} [KEY=VALUE ...]\n"),
    ("changed-model", fake_run, ["--resume", "{d}", "model.width=16", "model.arch=resnet"],
     "error: cannot resume {d}: the recipe changes what its checkpoints depend on; use the "
     "original values or start a new run:\n  model.arch: 'small_cnn' -> 'resnet'\n"
     "  model.width: 32 -> 16\n"),
    ("checkpoints-deleted", lambda d: fake_run(d, checkpoint=False), ["--resume", "{d}"],
     "error: cannot resume {d}: {d}/checkpoints is empty, but metrics.jsonl records 3 completed "
     "epoch(s): resuming would train from epoch 1 over them. Put the checkpoints back, or start a "
     "new run: hvdtrain run digits-cnn --run-dir NEW_DIR\n"),
    ("only-garbage", lambda d: (fake_run(d, checkpoint=False), (d / "checkpoints" /
                                "epoch-0003.pt").write_bytes(b"\x80garbage")),
     ["--resume", "{d}"],
     "error: cannot resume {d}: none of its checkpoints can be loaded; restore one from a copy, or "
     "start a new run:\n  {d}/checkpoints/epoch-0003.pt: empty, truncated or not written by "
     "hvdtrain\n"),
    ("only-a-fifo", lambda d: (fake_run(d, checkpoint=False), _fifo(d)), ["--resume", "{d}"],
     "error: cannot resume {d}: none of its checkpoints can be loaded; restore one from a copy, or "
     "start a new run:\n  {d}/checkpoints/epoch-0004.pt: not a regular file\n"),
]


@pytest.mark.parametrize(("make", "args", "expected"), [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_a_run_that_cannot_be_resumed_is_refused_untouched(tmp_path: Path, in_cli, make, args,
                                                           expected) -> None:
    folder = tmp_path / "run"
    folder.mkdir()
    if make:
        make(folder)
    before = _files(folder)
    for command in ("plan", "run"):
        proc = in_cli(command, *[a.replace("{d}", str(folder)) for a in args])
        assert (proc.returncode, proc.stdout) == (2, ""), proc.stderr
        assert proc.stderr == expected.replace("{d}", str(folder))
    assert _files(folder) == before


def test_a_fifo_beside_a_checkpoint_is_skipped_and_said(tmp_path: Path, in_cli) -> None:
    run = fake_run(tmp_path / "run")
    _fifo(run)
    plan = json.loads(in_cli("plan", "--resume", str(run), "--json").stdout)
    assert plan["epochs_done"] == 3
    assert (f"skipped {run}/checkpoints/epoch-0004.pt: named like a checkpoint but not a regular "
            "file") in plan["warnings"]


def test_a_run_in_use_is_refused(tmp_path: Path, in_cli) -> None:
    """Another launch holds the directory (its lock, as `hvdtrain run` takes it): neither a resume
    nor a new run into it may start, and the lock goes with the process that held it."""
    run, empty = fake_run(tmp_path / "run"), tmp_path / "new"
    empty.mkdir()
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys; from pathlib import Path; from hvdtrain.rundir import "
         "RunDir\nwith RunDir(Path(sys.argv[1])).locked(), RunDir(Path(sys.argv[2])).locked():\n"
         "    print('held', flush=True); sys.stdin.read()", str(run), str(empty)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        before = _files(run)
        for command in ("plan", "run"):
            proc = in_cli(command, "--resume", str(run))
            assert (proc.returncode, proc.stderr) == (2, (
                f"error: {run} is in use: hvdtrain (pid 1) is running in it now; wait for it to "
                "end, or stop it (kill -INT 1) and resume then\n"))
        proc = in_cli("run", "digits-cnn", "--run-dir", str(empty))
        assert (proc.returncode, proc.stderr) == (2, (
            f"error: {empty} is in use: another hvdtrain is running in it now; wait for it to "
            "end, or stop it (Ctrl-C in its terminal) and resume then\n"))
        assert _files(run) == before and not any(empty.iterdir())
    finally:
        holder.communicate("", timeout=30)
    assert json.loads(in_cli("plan", "--resume", str(run), "--json").stdout)["epochs_done"] == 3
