"""What each `hvdtrain` command does; cli.py only forwards to these. Each returns the exit code and
raises ``UserError`` for bad input (cli.py reports it once, at the edge). Drawing is display.py's.

None of these imports torch or horovod (``doctor`` asks the set-up side, which imports them lazily).
"""

from __future__ import annotations

import json
import math
import os
import re
import shlex
from typing import TYPE_CHECKING

import typer
from rich.console import Console

from hvdtrain.errors import UserError

if TYPE_CHECKING:
    from hvdtrain.launcher.sbatch import SbatchOptions


def _out() -> Console:
    return Console(highlight=False)


def _echo_json(data: object) -> None:
    typer.echo(json.dumps(data, indent=2))


def doctor(*, as_json: bool) -> int:
    from hvdtrain.launcher.display import print_doctor
    from hvdtrain.setup import doctor as doc

    facts = doc.gather_facts()
    checks = doc.check(facts)
    ok = doc.healthy(checks)
    if as_json:
        _echo_json(doc.report(facts, checks))
    else:
        print_doctor(_out(), checks, ok)
    return 0 if ok else 1


def recipes(*, as_json: bool) -> int:
    from hvdtrain.launcher.display import recipes_table
    from hvdtrain.recipe_files import load_recipe, shipped_recipes

    rows = []
    for path in shipped_recipes():
        try:
            description = load_recipe(str(path)).recipe.description
        except UserError as exc:
            description = f"INVALID: {exc}"
        rows.append({"name": path.stem, "path": str(path), "description": description})
    if as_json:
        _echo_json(rows)
    else:
        _out().print(recipes_table(rows))
    return 0


def show(*, recipe: str, overrides: list[str], as_json: bool) -> int:
    from hvdtrain.recipe_files import load_recipe

    loaded = load_recipe(recipe, overrides)
    if as_json:
        _echo_json(loaded.recipe.model_dump(mode="json"))
    else:
        typer.echo(f"# resolved from {loaded.path}"
                   + (f" with {' '.join(loaded.overrides)}" if loaded.overrides else ""))
        typer.echo(loaded.recipe.to_yaml(), nl=False)
    return 0


def validate(*, recipe_files: list[str], hostfile: str | None, as_json: bool) -> int:
    """Every recipe (and the hostfile) checked; every error of every file reported."""
    from hvdtrain.launcher.display import print_validation

    results = [_validate_one(name, load_recipe=True) for name in recipe_files]
    if hostfile:
        results.append(_validate_one(hostfile, load_recipe=False))
    ok = all(r["ok"] for r in results)
    if as_json:
        _echo_json({"ok": ok, "results": results})
    else:
        print_validation(results)
    return 0 if ok else 2


def _validate_one(source: str, load_recipe: bool) -> dict:
    """One file's validation result: a recipe, or (``load_recipe=False``) a hostfile."""
    from hvdtrain import recipe_files
    from hvdtrain.recipe_warnings import recipe_warnings
    from hvdtrain.launcher.hosts import parse_hostfile

    from hvdtrain.launcher.prelaunch import component_files

    code: list[str] = []
    try:
        if load_recipe:
            loaded = recipe_files.load_recipe(source, []).recipe
            warnings = recipe_warnings(loaded)
            code = [f"{key} from {path}" for key, _, path in component_files(loaded)]
        else:
            warnings = list(parse_hostfile(source).warnings)
    except UserError as exc:
        return {"source": source, "ok": False, "errors": exc.lines(), "warnings": []}
    return {"source": source, "ok": True, "errors": [], "warnings": warnings, "runs_code": code}


