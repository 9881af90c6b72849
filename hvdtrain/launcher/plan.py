"""The launch plan: derived numbers and the exact horovodrun argv, for a new run or for continuing
one (``--resume``). No I/O beyond reading the hostfile and a resumed run's saved recipe; no torch,
no horovod. ``build_argv`` is pure, returns a list and is unit-tested list-for-list.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hvdtrain.errors import UserError
from hvdtrain.launcher.hosts import Host, HostList, assign, parse_hostfile, parse_hosts_arg
from hvdtrain.launcher.slurm import allocation_hosts, in_allocation
from hvdtrain.imagefolder import scan
from hvdtrain.machine import horovod_build_info
from hvdtrain.recipe import (
    IN_MEMORY,
    LoadedRecipe,
    Recipe,
    load_recipe,
    lr_config,
    recipe_steps_per_epoch,
    recipe_warnings,
)
from hvdtrain.rundir import RunDir, default_run_dir
from hvdtrain.schedule import lr_at, peak_lr, warmup_steps

# Training-split sizes, for the plan's steps per epoch. digits: scikit-learn's 1797 images with a
# fixed stratified 80/20 split (data.py asserts the same numbers); mnist/cifar10: the standard files.
DATASET_SIZES = {"digits": (1437, 360), "mnist": (60000, 10000), "cifar10": (50000, 10000)}


@dataclass(frozen=True)
class Placement:
    rank: int
    host: str
    local_rank: int


@dataclass
class Plan:
    recipe_name: str
    recipe: Recipe
    np: int
    host_source: str
    hosts: list[Host]
    placement: list[Placement]
    train_samples: int
    eval_samples: int
    batch_size: int
    global_batch: int
    steps_per_epoch: int
    base_lr: float
    peak_lr: float
    warmup_steps: int
    lr_points: list[tuple[str, int, float]]
    env: dict[str, str]
    argv: list[str]
    run_dir: Path
    resume: bool = False
    epochs_done: int = 0  # with resume: the newest complete checkpoint's epoch
    warnings: list[str] = field(default_factory=list)
    recipe_path: Path | None = None  # the recipe file the plan was made from

    @property
    def command(self) -> str:
        """The argv, shell-quoted for copy and paste (display only: it is never run by a shell)."""
        return shlex.join(self.argv)


# Keys a checkpoint depends on: changing them between runs makes the saved state unusable.
RESUME_BOUND = ("model", "data.dataset", "data.synthetic.image_shape", "data.synthetic.num_classes",
                "optimizer.name")


def plan_run(recipe: str, overrides: list[str] | None = None, *, np: int | None = None,
             hosts: str | None = None, hostfile: str | None = None, run_dir: str | None = None,
             resume: str | None = None, slurm: bool | None = None) -> Plan:
    """What `hvdtrain plan` / `hvdtrain run` would launch: a new run in ``run_dir`` (default
    ``<launch.output_dir>/<recipe>-<timestamp>``), or the continuation of the run in ``resume``."""
    loaded = load_recipe(recipe, overrides or [])
    if resume:
        folder = Path(resume).resolve()
        check_resumable(RunDir(folder), loaded.recipe, resume)
        if run_dir and Path(run_dir).resolve() != folder:
            raise UserError(f"--run-dir {run_dir} and --resume {resume} name different directories: "
                            "--resume continues the run in its own directory; drop --run-dir")
    else:
        folder = Path(run_dir).resolve() if run_dir else default_run_dir(loaded)
    found = probe_components(loaded.recipe)
    sizes = (found["train_samples"], found["eval_samples"]) if found else None
    plan = build_plan(loaded, np=np, hosts=hosts, hostfile=hostfile, run_dir=folder,
                      resume=bool(resume), sizes=sizes, slurm=slurm)
    check_controller(plan.recipe, horovod_build_info())
    check_local_gpus(plan)
    check_memory(plan, _memory_bytes())
    if resume:
        newest = RunDir(folder).newest_complete_checkpoint()
        plan.epochs_done = newest[0] if newest else 0
        if plan.epochs_done >= plan.recipe.train.epochs:
            plan.warnings.append(nothing_to_do(plan))
    return plan


def nothing_to_do(plan: Plan) -> str:
    return (f"nothing to do: {plan.run_dir} has completed {plan.epochs_done} epoch(s) and "
            f"train.epochs is {plan.recipe.train.epochs}; to train longer, resume with a larger "
            f"train.epochs, e.g. train.epochs={plan.epochs_done + plan.recipe.train.epochs}")


def find_module(name: str) -> bool:
    """Whether ``name`` can be imported the way a worker will (the working directory, then
    PYTHONPATH, then this interpreter's path), found without running any of its code."""
    from importlib.machinery import PathFinder

    path = [os.getcwd(), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep)),
            *sys.path]
    parts = name.split(".")
    for i in range(len(parts)):
        spec = PathFinder.find_spec(".".join(parts[:i + 1]), path)
        if spec is None:
            return False
        path = list(spec.submodule_search_locations or [])
    return True


