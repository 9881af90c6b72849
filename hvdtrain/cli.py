"""The `hvdtrain` command line: thin Typer forwarders. Library errors are caught only here.

Nothing at module level imports torch or horovod: `hvdtrain --help` must stay instant.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape

from hvdtrain import __version__
from hvdtrain.errors import UserError

app = typer.Typer(
    name="hvdtrain",
    help="Data-parallel CNN training with Horovod and PyTorch, from validated recipes.\n\n"
    "Start with `hvdtrain doctor`, then `hvdtrain recipes` and `hvdtrain run digits-cnn --np 2`.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

err_console = Console(stderr=True)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"hvdtrain {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[bool, typer.Option(
        "--version", callback=_version, is_eager=True, help="Print the version and exit.")] = False,
) -> None:
    """Data-parallel CNN training with Horovod and PyTorch."""


def fail(exc: UserError) -> NoReturn:
    """Print a user error (no traceback) and exit with its code."""
    err_console.print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False, soft_wrap=True)
    raise typer.Exit(exc.exit_code)


@app.command()
def doctor(
    as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")] = False,
) -> None:
    """Check that this machine can run hvdtrain: Python, torch, Horovod build, network, ssh.

    Exit code 0 when it can; 1 with the fix for each problem when it cannot.
    """
    from hvdtrain import doctor as doc

    facts = doc.gather_facts()
    checks = doc.check(facts)
    ok = doc.healthy(checks)
    if as_json:
        typer.echo(json.dumps(doc.report(facts, checks), indent=2))
    else:
        from hvdtrain.display import print_doctor

        print_doctor(Console(), checks, ok)
    raise typer.Exit(0 if ok else 1)


# --- recipes, hosts and plans (pure: no torch, no horovod) -----------------------------------

RecipeArg = Annotated[str, typer.Argument(
    help="Recipe: a YAML path, or a shipped name such as digits-cnn (see `hvdtrain recipes`).")]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(
    help="Overrides as KEY=VALUE with dotted keys, e.g. optimizer.base_lr=0.1 train.epochs=3.",
    show_default=False)]
NpOpt = Annotated[Optional[int], typer.Option(
    "--np", help="Number of processes (default: the recipe's launch.np, else all slots).")]
HostsOpt = Annotated[Optional[str], typer.Option(
    "--hosts", help="Hosts as host:slots,... e.g. node1:2,node2:2 (instead of a hostfile).")]
HostfileOpt = Annotated[Optional[str], typer.Option(
    "--hostfile", help="Hostfile: lines of `host slots=N` or `host:N`; # comments allowed.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _console() -> Console:
    return Console(highlight=False)


def _load(recipe: str, overrides: list[str] | None):
    from hvdtrain.recipe import load_recipe

    return load_recipe(recipe, overrides or [])


def _plan(recipe: str, overrides: list[str] | None, np: int | None, hosts: str | None,
          hostfile: str | None, run_dir: str | None = None):
    from hvdtrain.plan import build_plan
    from hvdtrain.rundir import default_run_dir

    loaded = _load(recipe, overrides)
    where = Path(run_dir).resolve() if run_dir else default_run_dir(loaded)
    return build_plan(loaded, np=np, hosts=hosts, hostfile=hostfile, run_dir=where)


@app.command()
def recipes(as_json: JsonOpt = False) -> None:
    """List the shipped recipes with one-line descriptions."""
    from hvdtrain.recipe import load_recipe, shipped_recipes

    rows = []
    for path in shipped_recipes():
        try:
            rows.append({"name": path.stem, "path": str(path),
                         "description": load_recipe(str(path)).recipe.description})
        except UserError as exc:
            rows.append({"name": path.stem, "path": str(path), "description": f"INVALID: {exc}"})
    if as_json:
        typer.echo(json.dumps(rows, indent=2))
        return
    from rich.table import Table

    table = Table(title="shipped recipes (run one: hvdtrain run NAME)")
    table.add_column("name", style="bold")
    table.add_column("description")
    for row in rows:
        table.add_row(row["name"], escape(row["description"]))
    _console().print(table)


@app.command()
def show(recipe: RecipeArg, overrides: OverridesArg = None, as_json: JsonOpt = False) -> None:
    """Print the fully resolved recipe (defaults and overrides applied), ready to copy and edit."""
    try:
        loaded = _load(recipe, overrides)
    except UserError as exc:
        fail(exc)
    if as_json:
        typer.echo(json.dumps(loaded.recipe.model_dump(mode="json"), indent=2))
    else:
        typer.echo(f"# resolved from {loaded.path}"
                   + (f" with {' '.join(loaded.overrides)}" if loaded.overrides else ""))
        typer.echo(loaded.recipe.to_yaml(), nl=False)


@app.command()
def validate(
    recipe_files: Annotated[list[str], typer.Argument(help="Recipes (paths or shipped names).")],
    hostfile: HostfileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Check recipes (and a hostfile); print OK or every error. Exit 2 when anything is invalid."""
    from hvdtrain.hosts import parse_hostfile

    results: list[dict] = []
    for name in recipe_files:
        try:
            _load(name, [])
            results.append({"source": name, "ok": True, "errors": []})
        except UserError as exc:
            results.append({"source": name, "ok": False, "errors": [str(exc), *exc.problems]})
    if hostfile:
        try:
            parsed = parse_hostfile(hostfile)
            results.append({"source": hostfile, "ok": True, "errors": [],
                            "warnings": list(parsed.warnings)})
        except UserError as exc:
            results.append({"source": hostfile, "ok": False, "errors": [str(exc), *exc.problems]})
    ok = all(r["ok"] for r in results)
    if as_json:
        typer.echo(json.dumps({"ok": ok, "results": results}, indent=2))
    else:
        for r in results:
            if r["ok"]:
                typer.echo(f"OK     {r['source']}")
                for w in r.get("warnings", []):
                    typer.echo(f"       warning: {w}")
            else:
                typer.echo(f"ERROR  {r['source']}", err=True)
                typer.echo("\n".join(f"       {e}" for e in r["errors"]), err=True)
    raise typer.Exit(0 if ok else 2)