def hosts(*, hostfile: str | None, check: bool, ssh_port: int | None,
          ssh_identity_file: str | None, network_interfaces: str | None, timeout: float | None,
          slurm: bool, as_json: bool) -> int:
    from hvdtrain.launcher import display
    from hvdtrain.launcher.hosts import parse_hostfile

    _check_options(check, ssh_port, ssh_identity_file, network_interfaces, timeout)
    if slurm == bool(hostfile):
        raise UserError("give a hostfile or --slurm (the hosts of the Slurm allocation you are in), "
                        "one of the two")
    if slurm:
        from hvdtrain.launcher.slurm import allocation_hosts

        parsed = allocation_hosts()
    else:
        parsed = parse_hostfile(hostfile)
    if check:
        from hvdtrain.launcher.preflight import check_hosts

        wanted = [i for i in (network_interfaces or "").split(",") if i]
        report = check_hosts([h.name for h in parsed.hosts], ssh_port, ssh_identity_file,
                             15.0 if timeout is None else timeout, wanted)
        if as_json:
            _echo_json(report)
        else:
            display.print_preflight(_out(), report)
        return 0 if report["ok"] else 1
    if as_json:
        _echo_json({
            "ok": True, "source": parsed.source, "total_slots": parsed.total_slots,
            "hosts": [{"host": h.name, "slots": h.slots, "line": h.line} for h in parsed.hosts],
            "warnings": list(parsed.warnings)})
    else:
        display.print_hosts(_out(), parsed)
    return 0


def runs(*, folder: str, as_json: bool) -> int:
    """The run directories under ``folder``, newest first."""
    from pathlib import Path

    from hvdtrain.launcher.runs import list_runs

    path = Path(folder)
    if not path.is_dir():
        raise UserError(f"{folder} is not a directory: give the folder that holds your run "
                        "directories (launch.output_dir, default runs/)")
    rows = list_runs(path)
    if as_json:
        _echo_json(rows)
    else:
        from hvdtrain.launcher.display import print_runs

        print_runs(_out(), rows, folder)
    return 0


def report(*, run_dirs: list[str], out: str | None, as_json: bool) -> int:
    """One PNG of one or more runs' curves, and a summary table."""
    from hvdtrain.launcher.report import report as write_report

    path, rows = write_report(run_dirs, out)
    if as_json:
        _echo_json({"png": str(path), "runs": rows})
    else:
        from hvdtrain.launcher.display import print_report

        print_report(_out(), rows, path)
    return 0


def _check_options(check: bool, ssh_port: int | None, ssh_identity_file: str | None,
                   network_interfaces: str | None, timeout: float | None) -> None:
    """`hosts` options that only mean something with --check, and their ranges."""
    given = [flag for flag, value in (("--ssh-port", ssh_port),
                                      ("--ssh-identity-file", ssh_identity_file),
                                      ("--network-interfaces", network_interfaces),
                                      ("--timeout", timeout)) if value is not None]
    if given and not check:
        raise UserError(f"{', '.join(given)} only appl{'ies' if len(given) == 1 else 'y'} with "
                        "--check: add --check, or leave "
                        f"{'it' if len(given) == 1 else 'them'} out")
    if timeout is not None and not (math.isfinite(timeout) and 0 < timeout <= 3600):
        raise UserError(f"--timeout must be a number of seconds between 0 and 3600 (per host), "
                        f"got {timeout:g}")
    if ssh_port is not None and not 1 <= ssh_port <= 65535:
        raise UserError(f"--ssh-port must be a TCP port between 1 and 65535, got {ssh_port}")


def plan(*, recipe: str | None, overrides: list[str], np: int | None, hosts: str | None,
         hostfile: str | None, run_dir: str | None, resume: str | None, slurm: bool | None,
         as_json: bool) -> int:
    """Print what `run` would launch (also `run --dry-run`); launches and writes nothing."""
    from hvdtrain.launcher.plan import plan_dict
    from hvdtrain.launcher.prelaunch import plan_run

    the_plan = plan_run(recipe, overrides, np=np, hosts=hosts, hostfile=hostfile,
                        run_dir=run_dir, resume=resume, slurm=slurm)
    if as_json:
        _echo_json(plan_dict(the_plan))
    else:
        from hvdtrain.launcher.display import print_plan

        print_plan(_out(), the_plan)
    return 0


