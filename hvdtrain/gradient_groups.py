"""Which gradients go in one allreduce (``horovod.group_mb``): pure arithmetic on parameter sizes,
shared by the worker's optimizer (hvdtrain/worker/optim.py) and the forecast's cost model, so the
two count the same allreduces a step.

Groups of at least ``mb`` MB of float32 gradient, last parameter first (roughly the order backward
produces them), as DDP fills its buckets.
"""

from __future__ import annotations

MB = 2**20


def group_lengths(numels: list[int], mb: float) -> list[int] | None:
    """How many parameters each group holds, the groups in order from the last parameter
    (``numels``: each trainable parameter's elements, in the model's order); None for ``mb``
    <= 0 (Horovod's one allreduce per tensor) or no parameters."""
    if mb <= 0 or not numels:
        return None
    lengths, size = [0], 0
    for n in reversed(numels):
        if size >= mb * MB:
            lengths.append(0)
            size = 0
        lengths[-1] += 1
        size += n * 4
    return lengths
