"""Entry point of every rank under horovodrun: ``python -m hvdtrain.worker --run-dir DIR``.

The worker loads exactly the resolved recipe the CLI validated and wrote to ``DIR/recipe.yaml``.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m hvdtrain.worker",
                                     description="hvdtrain training worker (started by horovodrun)")
    parser.add_argument("--run-dir", type=Path, required=True)
    parser.add_argument("--resume", action="store_true",
                        help="continue from the newest valid checkpoint in RUN_DIR/checkpoints")
    args = parser.parse_args(argv)

    from hvdtrain.errors import UserError
    from hvdtrain.train import run

    try:
        return run(args.run_dir, resume=args.resume)
    except UserError as exc:  # bad data directory etc.: the message is the whole story
        print(f"error: {exc.render()}", file=sys.stderr, flush=True)
        code = 2
    except BaseException:  # noqa: BLE001 - any crash: report it, then leave at once
        traceback.print_exc()
        code = 1
    # Exit without Horovod's atexit shutdown: otherwise a peer may die of "Horovod has been shut
    # down" first and horovodrun reports it (and drops this rank's traceback) instead of this rank.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


if __name__ == "__main__":
    sys.exit(main())
