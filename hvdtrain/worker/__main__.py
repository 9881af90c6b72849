"""``python -m hvdtrain.worker --run-dir DIR [--resume]``: what horovodrun starts on every rank."""

import sys

from hvdtrain.worker.main import main

if __name__ == "__main__":
    sys.exit(main())
