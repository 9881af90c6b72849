"""The launch plan: derived numbers and the exact horovodrun argv, for a new run or for continuing
one (``--resume``). ``build_plan`` and ``build_argv`` are pure (prelaunch.py gathers what they
need); ``build_argv`` returns a list and is unit-tested list-for-list. No torch, no horovod.
"""

from __future__ import annotations

import shlex
import sys
from dataclasses import dataclass, field
from pathlib import Path

from hvdtrain.errors import UserError
from hvdtrain.launcher.hosts import Host, HostList, assign
from hvdtrain.recipe import MIN_POWERSGD_WARMUP, Recipe, lr_config, recipe_steps_per_epoch
from hvdtrain.recipe_warnings import recipe_warnings
from hvdtrain.recipe_files import LoadedRecipe
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
    resume_changes: list[str] = field(default_factory=list)  # against the run's own recipe
    components: list[tuple[str, str, str]] = field(default_factory=list)  # (key, spec, its file)
    classes: list[str] | None = None  # an image folder's, in class-index order
    wire: str | None = None  # compression powersgd: the bytes a step sends (powersgd_layout.py)
    forecast: str | None = None  # from a profile an earlier `forecast` kept (launcher/forecast.py)
    warnings: list[str] = field(default_factory=list)
    recipe_path: Path | None = None  # the recipe file the plan was made from

    @property
    def command(self) -> str:
        """The argv, shell-quoted for copy and paste (display only: it is never run by a shell)."""
        return shlex.join(self.argv)


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


def build_plan(loaded: LoadedRecipe, host_list: HostList, sizes: tuple[int, int], *,
               np: int | None, run_dir: Path, horovodrun: str, python: str | None = None,
               resume: bool = False) -> Plan:
    """The plan from what prelaunch.py gathered: ``host_list``, ``sizes`` ((train, eval) samples)
    and horovodrun's path. Pure: reads nothing, runs nothing."""
    recipe = loaded.recipe
    world = np or recipe.launch.np or host_list.total_slots
    assigned = assign(host_list, world)
    if recipe.elastic and not recipe.elastic.host_discovery_script and len(assigned) < 2:
        raise UserError(
            "elastic training needs at least 2 hosts (Horovod: \"Cannot run in fault tolerance mode "
            "with fewer than 2 hosts\"): list two or more hosts, set elastic.host_discovery_script, "
            "or remove the elastic section")
    train_n, eval_n = sizes
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
    recipe = with_powersgd_warmup(recipe, warm)
    env = dict(recipe.launch.env)
    argv = build_argv(recipe, assigned, world, worker_command(run_dir, python, resume),
                      horovodrun=horovodrun)
    return Plan(
        recipe_name=loaded.name, recipe=recipe, np=world, host_source=host_list.source,
        hosts=assigned, placement=placement(assigned), train_samples=train_n, eval_samples=eval_n,
        batch_size=recipe.data.batch_size,
        global_batch=recipe.data.batch_size * world * recipe.horovod.backward_passes_per_step,
        steps_per_epoch=spe, base_lr=recipe.optimizer.base_lr, peak_lr=peak_lr(cfg, world),
        warmup_steps=warm, lr_points=points, env=env, argv=argv, run_dir=run_dir, resume=resume,
        warnings=[*recipe_warnings(recipe), *host_list.warnings], recipe_path=loaded.path)


def with_powersgd_warmup(recipe: Recipe, lr_warmup: int) -> Recipe:
    """``horovod.powersgd.warmup_steps: null`` made the LR warmup's length (at least
    MIN_POWERSGD_WARMUP): a number in the run's recipe, so every rank (an elastic joiner too)
    switches to PowerSGD at the same step."""
    psgd = recipe.horovod.powersgd
    if recipe.horovod.compression != "powersgd" or psgd.warmup_steps is not None:
        return recipe
    steps = max(lr_warmup, MIN_POWERSGD_WARMUP)
    horovod = recipe.horovod.model_copy(update={"powersgd": psgd.model_copy(
        update={"warmup_steps": steps})})
    return recipe.model_copy(update={"horovod": horovod})


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
        "resume_changes": plan.resume_changes,
        "components": [{"key": k, "spec": spec, "file": f} for k, spec, f in plan.components],
        "classes": plan.classes,
        "wire": plan.wire,
        "forecast": plan.forecast,
        "warnings": plan.warnings,
        "recipe_resolved": plan.recipe.model_dump(mode="json"),
    }