def run(*, recipe: str | None, overrides: list[str], np: int | None, hosts: str | None,
        hostfile: str | None, run_dir: str | None, resume: str | None, slurm: bool | None,
        no_check: bool, as_json: bool) -> int:
    """Plan, check remote hosts, launch, draw; returns the run's exit code."""
    from hvdtrain.launcher.launch import StopRequest, launch
    from hvdtrain.launcher.prelaunch import check_discovery_output, plan_run

    StopRequest.install()  # from here on, SIGUSR1 means "checkpoint and stop", never death

    the_plan = plan_run(recipe, overrides, np=np, hosts=hosts, hostfile=hostfile,
                        run_dir=run_dir, resume=resume, slurm=slurm)
    if the_plan.resume and the_plan.epochs_done >= the_plan.recipe.train.epochs:
        from hvdtrain.launcher.checks import nothing_to_do

        typer.echo(json.dumps({"event": "exit", "code": 0, "message": nothing_to_do(the_plan)})
                   if as_json else nothing_to_do(the_plan))
        return 0  # the run directory stays exactly as it was
    if not no_check:
        _preflight_remote(the_plan)
    check_discovery_output(the_plan.recipe)
    return launch(the_plan, as_json=as_json)


def _preflight_remote(the_plan) -> None:
    """Before launching on remote hosts, check them; refuse (exit 2) with the table if one fails."""
    from hvdtrain.launcher.preflight import is_local, local_addresses, refuse_failing

    local = local_addresses()
    if all(is_local(h.name, local) for h in the_plan.hosts):
        return
    refuse_failing([h.name for h in the_plan.hosts], the_plan.recipe.launch,
                   lambda _bad: "pre-flight check failed, nothing launched (fix the hosts above, "
                                "or skip the check with --no-check)")


def sbatch(*, recipe: str, overrides: list[str], slurm: SbatchOptions, run_dir: str | None,
           dry_run: bool, as_json: bool) -> int:
    """Write a batch script into a new run directory and submit it (``--dry-run``: print it)."""
    from pathlib import Path

    from hvdtrain.launcher import sbatch as sb
    from hvdtrain.launcher.prelaunch import plan_run
    from hvdtrain.rundir import RunDir

    opts = slurm
    problems = sb.check_options(opts)
    if problems:
        raise UserError("the Slurm options cannot be submitted; nothing written:", problems)
    # The allocation's hosts are unknown until the job starts: plan on stand-ins of its shape.
    stand_ins = ",".join(f"slurm-node-{i + 1}:{opts.ntasks_per_node}" for i in range(opts.nodes))
    the_plan = plan_run(recipe, overrides, np=opts.tasks, hosts=stand_ins, run_dir=run_dir)
    folder, recipe_file = RunDir(the_plan.run_dir), the_plan.recipe_path.resolve()
    sb.check_run_dir(folder.path)
    if folder.path.exists() and (not folder.path.is_dir() or any(folder.path.iterdir())):
        raise UserError(f"run directory {folder.path} already exists: choose another --run-dir")
    name = opts.job_name or re.sub(r"[^A-Za-z0-9_.+@-]", "-",
                                   f"hvdtrain-{the_plan.recipe_name}")[:128]
    text = sb.script_text(opts, folder, recipe_file, overrides, name, Path.cwd())
    if dry_run:
        if as_json:
            _echo_json({"ok": True, "run_dir": str(folder.path), "script": text,
                        "job_name": name, "tasks": opts.tasks})
        else:
            typer.echo(text, nl=False)
        return 0
    _write_queued(folder, the_plan.recipe, text)
    info = sb.record(folder, sb.submit(folder.sbatch_script, Path.cwd()), opts, recipe_file,
                     overrides)
    follow = [f"squeue -j {info['job_id']}", f"tail -f {shlex.quote(info['output'])}",
              f"hvdtrain runs {shlex.quote(str(folder.path.parent))}"]
    if as_json:
        _echo_json({"ok": True, "job_id": info["job_id"], "run_dir": str(folder.path),
                    "script": info["script"], "output": info["output"], "follow": follow})
    else:
        typer.echo(f"submitted Slurm job {info['job_id']}: {the_plan.recipe_name} on "
                   f"{opts.nodes} node(s) x {opts.ntasks_per_node} task(s)\n"
                   f"  run dir  {folder.path}\n"
                   f"  script   {info['script']}\n  follow   " + "\n           ".join(follow))
    return 0


