"""Keep the memory a training step frees in this process's heap, for the next step to reuse.

PyTorch's CPU allocator is plain ``malloc``. glibc hands freed blocks back to the kernel when they
were ``mmap``-ed (above ``M_MMAP_THRESHOLD``) or when the free top of the heap grows past
``M_TRIM_THRESHOLD``, and the next step then page-faults the same gradients, activations and fp16
copies back in, zero-filled. Measured on the width-64 synthetic-bench model (1.2 M parameters in
29 gradients): Horovod's fp16 compress + decompress took 2.7 ms a step with glibc's defaults and
0.26 ms with both thresholds raised; raising the mmap threshold alone gave 2.4 ms. glibc moves
both thresholds with what was freed, so whether a process faults every step differs from run to
run (40 tensors of 1 MiB a step, 8 runs: 5 faulted ~10,000 pages a step, 3 none).

The CUDA allocator already caches its blocks; this is about host memory. Set
``HVDTRAIN_MALLOC=default`` to keep glibc's behaviour (a process that must give memory back).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os

# glibc's <malloc.h>: mallopt() parameters.
M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
# The highest mmap threshold glibc accepts on 64-bit (DEFAULT_MMAP_THRESHOLD_MAX, 4 MiB * sizeof
# long): blocks above it are still mapped and unmapped each time, rare below a huge batch.
MMAP_THRESHOLD_MAX = 32 * 1024 * 1024
ENV = "HVDTRAIN_MALLOC"


def keep_freed_memory() -> str:
    """Raise glibc's thresholds for this process (and the data-loader processes it forks later).

    Returns what happened, for the start event: ``kept``; ``default`` (``HVDTRAIN_MALLOC=default``);
    or ``unavailable`` (not glibc, e.g. musl or macOS: nothing changed)."""
    if os.environ.get(ENV, "").strip().lower() == "default":
        return "default"
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return "unavailable"
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # -1: never trim the heap top (mallopt(3): "Setting M_TRIM_THRESHOLD to -1 disables trimming
    # completely"); a fixed mmap threshold also stops glibc moving both thresholds on its own.
    # mallopt returns 1 on success, 0 when glibc refused the value.
    ok = mallopt(M_TRIM_THRESHOLD, -1) == 1 and mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_MAX) == 1
    return "kept" if ok else "unavailable"
