"""Which gradients PowerSGD compresses, and the bytes a step puts on the wire: pure arithmetic on
parameter shapes, shared by the plan (launcher, from the probe's shapes) and the worker, so the
two never disagree.

A parameter of two or more dimensions is a matrix of ``rows = shape[0]`` by ``cols = the rest``
(a conv kernel: out_channels x in_channels*kh*kw). Rank ``r`` sends P (rows x r) and Q (cols x r)
instead of the matrix, so it pays when ``(rows + cols) * r * min_rate <= rows * cols`` (PyTorch's
``powerSGD_hook`` rule; its default rate is 2). A rank larger than the matrix's smaller side
has nothing more to approximate: that layer falls back to the uncompressed path, and the plan
says so. Everything else (biases, BatchNorm, small layers) goes uncompressed (``rest``: fp16 or
fp32), grouped.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

FACTOR_BYTES = 4  # P and Q go as float32


@dataclass(frozen=True)
class Layer:
    name: str
    shape: tuple[int, ...]
    rows: int
    cols: int
    compressed: bool
    rank_too_large: bool  # a matrix whose smaller side is below the rank: falls back

    @property
    def numel(self) -> int:
        return self.rows * self.cols


def layout(shapes: list[tuple[str, tuple[int, ...]]], rank: int, min_rate: float) -> list[Layer]:
    """Every trainable parameter (in order) with whether PowerSGD compresses its gradient."""
    out = []
    for name, shape in shapes:
        rows = shape[0] if shape else 1
        cols = math.prod(shape[1:])  # 1 for a vector or a scalar
        matrix = len(shape) >= 2
        too_large = matrix and rank > min(rows, cols)
        pays = matrix and not too_large and (rows + cols) * rank * min_rate <= rows * cols
        out.append(Layer(name, tuple(shape), rows, cols, pays, too_large))
    return out


@dataclass(frozen=True)
class Wire:
    """One optimizer step's gradient traffic (what one rank contributes to the allreduces)."""

    grad_bytes: int  # the float32 gradient
    wire_bytes: int  # what goes instead: P and Q for compressed layers, the rest as sent
    compressed_layers: int
    layers: int

    @property
    def ratio(self) -> float:
        return self.grad_bytes / max(self.wire_bytes, 1)


def wire(layers: list[Layer], rank: int, rest_bytes: int) -> Wire:
    """``rest_bytes``: bytes per element of the uncompressed gradients (2: fp16, 4: fp32)."""
    sent = sum((l.rows + l.cols) * rank * FACTOR_BYTES if l.compressed else l.numel * rest_bytes
               for l in layers)
    return Wire(sum(l.numel for l in layers) * 4, sent, sum(l.compressed for l in layers),
                len(layers))


def describe(w: Wire, rank: int) -> str:
    """'rank 4: 0.21 MB of 4.91 MB a step (23x), 12/30 tensors factored' (fits 80 columns
    behind the plan's row label)."""
    return (f"rank {rank}: {_mb(w.wire_bytes)} of {_mb(w.grad_bytes)} a step ({w.ratio:.0f}x), "
            f"{w.compressed_layers}/{w.layers} tensors factored")


def fallbacks(layers: list[Layer], rank: int) -> list[str]:
    """The plan's note for each matrix the rank is too large for."""
    return [f"{l.name} ({l.rows} x {l.cols}): horovod.powersgd.rank {rank} is larger than "
            f"its smaller side, so it is sent uncompressed" for l in layers if l.rank_too_large]


def _mb(n: int) -> str:
    if n < 1e6:
        return f"{n / 1e3:.1f} kB"
    return f"{n / 1e6:.2f} MB" if n < 1e7 else f"{n / 1e6:.0f} MB"
