"""Entry point of every rank under horovodrun: ``python -m hvdtrain.worker --run-dir DIR``.

The worker loads exactly the resolved recipe the CLI validated and wrote to ``DIR/recipe.yaml``,
joins the job and runs the normal or the elastic mode. Its exit code is a ``WorkerExit``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

from hvdtrain import events
from hvdtrain.events import WorkerExit


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hvdtrain.worker",
                                     description="hvdtrain training worker (started by horovodrun)")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in RUN_DIR/checkpoints")
    args = parser.parse_args(argv)

    from hvdtrain.errors import UserError

    try:
        return run(args.run_dir, resume=args.resume)
    except UserError as exc:  # bad data directory etc.: the message is the whole story
        print(f"error: {exc.render()}", file=sys.stderr, flush=True)
        code = WorkerExit.BAD_INPUT
    except BaseException:  # noqa: BLE001 - any crash: report it, then leave at once
        traceback.print_exc()
        code = WorkerExit.CRASHED
    finally:
        events.flush()  # held progress events (events._Stream) go out before the process ends
    # Exit without Horovod's atexit shutdown: otherwise a peer may die of "Horovod has been shut
    # down" first and horovodrun reports it (and drops this rank's traceback) instead of this rank.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def run(run_dir: Path, resume: bool) -> int:
    import horovod.torch as hvd

    from hvdtrain.rundir import RunDir
    from hvdtrain.worker import elastic, fixed
    from hvdtrain.worker.faults import from_env
    from hvdtrain.worker.heartbeat import Heartbeat
    from hvdtrain.worker.job import build_job

    folder = RunDir(run_dir)
    recipe = folder.read_recipe()
    hooks = from_env(folder)
    env_rank = int(os.environ.get("HOROVOD_RANK", "0"))
    beat = Heartbeat(env_rank).start()
    hooks.before_init(env_rank)
    # Horovod: join the job; with Gloo this is the rendezvous with every other rank (elastic:
    # later resets re-initialise inside hvd.elastic.run).
    hvd.init()
    job = build_job(recipe, folder, hooks, beat)
    mode = elastic if recipe.elastic is not None else fixed
    return int(mode.run(job, resume))