def probe_components(recipe: Recipe) -> dict | None:
    """For a recipe with ``data.component`` or ``model.component``: check the modules can be
    found here, then build data and model once in a child process (torch stays out of this one);
    returns what it found (sizes, classes, parameters). Refuses the recipe with the reason."""
    specs = [(key, spec) for key, spec in (("data.component", recipe.data.component),
                                           ("model.component", recipe.model.component)) if spec]
    if not specs:
        return None
    for key, spec in specs:
        module = spec.partition(":")[0]
        if not find_module(module):
            raise UserError(f"{key} {spec!r}: module {module} not found from {os.getcwd()} or "
                            "PYTHONPATH: run hvdtrain from the directory that holds it (workers "
                            "start in the same directory), or add its folder to PYTHONPATH")
    out = subprocess.run([sys.executable, "-m", "hvdtrain.worker.probe"],
                         input=json.dumps(recipe.model_dump(mode="json")), capture_output=True,
                         text=True, timeout=600)
    try:
        found = json.loads(out.stdout.strip().splitlines()[-1])
    except (IndexError, ValueError):
        raise UserError(f"checking {', '.join(s for _, s in specs)} failed before launch: "
                        + (out.stderr.strip().splitlines() or ["no output"])[-1]) from None
    if "error" in found:
        raise UserError(found["error"])
    return found


def check_local_gpus(plan: Plan) -> None:
    """When every rank runs on this machine, ``train.device: cuda`` and ``precision: fp16`` need
    its GPUs (NVIDIA's device files; remote hosts are judged by the workers themselves)."""
    train = plan.recipe.train
    wants_gpu = train.device == "cuda" or (train.precision == "fp16" and train.device == "auto")
    if not wants_gpu or not all(h.name in ("localhost", "127.0.0.1") for h in plan.hosts):
        return
    gpus = len(list(Path("/dev").glob("nvidia[0-9]*")))
    if gpus == 0:
        what = ("train.device=cuda" if train.device == "cuda"
                else "train.precision=fp16 (it runs on CUDA only)")
        raise UserError(f"{what}, but this machine has no NVIDIA GPU: use train.device=auto or "
                        "cpu, and train.precision=bf16 or fp32 on CPUs")
    if plan.np > gpus and train.device == "cuda":
        raise UserError(f"--np {plan.np} on this machine but it has {gpus} GPU(s): hvdtrain runs "
                        f"one GPU per process; use --np {gpus} or fewer")


def check_controller(recipe: Recipe, build: dict | None) -> None:
    """launch.controller must be one the installed Horovod was built with (recorded at install)."""
    controller = recipe.launch.controller
    if build is None or build.get("controllers", {}).get(controller, True):
        return
    have = ", ".join(k for k, v in build["controllers"].items() if v) or "none"
    raise UserError(f"launch.controller={controller}, but the installed Horovod was built without "
                    f"{controller.upper()} (controllers: {have}): use launch.controller=gloo, or "
                    f"rebuild Horovod with {'mpicxx' if controller == 'mpi' else controller} "
                    "available (python -m hvdtrain.setup.horovod_build --force)")


