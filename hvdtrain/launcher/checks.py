"""Pre-launch checks as pure judges: each takes facts already gathered (hvdtrain/launcher/
prelaunch.py gathers them: hostfiles, device files, memory, how Horovod was built) and returns
its problems as a list of messages, [] when all is well, so `plan` and `run` report every problem
at once. Rules the workers judge too live in hvdtrain/rules.py, written once."""

from __future__ import annotations

from dataclasses import dataclass

from hvdtrain.launcher.hosts import hostname_problem
from hvdtrain.launcher.plan import Plan
from hvdtrain.recipe import IN_MEMORY, Recipe, tracking_uri_problem
from hvdtrain.rules import device_problems

# Keys a checkpoint depends on: changing them between runs makes the saved state unusable.
RESUME_BOUND = ("model", "data.dataset", "data.synthetic.image_shape", "data.synthetic.num_classes",
                "optimizer.name")
LOCAL = ("localhost", "127.0.0.1")


@dataclass(frozen=True)
class Machine:
    """This machine, as the checks need it."""

    gpus: int  # NVIDIA device files (/dev/nvidia0, ...)
    memory_bytes: int
    build: dict | None  # how the installed Horovod was built (None: not recorded)
    mlflow: bool = False  # the mlflow package is importable here (the launcher logs the run)
    tracking_uri: str | None = None  # MLFLOW_TRACKING_URI


def machine_problems(plan: Plan, machine: Machine) -> list[str]:
    """Everything this machine can tell before launch."""
    return [*controller_problems(plan.recipe, machine.build), *gpu_problems(plan, machine.gpus),
            *memory_problems(plan, machine.memory_bytes),
            *tracking_problems(plan.recipe, machine.mlflow, machine.tracking_uri)]


def tracking_problems(recipe: Recipe, installed: bool, env_uri: str | None) -> list[str]:
    """tracking.mlflow needs MLflow in this process and a server or store to log to."""
    if not recipe.tracking.mlflow:
        return []
    out = [] if installed else [
        "tracking.mlflow is true, but MLflow is not installed here (the hvdtrain process logs "
        "the run): pip install 'hvdtrain[mlflow]', or set tracking.mlflow=false"]
    if recipe.tracking.uri is None and not env_uri:
        out.append("tracking.mlflow is true, but no tracking server is named: set tracking.uri "
                   "(e.g. http://127.0.0.1:5000) or MLFLOW_TRACKING_URI")
    elif recipe.tracking.uri is None and env_uri:
        out += [p for p in [tracking_uri_problem(env_uri, "MLFLOW_TRACKING_URI")] if p]
    return out


def controller_problems(recipe: Recipe, build: dict | None) -> list[str]:
    """launch.controller must be one the installed Horovod was built with (recorded at install)."""
    controller = recipe.launch.controller
    if build is None or build.get("controllers", {}).get(controller, True):
        return []
    have = ", ".join(k for k, v in build["controllers"].items() if v) or "none"
    return [f"launch.controller={controller}, but the installed Horovod was built without "
            f"{controller.upper()} (controllers: {have}): use launch.controller=gloo, or rebuild "
            f"Horovod with {'mpicxx' if controller == 'mpi' else controller} available "
            "(python -m hvdtrain.setup.horovod_build --force)"]


def gpu_problems(plan: Plan, gpus: int) -> list[str]:
    """When every rank runs on this machine, its GPUs decide (remote hosts: their workers do)."""
    if not all(h.name in LOCAL for h in plan.hosts):
        return []
    train = plan.recipe.train
    return device_problems(train.device, train.precision, gpus, plan.np, "this machine")


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


def memory_problems(plan: Plan, total: int) -> list[str]:
    """Every worker loads the whole data set into memory: refuse what cannot fit on a host (each
    host is assumed to have this machine's memory)."""
    per_worker = dataset_bytes(plan.recipe, (plan.train_samples, plan.eval_samples))
    busiest = max(plan.hosts, key=lambda h: h.slots)
    need = per_worker * busiest.slots
    if need <= total:
        return []
    gib = 1 << 30
    return [f"the data set needs about {per_worker / gib:,.1f} GiB in every worker "
            f"({need / gib:,.1f} GiB for the {busiest.slots} worker(s) on {busiest.name}), more "
            f"than this machine's {total / gib:,.1f} GiB: lower data.synthetic.train_samples / "
            "eval_samples or image_shape, or use fewer workers per host"]


def discovery_problems(script: str, is_file: bool, executable: bool) -> list[str]:
    """horovodrun runs ``elastic.host_discovery_script`` on this host: an executable file."""
    if not is_file:
        return [f"elastic.host_discovery_script {script!r} is not a file: give the path of an "
                "executable script that prints one 'host:slots' per line (a command with "
                "arguments is not allowed: put it in a script)"]
    if not executable:
        import shlex

        return [f"elastic.host_discovery_script {script} is not executable: "
                f"chmod +x {shlex.quote(script)}"]
    return []