@app.command()
def hosts(
    hostfile: Annotated[str, typer.Argument(help="Hostfile to parse and validate.")],
    check: Annotated[bool, typer.Option(
        "--check", help="Pre-flight: ssh to every host (in parallel) and compare its Python, torch, "
                        "Horovod and hvdtrain, interpreter path, working directory and network "
                        "interfaces with this host's.")] = False,
    ssh_port: Annotated[Optional[int], typer.Option("--ssh-port", help="ssh port (with --check).")] = None,
    ssh_identity_file: Annotated[Optional[str], typer.Option(
        "--ssh-identity-file", help="ssh private key (with --check).")] = None,
    network_interfaces: Annotated[Optional[str], typer.Option(
        "--network-interfaces", help="Interfaces you plan to use, e.g. eth0 (with --check).")] = None,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds per host (with --check).")] = 15.0,
    as_json: JsonOpt = False,
) -> None:
    """Parse and validate a hostfile: print the hosts and slots, or every error (exit 2).

    With --check, also probe every host the way horovodrun will reach it; exit 1 with the fix
    when a host would make horovodrun fail or hang.
    """
    from hvdtrain.hosts import parse_hostfile

    try:
        parsed = parse_hostfile(hostfile)
    except UserError as exc:
        if as_json:
            typer.echo(json.dumps({"ok": False, "errors": [str(exc), *exc.problems]}, indent=2))
            raise typer.Exit(exc.exit_code)
        fail(exc)
    if check:
        from hvdtrain.preflight import check_hosts

        wanted = [i for i in (network_interfaces or "").split(",") if i]
        report = check_hosts([h.name for h in parsed.hosts], ssh_port, ssh_identity_file, timeout,
                             wanted)
        if as_json:
            typer.echo(json.dumps(report, indent=2))
        else:
            from hvdtrain.display import print_preflight

            print_preflight(_console(), report)
        raise typer.Exit(0 if report["ok"] else 1)
    if as_json:
        typer.echo(json.dumps({
            "ok": True, "source": parsed.source, "total_slots": parsed.total_slots,
            "hosts": [{"host": h.name, "slots": h.slots, "line": h.line} for h in parsed.hosts],
            "warnings": list(parsed.warnings)}, indent=2))
        return
    from hvdtrain.display import hosts_table, print_warnings

    console = _console()
    console.print(hosts_table(parsed))
    print_warnings(console, parsed.warnings)


