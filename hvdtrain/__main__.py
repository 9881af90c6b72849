"""The `hvdtrain` command (and `python -m hvdtrain`): the CLI, with Ctrl-C at any point of start-up
(while typer and rich are still being imported) ending quietly with exit code 130."""

import sys


def main() -> None:
    try:
        from hvdtrain.cli import main as cli_main

        cli_main()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