def dataset_bytes(recipe: Recipe, sizes: tuple[int, int]) -> int:
    """Bytes one worker holds for its in-memory data set (float32 images, int64 labels); 0 for
    data read from files as it is needed (image folders, components)."""
    data = recipe.data
    if data.dataset not in IN_MEMORY:
        return 0
    if data.dataset == "synthetic":
        c, h, w = data.synthetic.image_shape
        per_image = c * h * w
    else:
        per_image = {"digits": 64, "mnist": 28 * 28, "cifar10": 3 * 32 * 32}[data.dataset]
    return sum(sizes) * (4 * per_image + 8)


def check_memory(plan: Plan, total: int) -> None:
    """Every worker loads the whole data set into memory: refuse what cannot fit on a host (each
    host is assumed to have this machine's memory)."""
    per_worker = dataset_bytes(plan.recipe, (plan.train_samples, plan.eval_samples))
    busiest = max(plan.hosts, key=lambda h: h.slots)
    need = per_worker * busiest.slots
    if need > total:
        gib = 1 << 30
        raise UserError(f"the data set needs about {per_worker / gib:,.1f} GiB in every worker "
                        f"({need / gib:,.1f} GiB for the {busiest.slots} worker(s) on "
                        f"{busiest.name}), more than this machine's {total / gib:,.1f} GiB: lower "
                        "data.synthetic.train_samples / eval_samples or image_shape, or use fewer "
                        "workers per host")


def _memory_bytes() -> int:
    import psutil

    return psutil.virtual_memory().total


def check_resumable(folder: RunDir, recipe: Recipe, given: str) -> None:
    """Refuse to continue ``folder`` with a recipe whose changes its checkpoints cannot take."""
    if not folder.recipe_file.is_file():
        raise UserError(f"cannot resume {given}: no recipe.yaml there (is it an hvdtrain run "
                        "directory?)")
    saved = load_recipe(str(folder.recipe_file)).recipe  # an edited one gets file:line errors
    recorded = (folder.read_manifest() or {}).get("recipe_resolved")
    if isinstance(recorded, dict):  # what the checkpoints were trained with, even if recipe.yaml
        try:                        # was edited since
            saved = Recipe.model_validate(recorded)
        except ValueError:
            pass  # a manifest from another version: recipe.yaml is all we have
    conflicts = resume_conflicts(saved, recipe) + class_changes(folder, recipe)
    if conflicts:
        raise UserError(f"cannot resume {given}: the recipe changes what its checkpoints depend "
                        "on; use the original values or start a new run:", conflicts)


def class_changes(folder: RunDir, recipe: Recipe) -> list[str]:
    """An image folder whose classes differ from the ones the checkpoints were trained with."""
    recorded = (folder.read_manifest() or {}).get("classes")
    if recipe.data.dataset != "imagefolder" or recorded is None:
        return []
    now = scan(recipe.data.data_dir or ".").classes
    if now == recorded:
        return []
    return [f"classes in {recipe.data.data_dir}/train: added {sorted(set(now) - set(recorded))}, "
            f"removed {sorted(set(recorded) - set(now))} (class indices would no longer match)"]


def _flatten(data: object, prefix: str = "") -> dict[str, object]:
    if isinstance(data, dict):
        out: dict[str, object] = {}
        for k, v in data.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def resume_conflicts(saved: Recipe, new: Recipe) -> list[str]:
    """Dotted keys (with old -> new values) that differ where the checkpoint depends on them."""
    a, b = _flatten(saved.model_dump(mode="json")), _flatten(new.model_dump(mode="json"))
    out = []
    for key in sorted(set(a) | set(b)):
        if any(key == bound or key.startswith(bound + ".") for bound in RESUME_BOUND) \
                and a.get(key) != b.get(key):
            out.append(f"{key}: {a.get(key)!r} -> {b.get(key)!r}")
    return out


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


def check_discovery_script(script: str) -> None:
    """horovodrun runs ``elastic.host_discovery_script`` on this host: it must be an executable
    file (not a command line)."""
    path = Path(script).expanduser()
    if not path.is_file():
        raise UserError(f"elastic.host_discovery_script {script!r} is not a file: give the path of "
                        "an executable script that prints one 'host:slots' per line (a command "
                        "with arguments is not allowed: put it in a script)")
    if not os.access(path, os.X_OK):
        raise UserError(f"elastic.host_discovery_script {script} is not executable: "
                        f"chmod +x {shlex.quote(script)}")


