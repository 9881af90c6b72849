"""hvdtrain: data-parallel CNN training with Horovod and PyTorch, driven by recipes.

Importing this package must stay cheap: no torch, no horovod (``hvdtrain --help`` depends on it).
"""

__version__ = "0.1.0"

# The one place the supported stack is pinned; the installer and `doctor` read these.
TORCH_VERSION = "2.13.0"
HOROVOD_VERSION = "0.28.1"
