"""The `hvdtrain` command line: thin Typer forwarders to hvdtrain/launcher/commands.py.

Bad input (``UserError``) is caught once, in ``main``: a message (and with ``--json`` a JSON object
on stdout), exit code 2, never a traceback. Nothing at module level imports torch or horovod:
`hvdtrain --help` must stay instant.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated, Optional

import typer

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


def _commands():
    from hvdtrain.launcher import commands

    return commands


RecipeArg = Annotated[str, typer.Argument(
    help="Recipe: a YAML path, or a shipped name such as digits-cnn (see `hvdtrain recipes`).")]
ResumableRecipeArg = Annotated[Optional[str], typer.Argument(
    help="Recipe: a YAML path, or a shipped name such as digits-cnn (see `hvdtrain recipes`). "
         "With --resume leave it out: the run continues with its own recipe (overrides on top).",
    show_default=False)]
OverridesArg = Annotated[Optional[list[str]], typer.Argument(
    help="Overrides as KEY=VALUE with dotted keys, e.g. optimizer.base_lr=0.1 train.epochs=3.",
    show_default=False)]
NpOpt = Annotated[Optional[int], typer.Option(
    "--np", help="Number of processes (default: the recipe's launch.np, else all slots).")]
HostsOpt = Annotated[Optional[str], typer.Option(
    "--hosts", help="Hosts as host:slots,... e.g. node1:2,node2:2 (instead of a hostfile).")]
HostfileOpt = Annotated[Optional[str], typer.Option(
    "--hostfile", help="Hostfile: lines of `host slots=N` or `host:N`; # comments allowed.")]
RunDirOpt = Annotated[Optional[str], typer.Option(
    "--run-dir", help="Run directory (default: <launch.output_dir>/<recipe>-<timestamp>).")]
ResumeOpt = Annotated[Optional[str], typer.Option(
    "--resume", help="Continue the run in this run directory from its newest valid checkpoint.")]
JsonOpt = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]
SlurmOpt = Annotated[Optional[bool], typer.Option(
    "--slurm/--no-slurm", help="Take hosts and slots from the Slurm allocation (default: when "
                               "SLURM_JOB_ID is set and no --hosts/--hostfile is given).",
    show_default=False)]


@app.command()
def doctor(as_json: Annotated[bool, typer.Option("--json", help="Print the findings as JSON.")]
           = False) -> None:
    """Check that this machine can run hvdtrain: Python, torch, Horovod build, network, ssh.

    Exit code 0 when it can; 1 with the fix for each problem when it cannot.
    """
    raise typer.Exit(_commands().doctor(as_json=as_json))


@app.command()
def recipes(as_json: JsonOpt = False) -> None:
    """List the shipped recipes with one-line descriptions."""
    raise typer.Exit(_commands().recipes(as_json=as_json))


@app.command()
def show(recipe: RecipeArg, overrides: OverridesArg = None, as_json: JsonOpt = False) -> None:
    """Print the fully resolved recipe (defaults and overrides applied), ready to copy and edit."""
    raise typer.Exit(_commands().show(recipe=recipe, overrides=overrides or [], as_json=as_json))


@app.command()
def validate(
    recipe_files: Annotated[list[str], typer.Argument(help="Recipes (paths or shipped names).")],
    hostfile: HostfileOpt = None, as_json: JsonOpt = False,
) -> None:
    """Check recipes (and a hostfile); print OK or every error. Exit 2 when anything is invalid."""
    raise typer.Exit(_commands().validate(recipe_files=recipe_files, hostfile=hostfile,
                                          as_json=as_json))


@app.command()
def hosts(
    hostfile: Annotated[Optional[str], typer.Argument(
        help="Hostfile to parse and validate (or --slurm).", show_default=False)] = None,
    check: Annotated[bool, typer.Option(
        "--check", help="Pre-flight: ssh to every host (in parallel) and compare its Python, torch, "
                        "Horovod and hvdtrain, interpreter path, working directory and network "
                        "interfaces with this host's.")] = False,
    ssh_port: Annotated[Optional[int], typer.Option("--ssh-port", help="ssh port (with --check).")] = None,
    ssh_identity_file: Annotated[Optional[str], typer.Option(
        "--ssh-identity-file", help="ssh private key (with --check).")] = None,
    network_interfaces: Annotated[Optional[str], typer.Option(
        "--network-interfaces", help="Interfaces you plan to use, e.g. eth0 (with --check).")] = None,
    timeout: Annotated[Optional[float], typer.Option(
        "--timeout", help="Seconds per host (with --check; default 15).")] = None,
    slurm: Annotated[bool, typer.Option(
        "--slurm", help="The hosts and slots of the Slurm allocation you are in.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Parse and validate a hostfile: print the hosts and slots, or every error (exit 2).

    With --check, also probe every host the way horovodrun will reach it; exit 1 with the fix
    when a host would make horovodrun fail or hang.
    """
    raise typer.Exit(_commands().hosts(
        hostfile=hostfile, check=check, ssh_port=ssh_port, ssh_identity_file=ssh_identity_file,
        network_interfaces=network_interfaces, timeout=timeout, slurm=slurm, as_json=as_json))