def placement(hosts: list[Host]) -> list[Placement]:
    """horovodrun fills hosts in -H order: ranks 0..s1-1 on the first host, and so on."""
    out, rank = [], 0
    for h in hosts:
        for local in range(h.slots):
            out.append(Placement(rank, h.name, local))
            rank += 1
    return out


def build_argv(recipe: Recipe, hosts: list[Host], np: int, worker: list[str], *,
               horovodrun: str = "horovodrun") -> list[str]:
    """The exact horovodrun argv for this recipe and host assignment."""
    hv, launch, elastic = recipe.horovod, recipe.launch, recipe.elastic
    argv = [horovodrun, "-np", str(np)]
    if elastic and elastic.host_discovery_script:
        # horovodrun runs the script through /bin/sh: quoted, the shell sees one word.
        argv += ["--host-discovery-script", shlex.quote(elastic.host_discovery_script)]
    else:
        # Always a normalized -H covering exactly np slots, never the user's hostfile.
        argv += ["-H", ",".join(f"{h.name}:{h.slots}" for h in hosts)]
    if elastic:
        argv += ["--min-np", str(elastic.min_np)]
        if elastic.max_np is not None:
            argv += ["--max-np", str(elastic.max_np)]
        if elastic.slots_per_host is not None:
            argv += ["--slots-per-host", str(elastic.slots_per_host)]
        argv += ["--elastic-timeout", str(elastic.elastic_timeout)]
        if elastic.reset_limit is not None:
            argv += ["--reset-limit", str(elastic.reset_limit)]
        if elastic.cooldown_range is not None:
            lo, hi = elastic.cooldown_range
            argv += ["--blacklist-cooldown-range", str(lo), str(hi)]
    argv.append(f"--{launch.controller}")
    if launch.network_interfaces:
        argv += ["--network-interfaces", ",".join(launch.network_interfaces)]
    if launch.ssh_port is not None:
        argv += ["-p", str(launch.ssh_port)]
    if launch.ssh_identity_file:
        argv += ["-i", launch.ssh_identity_file]
    argv += ["--start-timeout", str(launch.start_timeout)]
    argv += ["--fusion-threshold-mb", str(hv.fusion_threshold_mb),
             "--cycle-time-ms", f"{hv.cycle_time_ms:g}",
             "--cache-capacity", str(hv.cache_capacity)]
    argv.append("--hierarchical-allreduce" if hv.hierarchical_allreduce
                else "--no-hierarchical-allreduce")
    if hv.timeline_file:
        argv += ["--timeline-filename", hv.timeline_file]
    if hv.autotune:
        argv.append("--autotune")
        if hv.autotune_log_file:
            argv += ["--autotune-log-file", hv.autotune_log_file]
    argv += ["--stall-check-warning-time-seconds", str(hv.stall_check_warning_seconds),
             "--stall-check-shutdown-time-seconds", str(hv.stall_check_shutdown_seconds)]
    if launch.controller == "gloo":
        argv += ["--gloo-timeout-seconds", str(hv.gloo_timeout_seconds)]
    # No --output-filename: horovodrun 0.28.1 crashes with it at -np 1 (log10(0) in _pad_rank);
    # hvdtrain writes the per-rank logs itself from the prefixed stream.
    return argv + list(worker)


def worker_command(run_dir: Path, python: str | None = None, resume: bool = False) -> list[str]:
    """What each rank runs. The interpreter path must exist on every host (horovodrun's rule)."""
    argv = [python or sys.executable, "-m", "hvdtrain.worker", "--run-dir", str(run_dir)]
    return argv + ["--resume"] if resume else argv


def default_horovodrun() -> str:
    beside = Path(sys.executable).parent / "horovodrun"
    return str(beside) if beside.exists() else "horovodrun"


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
    return HostList("this machine", (Host("localhost", slots),))


