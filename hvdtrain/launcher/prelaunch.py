"""`plan` and `run` before anything starts: gather the facts (the recipe, hostfiles or the Slurm
allocation, data-set sizes, the components' probe, this machine), build the plan from them
(``build_plan`` is pure), and judge them (hvdtrain/launcher/checks.py), reporting every problem
at once. The only module of the planning path that reads files or runs anything; no torch."""

from __future__ import annotations

import importlib.util
import json
import os
import sys
from pathlib import Path

from hvdtrain.builtin_files import missing
from hvdtrain.errors import UserError
from hvdtrain.imagefolder import scan
from hvdtrain.launcher import checks
from hvdtrain.launcher.hosts import (
    THIS_MACHINE,
    Host,
    HostList,
    is_this_machine,
    parse_hostfile,
    parse_hosts_arg,
)
from hvdtrain.launcher.plan import DATASET_SIZES, Plan, build_plan, default_horovodrun
from hvdtrain.launcher.profiles import plan_line
from hvdtrain.launcher.resumable import resume_run
from hvdtrain.launcher.slurm import allocation_hosts, in_allocation
from hvdtrain.machine import horovod_build_info
from hvdtrain.recipe import Recipe
from hvdtrain.recipe_files import LoadedRecipe, load_recipe
from hvdtrain.rundir import default_run_dir


def plan_run(recipe: str | None, overrides: list[str] | None = None, *, np: int | None = None,
             hosts: str | None = None, hostfile: str | None = None, run_dir: str | None = None,
             resume: str | None = None, slurm: bool | None = None) -> Plan:
    """What `hvdtrain plan` / `hvdtrain run` would launch: a new run in ``run_dir`` (default
    ``<launch.output_dir>/<recipe>-<timestamp>``), or the continuation of the run in ``resume``
    (its own recipe with ``overrides`` on top: hvdtrain/launcher/resumable.py)."""
    overrides = list(overrides or [])
    if resume is None:
        if recipe is None:
            raise UserError("give a recipe: a shipped name (see `hvdtrain recipes`) or a YAML "
                            "path; RECIPE may be left out only with --resume RUN_DIR")
        loaded = load_recipe(recipe, overrides)
        folder = Path(run_dir).resolve() if run_dir else default_run_dir(loaded)
        return _checked(make_plan(loaded, np=np, hosts=hosts, hostfile=hostfile, slurm=slurm,
                                  run_dir=folder))
    if recipe is not None and "=" in recipe and not Path(recipe).exists():
        recipe, overrides = None, [recipe, *overrides]  # `run --resume DIR KEY=VALUE ...`
    found = resume_run(resume, recipe, overrides)
    if run_dir and Path(run_dir).resolve() != found.folder.path:
        raise UserError(f"--run-dir {run_dir} and --resume {resume} name different directories: "
                        "--resume continues the run in its own directory; drop --run-dir")
    plan = _checked(make_plan(found.loaded, np=np, hosts=hosts, hostfile=hostfile, slurm=slurm,
                              run_dir=found.folder.path, resume=True))
    plan.epochs_done, plan.resume_changes = found.epochs_done, found.changes
    plan.warnings += found.notes
    if plan.epochs_done >= plan.recipe.train.epochs:
        plan.warnings.append(checks.nothing_to_do(plan))
    return plan


def _checked(plan: Plan) -> Plan:
    """The plan, refused with every problem this machine has with it."""
    problems = checks.machine_problems(plan, this_machine())
    if problems:
        raise UserError(problems[0], problems[1:])
    return plan