@app.command()
def runs(folder: Annotated[str, typer.Argument(help="Folder of run directories.")] = "runs",
         as_json: JsonOpt = False) -> None:
    """List past and current runs, newest first: status, np, epochs done, best eval accuracy."""
    raise typer.Exit(_commands().runs(folder=folder, as_json=as_json))


@app.command()
def report(
    run_dirs: Annotated[list[str], typer.Argument(help="Run directories to plot (overlaid).")],
    out: Annotated[Optional[str], typer.Option(
        "-o", "--output", help="PNG to write (default: RUN_DIR/report.png for one run, else "
                               "./report.png).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Plot loss, accuracy, LR and images/s of runs into one PNG, and summarise them."""
    raise typer.Exit(_commands().report(run_dirs=run_dirs, out=out, as_json=as_json))


@app.command()
def plan(recipe: ResumableRecipeArg = None, overrides: OverridesArg = None, np: NpOpt = None,
         hosts: HostsOpt = None, hostfile: HostfileOpt = None, resume: ResumeOpt = None,
         slurm: SlurmOpt = None, as_json: JsonOpt = False) -> None:
    """Show exactly what `hvdtrain run` would launch, and the numbers it derives. Launches nothing."""
    raise typer.Exit(_commands().plan(recipe=recipe, overrides=overrides or [], np=np, hosts=hosts,
                     hostfile=hostfile, run_dir=None, resume=resume, slurm=slurm, as_json=as_json))


@app.command()
def run(
    recipe: ResumableRecipeArg = None, overrides: OverridesArg = None, np: NpOpt = None,
    hosts: HostsOpt = None, hostfile: HostfileOpt = None, slurm: SlurmOpt = None,
    run_dir: RunDirOpt = None, resume: ResumeOpt = None,
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
    commands = _commands()
    if dry_run:
        raise typer.Exit(commands.plan(recipe=recipe, overrides=overrides or [], np=np,
                                       hosts=hosts, hostfile=hostfile, run_dir=run_dir,
                                       resume=resume, slurm=slurm, as_json=as_json))
    raise typer.Exit(commands.run(recipe=recipe, overrides=overrides or [], np=np, hosts=hosts,
                                  hostfile=hostfile, run_dir=run_dir, resume=resume, slurm=slurm,
                                  no_check=no_check, as_json=as_json))


@app.command()
def sbatch(
    recipe: RecipeArg, overrides: OverridesArg = None,
    nodes: Annotated[int, typer.Option("--nodes", help="Nodes to allocate.")] = 1,
    ntasks_per_node: Annotated[int, typer.Option(
        "--ntasks-per-node", help="Training processes per node (one per GPU on GPU nodes).")] = 1,
    time: Annotated[Optional[str], typer.Option(
        "--time", help="Time limit: minutes, HH:MM:SS or D-HH:MM:SS.")] = None,
    partition: Annotated[Optional[str], typer.Option("--partition", help="Partition.")] = None,
    account: Annotated[Optional[str], typer.Option("--account", help="Account.")] = None,
    qos: Annotated[Optional[str], typer.Option("--qos", help="Quality of service.")] = None,
    gpus_per_node: Annotated[Optional[str], typer.Option(
        "--gpus-per-node", help="GPUs per node: 2 or a100:2.")] = None,
    cpus_per_task: Annotated[Optional[int], typer.Option(
        "--cpus-per-task", help="CPU cores per training process.")] = None,
    mem: Annotated[Optional[str], typer.Option("--mem", help="Memory per node, e.g. 32G.")] = None,
    job_name: Annotated[Optional[str], typer.Option(
        "--job-name", help="Job name (default: hvdtrain-<recipe>).")] = None,
    signal_seconds: Annotated[int, typer.Option(
        "--signal-seconds", help="Ask Slurm for SIGUSR1 this many seconds before the time limit "
                                 "or preemption: hvdtrain checkpoints, stops and requeues.")] = 120,
    requeue: Annotated[bool, typer.Option(
        "--requeue/--no-requeue", help="Let the job requeue itself after a stop (it resumes "
                                       "the same run directory).")] = True,
    run_dir: RunDirOpt = None,
    dry_run: Annotated[bool, typer.Option(
        "--dry-run", help="Print the batch script; write and submit nothing.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Submit a training run to Slurm: a batch script in a new run directory, then `sbatch`.

    The job runs `hvdtrain run` on the allocation's hosts. Before the time limit or a preemption
    Slurm sends SIGUSR1: the workers checkpoint mid-epoch, the job requeues itself and, when it
    starts again, resumes the same run directory. Follow it with `hvdtrain runs` or `squeue`.
    """
    from hvdtrain.launcher.sbatch import SbatchOptions

    slurm = SbatchOptions(nodes=nodes, ntasks_per_node=ntasks_per_node, time=time,
                          partition=partition, account=account, qos=qos,
                          gpus_per_node=gpus_per_node, cpus_per_task=cpus_per_task, mem=mem,
                          job_name=job_name, signal_seconds=signal_seconds, requeue=requeue)
    raise typer.Exit(_commands().sbatch(recipe=recipe, overrides=overrides or [], slurm=slurm,
                                        run_dir=run_dir, dry_run=dry_run, as_json=as_json))


@app.command()
def bench(
    recipe: RecipeArg, overrides: OverridesArg = None,
    np: Annotated[str, typer.Option(
        "--np", help="World sizes to measure, comma-separated.")] = "1,2",
    compression: Annotated[str, typer.Option(
        "--compression", help="Gradient compressions to measure: fp16, none, powersgd "
                               "(horovod.powersgd's rank; its warm-up is 2 steps here).")] = "fp16,none",
    hosts: HostsOpt = None, hostfile: HostfileOpt = None,
    warmup: Annotated[int, typer.Option("--warmup", help="Steps before timing starts.")] = 10,
    steps: Annotated[int, typer.Option("--steps", help="Timed steps per configuration.")] = 30,
    rounds: Annotated[int, typer.Option(
        "--rounds", help="Run the whole set this many times, interleaved, and report medians: "
                         "shared and cloud machines have slow spells of seconds to minutes.")] = 1,
    reference: Annotated[Optional[str], typer.Option(
        "--reference", help="ddp: also run torchrun + DistributedDataParallel on the same model, "
                            "batches and hosts, without and with fp16_compress_hook.")] = None,
    run_dir: Annotated[Optional[str], typer.Option(
        "--run-dir", help="Folder for the results (default: <launch.output_dir>/bench-<recipe>-"
                          "<timestamp>).")] = None,
    as_json: JsonOpt = False,
) -> None:
    """Measure training throughput of the recipe's model on synthetic input of its shape.

    One real launch per world size and compression: images/s in total and per rank, scaling
    efficiency against np=1, MB allreduced per step and the share of each step waiting for the
    allreduce. Data sets need no files. Exit 1 when a configuration failed.
    """
    raise typer.Exit(_commands().bench(
        recipe=recipe, overrides=overrides or [], np=np, compression=compression, hosts=hosts,
        hostfile=hostfile, warmup=warmup, steps=steps, rounds=rounds, reference=reference,
        run_dir=run_dir, as_json=as_json))


@app.command()
def forecast(
    recipe: RecipeArg, overrides: OverridesArg = None,
    np: Annotated[str, typer.Option("--np", help="World sizes, comma-separated.")] = "2,4,8,16,64",
    link: Annotated[str, typer.Option("--link", help="100mbit, 1gbit, 10gbit, 25gbit, 100gbit, "
                    "Gbit/s as a number, or measured: a Horovod allreduce probe between two of "
                    "--hosts/--hostfile, over ssh.")] = "1gbit",
    hosts: HostsOpt = None, hostfile: HostfileOpt = None,
    ranks_per_host: Annotated[Optional[int], typer.Option("--ranks-per-host", show_default=False,
                              help="Ranks a host (default: its slots, else 1).")] = None,
    compression: Annotated[str, typer.Option("--compression", help="Compressions to compare.")]
    = "none,fp16,powersgd",
    warmup: Annotated[int, typer.Option("--warmup", help="Steps before timing starts.")] = 5,
    steps: Annotated[int, typer.Option("--steps", help="Timed steps of the model.")] = 20,
    fresh: Annotated[bool, typer.Option("--fresh", help="Measure again.")] = False,
    explain: Annotated[bool, typer.Option("--explain", help="Print the arithmetic too.")] = False,
    as_json: JsonOpt = False,
) -> None:
    """Predict images/s and scaling for N ranks on a link, per compression, before renting.

    Measures the recipe's model here (seconds, kept in ~/.cache/hvdtrain/forecast; `plan` shows
    it afterwards), then the ring-allreduce cost model (launcher/costmodel.py): a band from
    communication not hidden to fully hidden behind backward, a point, the compression to use.
    """
    raise typer.Exit(_commands().forecast(
        recipe=recipe, overrides=overrides or [], np=np, compression=compression, link=link,
        hosts=hosts, hostfile=hostfile, ranks_per_host=ranks_per_host, warmup=warmup,
        steps=steps, fresh=fresh, explain=explain, as_json=as_json))


RunDirArg = Annotated[str, typer.Argument(help="A run directory `hvdtrain run` created.")]
CheckpointOpt = Annotated[Optional[str], typer.Option(
    "--checkpoint", help="best (checkpoints/best.pt: the highest eval accuracy), last (the newest "
                         "that loads) or a checkpoint file; default best, else last.",
    show_default=False)]


def _after():
    from hvdtrain.launcher import after

    return after


@app.command("eval")
def eval_(
    run_dir: RunDirArg,
    data: Annotated[Optional[str], typer.Option(
        "--data", help="Score on this folder instead of the run's held-out split: DIR/<class>/"
                       "<image> of the model's classes (matched by name), or for MNIST/CIFAR-10 "
                       "a folder of their files.", show_default=False)] = None,
    checkpoint: CheckpointOpt = None,
    np: Annotated[int, typer.Option(
        "--np", help="Processes (more than 1 runs under horovodrun on this machine).")] = 1,
    out: Annotated[Optional[str], typer.Option(
        "-o", "--output", help="Also draw the confusion matrix into this PNG.",
        show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Score a trained model: loss, top-1/top-5, per-class precision/recall/F1 and the confusion
    matrix, with exactly the run's preprocessing; every sample counted once."""
    raise typer.Exit(_after().eval_command(run_dir=run_dir, data=data, checkpoint=checkpoint,
                                           np=np, out=out, as_json=as_json))


@app.command()
def predict(
    run_dir: RunDirArg,
    inputs: Annotated[list[str], typer.Argument(
        help="Image files or folders of them (image-folder runs); .npy arrays for the built-in "
             "sets (N x C x H x W or one image, in the set's pixel units).")],
    checkpoint: CheckpointOpt = None,
    top_k: Annotated[int, typer.Option("--top-k", help="Classes to show per input.")] = 3,
    as_json: JsonOpt = False,
    as_csv: Annotated[bool, typer.Option("--csv", help="Print CSV rows: file, rank, class, "
                                                       "index, probability, error.")] = False,
) -> None:
    """Classify files with a trained model: the top classes and their probabilities. A file that
    cannot be read is reported on its line and the rest are still classified (exit code 1)."""
    raise typer.Exit(_after().predict_command(
        run_dir=run_dir, inputs=inputs, checkpoint=checkpoint, top_k=top_k, as_json=as_json,
        as_csv=as_csv))


@app.command()
def export(
    run_dir: RunDirArg,
    fmt: Annotated[str, typer.Option(
        "--format", help="safetensors (weights), torch-export (a .pt2 program) or onnx.")],
    checkpoint: CheckpointOpt = None,
    out: Annotated[Optional[str], typer.Option(
        "-o", "--output", help="File to write (default: RUN_DIR/export/<checkpoint>.<suffix>); "
                               "a JSON sidecar with the model card goes beside it.",
        show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Export a trained model for inference. Each export is reloaded and its outputs compared
    with the checkpoint's before it is reported done (max abs diff <= 1e-4)."""
    raise typer.Exit(_after().export_command(run_dir=run_dir, checkpoint=checkpoint, fmt=fmt,
                                             out=out, as_json=as_json))


@app.command()
def track(
    run_dir: RunDirArg,
    uri: Annotated[Optional[str], typer.Option(
        "--uri", help="MLflow tracking URI (default: the run's tracking.uri, else "
                      "MLFLOW_TRACKING_URI, else the server the run was logged to).",
        show_default=False)] = None,
    as_json: JsonOpt = False,
) -> None:
    """Upload a run to MLflow: what its launches could not send (the server was unreachable),
    or all of a run trained without tracking. Safe to repeat: nothing is sent twice."""
    raise typer.Exit(_commands().track(run_dir=run_dir, uri=uri, as_json=as_json))


def report_error(exc: UserError, as_json: bool) -> int:
    """The one place bad input is reported: the message on stderr (and JSON on stdout)."""
    from rich.console import Console
    from rich.markup import escape

    if as_json:
        typer.echo(json.dumps({"ok": False, "errors": exc.lines()}, indent=2))
    Console(stderr=True).print(f"[bold red]error:[/] {escape(exc.render())}", highlight=False,
                               soft_wrap=True)
    return exc.exit_code


def main() -> None:
    try:
        app()
    except UserError as exc:
        sys.exit(report_error(exc, as_json="--json" in sys.argv[1:]))
