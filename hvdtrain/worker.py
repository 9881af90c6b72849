"""Entry point of every rank under horovodrun: ``python -m hvdtrain.worker --run-dir DIR``.

The worker loads exactly the resolved recipe the CLI validated and wrote to ``DIR/recipe.yaml``.
"""

from __future__ import annotations

import argparse
import sys
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
        return 2


if __name__ == "__main__":
    sys.exit(main())
