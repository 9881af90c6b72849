"""Every table hvdtrain prints is readable in 80 columns and without a terminal: host names, run
names, recipe names, check names and paths are never cut across lines."""

from __future__ import annotations

import io
from pathlib import Path

from rich.console import Console

from hvdtrain.launcher import display, runview
from hvdtrain.launcher.hosts import parse_hosts_arg
from hvdtrain.launcher.prelaunch import make_plan
from hvdtrain.recipe_files import load_recipe
from hvdtrain.setup.doctor import Check

LONG = ["node-0001.rack-17.datacenter-west.example.org", "127.0.0.9",
        "gpu-worker-with-a-long-name-42.cluster.internal"]


def render(draw) -> list[str]:
    out = io.StringIO()
    draw(Console(file=out, width=80, force_terminal=False, color_system=None, highlight=False))
    return out.getvalue().splitlines()


def whole(lines: list[str], names: list[str]) -> None:
    for name in names:
        assert any(name in line for line in lines), f"{name!r} is cut across lines"


def test_preflight_keeps_host_names_whole() -> None:
    hosts = [{"host": h, "local": False, "reachable": False, "facts": {},
              "problems": [f"unreachable: ssh: connect to host {h} port 22: Connection refused "
                           "(check that plain `ssh` to it works without a password)"]}
             for h in LONG]
    report = {"hosts": hosts, "common_interfaces": [], "recommended_network_interfaces": [],
              "ok": False}
    lines = render(lambda c: display.print_preflight(c, report))
    whole(lines, LONG)
    assert all(len(line) <= 80 for line in lines)


def test_plan_and_hosts_keep_host_names_and_paths_whole(tmp_path: Path) -> None:
    run_dir = tmp_path / "a-run-directory-with-a-rather-long-name-20261125-091016"
    plan = make_plan(load_recipe("digits-cnn"), np=3, hosts=",".join(f"{h}:1" for h in LONG),
                      run_dir=run_dir)
    whole(render(lambda c: display.print_plan(c, plan)), [*LONG, str(run_dir)])
    listed = parse_hosts_arg(",".join(f"{h}:1" for h in LONG))
    whole(render(lambda c: display.print_hosts(c, listed)), LONG)


def test_doctor_recipes_and_the_summary_table_fit() -> None:
    checks = [Check("horovod built for torch", "error", "2.12.0, installed torch is 2.13.0+cpu",
                    "rebuild Horovod for this torch: /some/long/venv/path/bin/python -m "
                    "hvdtrain.setup.horovod_build --force")]
    lines = render(lambda c: display.print_doctor(c, checks, False))
    whole(lines, ["horovod built for torch", "hvdtrain.setup.horovod_build"])
    rows = [{"name": "imagefolder-resnet", "description": "Your images " * 8}]
    whole(render(lambda c: c.print(display.recipes_table(rows))), ["imagefolder-resnet"])
    epochs = [{"epoch": 1, "train_loss": 2.28, "train_acc": 0.13, "eval_loss": None,
               "eval_acc": None, "seconds": 0.5, "images_per_s": 4459.0}]
    lines = render(lambda c: c.print(runview.summary_table(epochs)))
    assert all(len(line) <= 80 for line in lines) and any("4,459" in line for line in lines)