def make_plan(loaded: LoadedRecipe, *, np: int | None = None, hosts: str | None = None,
              hostfile: str | None = None, slurm: bool | None = None, run_dir: Path,
              python: str | None = None, horovodrun: str | None = None,
              resume: bool = False) -> Plan:
    """The plan from the facts it needs: the host list, the data-set sizes (a component's from its
    probe), the discovery script and horovodrun's path."""
    recipe = loaded.recipe
    if np is not None and np < 1:
        raise UserError(f"--np must be at least 1, got {np}")
    script = recipe.elastic.host_discovery_script if recipe.elastic else None
    if script:
        path = Path(script).expanduser()
        problems = checks.discovery_problems(script, path.is_file(), os.access(path, os.X_OK))
        if problems:
            raise UserError(problems[0], problems[1:])
    host_list = resolve_hosts(recipe, np, hosts, hostfile, slurm)
    files = component_files(recipe)
    found = probe_components(recipe, files)
    folder = scan(recipe.data.data_dir or ".") if recipe.data.dataset == "imagefolder" else None
    sizes = ((found["train_samples"], found["eval_samples"]) if found else
             (len(folder.train), len(folder.val)) if folder else dataset_sizes(recipe))
    plan = build_plan(loaded, host_list, sizes, np=np, run_dir=run_dir, python=python,
                      horovodrun=horovodrun or default_horovodrun(), resume=resume)
    plan.warnings += builtin_files_problems(recipe, plan)
    plan.components = [(key, spec, str(path)) for key, spec, path in files]
    plan.classes = folder.classes if folder else None
    if recipe.horovod.compression == "powersgd":
        powersgd_wire(plan, found["shapes"] if found else model_shapes(recipe, plan.classes))
    plan.forecast = plan_line(recipe, found, len(plan.classes) if plan.classes else None,
                              [p.host for p in plan.placement], plan.np)
    return plan


def powersgd_wire(plan: Plan, shapes: list[list]) -> None:
    """The plan's line for PowerSGD's bytes per step, and a warning per layer it cannot factor."""
    from hvdtrain.powersgd_layout import describe, fallbacks, layout, wire

    cfg = plan.recipe.horovod.powersgd
    layers = layout([(name, tuple(shape)) for name, shape in shapes], cfg.rank,
                    cfg.min_compression_rate)
    plan.wire = describe(wire(layers, cfg.rank, 2 if cfg.rest == "fp16" else 4), cfg.rank)
    plan.warnings += fallbacks(layers, cfg.rank)


def model_shapes(recipe: Recipe, classes: list[str] | None) -> list[list]:
    """The built-in model's parameter shapes (the probe builds only the model: no data read)."""
    return _probe(recipe, ["--model", str(len(classes or []))],
                  "the model (to lay out PowerSGD)")["shapes"]


def this_machine() -> checks.Machine:
    import psutil

    return checks.Machine(gpus=len(list(Path("/dev").glob("nvidia[0-9]*"))),
                          memory_bytes=psutil.virtual_memory().total, build=horovod_build_info(),
                          mlflow=importlib.util.find_spec("mlflow") is not None,
                          tracking_uri=os.environ.get("MLFLOW_TRACKING_URI"))


def resolve_hosts(recipe: Recipe, np: int | None, hosts: str | None,
                  hostfile: str | None, slurm: bool | None = None) -> HostList:
    """--hosts / --hostfile, then the Slurm allocation (``slurm``: None = when inside one), then the
    recipe's hosts; with none, this machine with np (or all cores) slots."""
    for flag, value in (("--hosts", hosts), ("--hostfile", hostfile)):
        if value is not None and not value.strip():
            raise UserError(f"{flag} is empty: give {'host:slots,...' if flag == '--hosts' else 'a path'}"
                            ", or leave it out to run on this machine")
    if hosts and hostfile:
        raise UserError("give either --hosts or --hostfile, not both")
    if slurm and (hosts or hostfile):
        raise UserError("give either --slurm (the allocation's hosts) or --hosts/--hostfile, "
                        "not both")
    if hosts:
        return parse_hosts_arg(hosts)
    if hostfile:
        return parse_hostfile(hostfile)
    if slurm or (slurm is None and in_allocation()):
        return allocation_hosts()
    if recipe.launch.hosts:
        return parse_hosts_arg(recipe.launch.hosts, "launch.hosts")
    if recipe.launch.hostfile:
        return parse_hostfile(recipe.launch.hostfile)
    slots = np or recipe.launch.np or os.cpu_count() or 1
    return HostList(THIS_MACHINE, (Host("localhost", slots),))