def build_plan(loaded: LoadedRecipe, *, np: int | None = None, hosts: str | None = None,
               hostfile: str | None = None, run_dir: Path, python: str | None = None,
               horovodrun: str | None = None, resume: bool = False,
               sizes: tuple[int, int] | None = None, slurm: bool | None = None) -> Plan:
    """``sizes``: (train, eval) samples when known already (a component's, from ``probe``)."""
    recipe = loaded.recipe
    if np is not None and np < 1:
        raise UserError(f"--np must be at least 1, got {np}")
    if recipe.elastic and recipe.elastic.host_discovery_script:
        check_discovery_script(recipe.elastic.host_discovery_script)
    host_list = resolve_hosts(recipe, np, hosts, hostfile, slurm)
    world = np or recipe.launch.np or host_list.total_slots
    assigned = assign(host_list, world)
    if recipe.elastic and not recipe.elastic.host_discovery_script and len(assigned) < 2:
        raise UserError(
            "elastic training needs at least 2 hosts (Horovod: \"Cannot run in fault tolerance mode "
            "with fewer than 2 hosts\"): list two or more hosts, set elastic.host_discovery_script, "
            "or remove the elastic section")
    train_n, eval_n = sizes or dataset_sizes(recipe)
    spe = recipe_steps_per_epoch(recipe, train_n, world)
    cfg = lr_config(recipe)
    total = spe * recipe.train.epochs
    warm = min(warmup_steps(cfg, spe), total)
    marks = [("first step", 0), ("mid warmup", warm // 2), ("warmup end", warm - 1),
             ("mid training", total // 2), ("last step", total - 1)]
    points, seen = [], set()
    for label, step in marks:
        if 0 <= step < total and step not in seen:
            seen.add(step)
            points.append((label, step, lr_at(step, spe, world, cfg)))
    points.sort(key=lambda p: p[1])
    env = dict(recipe.launch.env)
    argv = build_argv(recipe, assigned, world, worker_command(run_dir, python, resume),
                      horovodrun=horovodrun or default_horovodrun())
    return Plan(
        recipe_name=loaded.name, recipe=recipe, np=world, host_source=host_list.source,
        hosts=assigned, placement=placement(assigned), train_samples=train_n, eval_samples=eval_n,
        batch_size=recipe.data.batch_size,
        global_batch=recipe.data.batch_size * world * recipe.horovod.backward_passes_per_step,
        steps_per_epoch=spe, base_lr=recipe.optimizer.base_lr, peak_lr=peak_lr(cfg, world),
        warmup_steps=warm, lr_points=points, env=env, argv=argv, run_dir=run_dir, resume=resume,
        warnings=[*recipe_warnings(recipe), *host_list.warnings], recipe_path=loaded.path)


def plan_dict(plan: Plan) -> dict:
    """The plan as JSON-ready data (``--json``)."""
    return {
        "recipe": plan.recipe_name,
        "np": plan.np,
        "host_source": plan.host_source,
        "hosts": [{"host": h.name, "slots": h.slots} for h in plan.hosts],
        "placement": [p.__dict__ for p in plan.placement],
        "train_samples": plan.train_samples,
        "eval_samples": plan.eval_samples,
        "batch_size_per_worker": plan.batch_size,
        "global_batch_size": plan.global_batch,
        "steps_per_epoch": plan.steps_per_epoch,
        "epochs": plan.recipe.train.epochs,
        "base_lr": plan.base_lr,
        "peak_lr": plan.peak_lr,
        "warmup_steps": plan.warmup_steps,
        "lr_points": [{"label": label, "step": s, "lr": lr} for label, s, lr in plan.lr_points],
        "device": plan.recipe.train.device,
        "precision": plan.recipe.train.precision,
        "compression": plan.recipe.horovod.compression,
        "op": plan.recipe.horovod.op,
        "env": plan.env,
        "argv": plan.argv,
        "command": plan.command,
        "run_dir": str(plan.run_dir),
        "resume": plan.resume,
        "epochs_done": plan.epochs_done,
        "warnings": plan.warnings,
        "recipe_resolved": plan.recipe.model_dump(mode="json"),
    }