@app.command()
def plan(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    np: NpOpt = None,
    hosts: HostsOpt = None,
    hostfile: HostfileOpt = None,
    as_json: JsonOpt = False,
) -> None:
    """Show exactly what `hvdtrain run` would launch, and the numbers it derives. Launches nothing."""
    try:
        the_plan = _plan(recipe, overrides, np, hosts, hostfile)
    except UserError as exc:
        fail(exc)
    _print_plan(the_plan, as_json)


def _print_plan(the_plan, as_json: bool) -> None:
    if as_json:
        from hvdtrain.plan import plan_dict

        typer.echo(json.dumps(plan_dict(the_plan), indent=2))
    else:
        from hvdtrain.display import print_plan

        print_plan(_console(), the_plan)


@app.command()
def run(
    recipe: RecipeArg,
    overrides: OverridesArg = None,
    np: NpOpt = None,
    hosts: HostsOpt = None,
    hostfile: HostfileOpt = None,
    run_dir: Annotated[Optional[str], typer.Option(
        "--run-dir", help="Run directory (default: <launch.output_dir>/<recipe>-<timestamp>).")] = None,
    resume: Annotated[Optional[str], typer.Option(
        "--resume", help="Continue the run in this run directory from its newest valid checkpoint.")
    ] = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the plan (same as `hvdtrain plan`) and launch nothing.")] = False,
    no_check: Annotated[bool, typer.Option(
        "--no-check", help="Skip the pre-flight check of remote hosts (see `hvdtrain hosts --check`).")
    ] = False,
    as_json: JsonOpt = False,
) -> None:
    """Train: validate the recipe, print the plan, run horovodrun and draw live progress.

    The exit code is the run's: 0 when training finished, non-zero when it failed.
    """
    try:
        if resume and not dry_run:
            from hvdtrain.launch import resume_plan

            the_plan = resume_plan(resume, recipe, overrides or [], np, hosts, hostfile)
        else:
            the_plan = _plan(recipe, overrides, np, hosts, hostfile, run_dir or resume)
    except UserError as exc:
        fail(exc)
    if dry_run:
        _print_plan(the_plan, as_json)
        return
    from hvdtrain.launch import launch

    if not no_check:
        _preflight_remote(the_plan)
    try:
        code = launch(the_plan, resume=bool(resume), as_json=as_json)
    except UserError as exc:
        fail(exc)
    raise typer.Exit(code)


def _preflight_remote(the_plan) -> None:
    """Before launching on remote hosts, check them; refuse (exit 2) with the table if one fails."""
    from hvdtrain.preflight import check_hosts, is_local, local_addresses

    local = local_addresses()
    if all(is_local(h.name, local) for h in the_plan.hosts):
        return
    launch_cfg = the_plan.recipe.launch
    report = check_hosts([h.name for h in the_plan.hosts], launch_cfg.ssh_port,
                         launch_cfg.ssh_identity_file, 15.0, launch_cfg.network_interfaces)
    if not report["ok"]:
        from hvdtrain.display import print_preflight

        print_preflight(err_console, report)
        err_console.print("error: pre-flight check failed, nothing launched (fix the hosts above, "
                          "or skip the check with --no-check)", highlight=False)
        raise typer.Exit(2)


def main() -> None:
    app()