def dataset_sizes(recipe: Recipe) -> tuple[int, int]:
    """(train, eval) samples, known without torch; a data component is asked by ``probe``."""
    data = recipe.data
    if data.dataset == "synthetic":
        return data.synthetic.train_samples, data.synthetic.eval_samples
    if data.dataset == "imagefolder":
        folder = scan(data.data_dir or ".")
        return len(folder.train), len(folder.val)
    if data.dataset == "component":
        raise UserError("the size of a data component is known only by building it: use "
                        "plan_run (it asks the component in a child process)")
    return DATASET_SIZES[data.dataset]


def builtin_files_problems(recipe: Recipe, plan: Plan) -> list[str]:
    """MNIST / CIFAR-10 files missing from data.data_dir: refused when every rank runs here (the
    worker would fail the same way after launch); a warning when other hosts read their own."""
    if recipe.data.dataset not in ("mnist", "cifar10"):
        return []
    problem = missing(recipe.data.dataset, Path(recipe.data.data_dir or ".").expanduser())
    if problem is None:
        return []
    if all(is_this_machine(h.name) for h in plan.hosts):
        raise UserError(problem)
    return [f"on this machine: {problem}; every host needs these files at the same path"]


def component_files(recipe: Recipe) -> list[tuple[str, str, Path]]:
    """(key, spec, file) of each component the recipe names: the code it runs on every rank.
    Refuses a module outside the user's project (hvdtrain/component_paths.py)."""
    from hvdtrain.component_paths import component_file

    found, problems = [], []
    for key, spec in (("data.component", recipe.data.component),
                      ("model.component", recipe.model.component)):
        if spec:
            try:
                found.append((key, spec, component_file(key, spec)))
            except ValueError as exc:
                problems.append(str(exc))
    if problems:
        raise UserError(problems[0], problems[1:])
    return found


def probe_components(recipe: Recipe,
                     files: list[tuple[str, str, Path]] | None = None) -> dict | None:
    """For a recipe with ``data.component`` or ``model.component``: check the modules are the
    user's own, then build data and model once and push one batch through the model in a child
    process (torch stays out of this one); returns what it found (sizes, classes, parameters).
    Refuses the recipe with the reason. ``files``: ``component_files(recipe)`` when known."""
    specs = [spec for _, spec, _ in (component_files(recipe) if files is None else files)]
    if not specs:
        return None
    what = ", ".join(specs)
    if sys.stderr.isatty():
        print(f"checking {what} (building data and model once) ...", file=sys.stderr, flush=True)
    return _probe(recipe, [], what)


def _probe(recipe: Recipe, args: list[str], what: str) -> dict:
    """``python -m hvdtrain.worker.probe ARGS`` with the recipe on stdin, in a child process
    (torch stays out of this one), within launch.check_timeout; its JSON, or a UserError."""
    from hvdtrain.launcher.helpers import run_helper

    limit = recipe.launch.check_timeout
    ran = run_helper([sys.executable, "-m", "hvdtrain.worker.probe", *args], timeout=limit,
                     input_text=json.dumps(recipe.model_dump(mode="json")))
    said = (ran.stderr.strip().splitlines() or ran.stdout.strip().splitlines() or ["no output"])
    if ran.code is None:
        raise UserError(f"checking {what} took longer than launch.check_timeout={limit} s (does "
                        "it hang at import, or wait for something?): stopped it and every process "
                        f"it started; nothing launched. Its last line: {said[-1]}")
    try:
        found = json.loads(ran.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise UserError(f"checking {what} failed before launch: {said[-1]}") from None
    if "error" in found:
        raise UserError(found["error"])
    return found


def check_discovery_output(recipe: Recipe) -> None:
    """`run` only (it runs user code): the elastic host discovery script once, as horovodrun
    will, judged before launch."""
    from hvdtrain.launcher.preflight import run_discovery

    elastic = recipe.elastic
    if not (elastic and elastic.host_discovery_script):
        return
    script = elastic.host_discovery_script
    ran = run_discovery(script, recipe.launch.check_timeout)
    problems = checks.discovery_output_problems(script, ran, elastic.min_np,
                                                elastic.slots_per_host)
    if problems:
        raise UserError(f"{problems[0]}; nothing launched", problems[1:])