def discovery_output_problems(script: str, ran: tuple[int, str, str] | str, min_np: int,
                              slots_per_host: int | None) -> list[str]:
    """What one run of the discovery script (preflight.run_discovery) says about the elastic
    run: a failure, or too few hosts or slots, which would make horovodrun wait until
    elastic.elastic_timeout."""
    if isinstance(ran, str):
        return [ran]
    code, stdout, stderr = ran
    if code != 0:
        tail = (stderr.strip().splitlines() or ["(no stderr)"])[-1]
        return [f"elastic.host_discovery_script {script} failed (exit code {code}): {tail}"]
    hosts, bad = {}, []
    for number, line in enumerate(map(str.strip, stdout.splitlines()), 1):
        name, colon, slots = line.partition(":")
        problem = _discovery_line_problem(line)
        if problem:
            bad.append(f"elastic.host_discovery_script {script} printed line {number} "
                       f"{line!r}: {problem}; horovodrun reads one HOST or HOST:SLOTS "
                       "per line and would fail on it")
        elif name:
            hosts[name] = int(slots) if colon else (slots_per_host or 1)
    if bad:
        return bad
    found = f"it printed {len(hosts)} host(s) with {sum(hosts.values())} slot(s)"
    if len(hosts) < 2:
        return [f"elastic.host_discovery_script {script}: {found}; Horovod's elastic mode needs "
                "at least 2 hosts (\"Cannot run in fault tolerance mode with fewer than 2 hosts\") "
                "and would wait for them until elastic.elastic_timeout"]
    if sum(hosts.values()) < min_np:
        return [f"elastic.host_discovery_script {script}: {found}, fewer than elastic.min_np="
                f"{min_np}: horovodrun would wait for more until elastic.elastic_timeout"]
    return []


def _discovery_line_problem(line: str) -> str | None:
    """What horovodrun's discovery parser (``host:slots``, split on ':', int(slots)) would trip
    on in one line of the script's output; None for a good or empty line."""
    if not line:
        return None
    name, colon, slots = line.partition(":")
    if line.count(":") > 1 or not name:
        return hostname_problem(line) if name else "no host name"
    if colon and not (slots.isdigit() and int(slots) > 0):
        return f"slots {slots!r} is not a positive whole number"
    return hostname_problem(name)


def flatten(data: object, prefix: str = "") -> dict[str, object]:
    """Nested settings as dotted keys: {"a": {"b": 1}} -> {"a.b": 1}."""
    if isinstance(data, dict):
        out: dict[str, object] = {}
        for k, v in data.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix.rstrip("."): data}


def recipe_changes(saved: Recipe, new: Recipe) -> list[str]:
    """Every dotted key that differs, as ``key: old -> new``, sorted."""
    a, b = flatten(saved.model_dump(mode="json")), flatten(new.model_dump(mode="json"))

    def shown(values: dict[str, object], key: str) -> str:
        return repr(values[key]) if key in values else "(unset)"

    missing = object()  # (a key set on one side only differs, whatever the other holds)
    return [f"{key}: {shown(a, key)} -> {shown(b, key)}" for key in sorted(set(a) | set(b))
            if a.get(key, missing) != b.get(key, missing)]


def resume_conflicts(saved: Recipe, new: Recipe) -> list[str]:
    """The changes (``recipe_changes``) the checkpoints cannot take (RESUME_BOUND)."""
    return [change for change in recipe_changes(saved, new)
            if any(change.startswith((bound + ":", bound + ".")) for bound in RESUME_BOUND)]


def in_use(given: str, pid: object) -> str:
    """Another launch holds the run directory (its lock: rundir.RunDir.locked)."""
    who = f"hvdtrain (pid {pid})" if isinstance(pid, int) else "another hvdtrain"
    stop = f"kill -INT {pid}" if isinstance(pid, int) else "Ctrl-C in its terminal"
    return (f"{given} is in use: {who} is running in it now; wait for it to end, or stop it "
            f"({stop}) and resume then")


def class_changes(recorded: list[str] | None, now: list[str], data_dir: str) -> list[str]:
    """An image folder whose classes differ from the ones the checkpoints were trained with."""
    if recorded is None or now == recorded:
        return []
    return [f"classes in {data_dir}/train: added {sorted(set(now) - set(recorded))}, "
            f"removed {sorted(set(recorded) - set(now))} (class indices would no longer match)"]


def nothing_to_do(plan: Plan) -> str:
    return (f"nothing to do: {plan.run_dir} has completed {plan.epochs_done} epoch(s) and "
            f"train.epochs is {plan.recipe.train.epochs}; to train longer, resume with a larger "
            f"train.epochs, e.g. train.epochs={plan.epochs_done + plan.recipe.train.epochs}")
