"""`python -m hvdtrain` runs the CLI."""

from hvdtrain.cli import main

if __name__ == "__main__":
    main()