def _write_queued(folder, recipe, text: str) -> None:
    """The run directory as `hvdtrain sbatch` leaves it: resolved recipe, script, logs/."""
    try:
        folder.logs.mkdir(parents=True)
        folder.write_recipe(recipe)
        folder.sbatch_script.write_text(text)
        folder.sbatch_script.chmod(0o755)
    except OSError as exc:
        raise UserError(f"cannot create run directory {folder.path}: {exc.strerror}: choose "
                        "another --run-dir (or launch.output_dir)") from None


def bench(*, recipe: str, overrides: list[str], np: str, compression: str, hosts: str | None,
          hostfile: str | None, warmup: int, steps: int, rounds: int, reference: str | None,
          run_dir: str | None, as_json: bool) -> int:
    """Throughput of the recipe's model per world size and compression (and the DDP reference)."""
    from pathlib import Path

    from hvdtrain.launcher import bench as b
    from hvdtrain.launcher.forecast import keep_for_plan
    from hvdtrain.launcher.prelaunch import resolve_hosts
    from hvdtrain.recipe_files import load_recipe
    from hvdtrain.rundir import RunDir, default_run_dir

    nps = b.parse_list("--np", np, b.positive, "a number of processes >= 1")
    comps = b.parse_list("--compression", compression, b.compression, "fp16, none or powersgd")
    b.check_options(reference=reference, warmup=warmup, steps=steps, rounds=rounds,
                    comps=tuple(comps))
    loaded = load_recipe(recipe, overrides)
    host_list = resolve_hosts(loaded.recipe, max(nps), hosts, hostfile, slurm=False)
    b.check_world(max(nps), host_list)
    folder = RunDir(Path(run_dir).resolve() if run_dir else
                    default_run_dir(loaded, prefix="bench-"))
    if folder.path.exists() and any(folder.path.iterdir()):
        raise UserError(f"{folder.path} already exists and is not empty: choose another --run-dir")
    todo = b.configs(nps, comps, reference)
    console = Console(stderr=True, highlight=False)

    def progress(cfg, result, rnd: int) -> None:
        what = "failed" if "error" in result else f"{result['images_per_s']:,.0f} images/s"
        where = f"round {rnd + 1}/{rounds}: " if rounds > 1 else ""
        console.print(f"{where}{cfg.kind} np={cfg.np} {cfg.compression}: {what} "
                      f"({result['seconds']:.0f} s)")

    rows = b.run_all(folder, b.for_bench(loaded.recipe), host_list, todo, warmup, steps,
                     progress, rounds)
    keep_for_plan(loaded, host_list, max(nps), lambda text: console.print(text, style="dim"))
    meta = {"recipe": loaded.name, "overrides": overrides, "hosts": host_list.source,
            "warmup": warmup, "steps": steps, "rounds": rounds,
            "batch_size": loaded.recipe.data.batch_size, "cpu_count": os.cpu_count()}
    path = b.write(folder, meta, rows)
    if as_json:
        _echo_json({"ok": all("error" not in r for r in rows), "path": str(path), **meta,
                    "results": rows})
    else:
        from hvdtrain.launcher.display import print_bench

        title = (f"{loaded.name}: {steps} steps of batch {loaded.recipe.data.batch_size}/rank on "
                 f"{host_list.source}")
        rnds = f", median of {rounds} interleaved rounds" if rounds > 1 else ""
        print_bench(_out(), rows, title + rnds, path)
    return 0 if all("error" not in r for r in rows) else 1


def forecast(**options) -> int:
    """`hvdtrain forecast`: hvdtrain/launcher/forecast.py."""
    from hvdtrain.launcher.forecast import forecast_command

    return forecast_command(**options)


def track(*, run_dir: str, uri: str | None, as_json: bool) -> int:
    """`hvdtrain track`: hvdtrain/launcher/tracking.py."""
    from hvdtrain.launcher.tracking import track_command

    return track_command(run_dir=run_dir, uri=uri, as_json=as_json)
