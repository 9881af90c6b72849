"""`hvdtrain runs`: run directories read from their manifests and metrics, newest first."""

from __future__ import annotations

import json
import os
from pathlib import Path


def make_run(root: Path, name: str, start: str, status: str, pid: int, epochs: int,
             accs: list[float], truncated: bool = False) -> None:
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "manifest.json").write_text(json.dumps({
        "recipe": "digits-cnn", "argv": ["horovodrun"], "np": 2,
        "hosts": [{"host": "localhost", "slots": 2}], "start_time": start,
        "end_time": None if status == "running" else start.replace(":00+", ":30+"),
        "status": status, "exit_status": None if status == "running" else 0,
        "launcher_pid": pid, "recipe_resolved": {"train": {"epochs": epochs}}}))
    lines = [json.dumps({"event": "epoch", "epoch": i + 1, "train_loss": 1.0, "train_acc": a,
                         "eval_acc": a, "images_per_s": 100.0}) for i, a in enumerate(accs)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + ('\n{"event": "ep' if truncated else "\n"))


def test_runs_lists_status_progress_and_skips_foreign_folders(in_cli, tmp_path: Path) -> None:
    dead = 2**22 + 12345  # above the default pid_max: no such process
    make_run(tmp_path, "digits-cnn-20261125-080000", "2026-11-25T08:00:00+0000", "finished",
             dead, 3, [0.5, 0.9, 0.97])
    make_run(tmp_path, "digits-cnn-20261125-090000", "2026-11-25T09:00:00+0000", "running",
             os.getpid(), 12, [0.4], truncated=True)
    make_run(tmp_path, "a-very-long-recipe-name-for-columns-20261125-100000",
             "2026-11-25T10:00:00+0000", "running", dead, 5, [])
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "manifest.json").write_text("not json")
    rows = json.loads(in_cli("runs", str(tmp_path), "--json").stdout)
    assert [(r["name"], r["status"], r["epochs_done"], r["epochs"], r["best_eval_acc"])
            for r in rows] == [
        ("a-very-long-recipe-name-for-columns-20261125-100000", "killed", 0, 5, None),
        ("digits-cnn-20261125-090000", "running", 1, 12, 0.4),
        ("digits-cnn-20261125-080000", "finished", 3, 3, 0.97)]
    assert rows[2]["wall_seconds"] == 30 and rows[2]["hosts"] == ["localhost"]
    assert rows[0]["wall_seconds"] is None  # killed: its end is unknown
    for columns, names_share_a_line in (("80", False), ("200", True)):
        lines = in_cli("runs", str(tmp_path), env={"COLUMNS": columns}).stdout.splitlines()
        assert max(len(line) for line in lines) <= int(columns)
        for r in rows:  # every name whole on one line, with its status on it or just below
            at = next(i for i, line in enumerate(lines) if r["name"] in line)
            assert r["status"] in lines[at] or (not names_share_a_line and
                                                 r["status"] in lines[at + 1])
        assert not any("notes" in line for line in lines)


def test_runs_on_a_missing_folder_says_so(in_cli, tmp_path: Path) -> None:
    proc = in_cli("runs", str(tmp_path / "nope"))
    assert (proc.returncode, proc.stdout) == (2, "")
    assert proc.stderr == (f"error: {tmp_path}/nope is not a directory: give the folder that holds "
                           "your run directories (launch.output_dir, default runs/)\n")
