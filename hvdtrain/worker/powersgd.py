"""PowerSGD gradient compression (Vogels, Karimireddy & Jaggi, NeurIPS 2019), as PyTorch's DDP
``powerSGD_hook`` does it, on Horovod's allreduce: ``horovod.compression: powersgd``.

Horovod's ``Compression`` API cannot express it (a compressor is stateless and its output is
summed), so the optimizer is not Horovod's DistributedOptimizer: after backward, ``reduce`` sends
each matrix-shaped gradient M (a conv kernel as out_channels x the rest;
hvdtrain/powersgd_layout.py says which) as two thin factors:

    M <- M + E                          error feedback: what earlier steps' factors missed
    P = M Q;   allreduce P (average);   P <- orthonormal columns of P
    Q = M^T P; allreduce Q (average)
    M_hat = P Q^T  (the gradient every rank applies);   E <- M - M_hat

with Q kept for the next step (warm start); each round's factors travel as one flat tensor. The
other gradients go as before (fp16 or fp32), concatenated into one tensor that travels with P
(one group: one cycle of Horovod's loop). The first ``warmup_steps`` optimizer steps send every
gradient that way, uncompressed, as PowerSGD recommends. Which path
a step takes depends only on the global step, so every rank makes the same collectives.

Q is the same on every rank (it is allreduced); E is each rank's own: a checkpoint carries Q and
every rank's E (gathered with the RNG states), so a resume continues bit-identically at the same
world size (another size starts E at zero). An elastic reset starts Q and E afresh on every rank.

Every Horovod call carries a ``# Horovod:`` comment saying why it is there.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Callable, Iterator

import horovod.torch as hvd
import torch

from hvdtrain.powersgd_layout import Wire, layout, wire
from hvdtrain.recipe import PowerSGDConfig


def orthonormal(p: torch.Tensor) -> torch.Tensor:
    """The columns of ``p`` made orthonormal (reduced QR; deterministic, so identical ranks
    get identical results)."""
    return torch.linalg.qr(p, mode="reduced").Q


def low_rank(ms: list[torch.Tensor], qs: list[torch.Tensor],
             average: Callable[[torch.Tensor, str], None], *,
             adds: list[torch.Tensor] | None = None) -> tuple[list[torch.Tensor],
                                                               list[torch.Tensor]]:
    """One power iteration for every matrix M (rows x cols) from its Q (cols x rank): P = M Q
    averaged over the ranks and made orthonormal, then Q = M^T P averaged; returns (P, Q), and
    P Q^T is the low-rank average every rank applies. ``average(t, name)`` averages ``t`` in
    place (Horovod's allreduce; a test's stand-in). Each round's factors are views of one flat
    buffer: one tensor per allreduce, no fusion copies.

    ``adds``: tensors added into ``ms`` in place first (error feedback: ``ms`` are the error
    buffers, ``adds`` the gradients), each just before its M is multiplied, while it is still in
    cache (a separate pass over every M first measured ~1 ms a step slower on 2 cores)."""
    p_flat, ps = _views([m.shape[0] for m in ms], qs, ms[0])
    for i, (m, q, p) in enumerate(zip(ms, qs, ps)):
        if adds is not None:
            m.add_(adds[i])
        torch.mm(m, q, out=p)
    average(p_flat, "powersgd.p")
    ps = [orthonormal(p) for p in ps]
    q_flat, new_qs = _views([m.shape[1] for m in ms], qs, ms[0])
    for m, p, q in zip(ms, ps, new_qs):
        torch.mm(m.t(), p, out=q)
    average(q_flat, "powersgd.q")
    return ps, new_qs


def _views(sides: list[int], qs: list[torch.Tensor],
           like: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One buffer of ``sum(side x rank)`` and its ``side x rank`` views, in order (each matrix's
    rank is its Q's columns)."""
    ranks = [q.shape[1] for q in qs]
    flat = torch.empty(sum(s * r for s, r in zip(sides, ranks)), dtype=like.dtype,
                       device=like.device)
    views, at = [], 0
    for side, r in zip(sides, ranks):
        views.append(flat[at:at + side * r].view(side, r))
        at += side * r
    return flat, views


class PowerSGD:
    """The compression state of one model's gradients and the step's ``reduce``."""

    def __init__(self, model: torch.nn.Module, cfg: PowerSGDConfig, seed: int) -> None:
        named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
        self.layers = layout([(n, tuple(p.shape)) for n, p in named], cfg.rank,
                             cfg.min_compression_rate)
        self.low = [(p, l.rows, l.cols) for (_, p), l in zip(named, self.layers) if l.compressed]
        self.rest = [p for (_, p), l in zip(named, self.layers) if not l.compressed]
        self.every = [p for _, p in named]
        self.cfg, self.seed, self.steps = cfg, seed, 0
        self.warmup = cfg.uncompressed_steps()
        self.reset()

    def wire(self) -> Wire:
        return wire(self.layers, self.cfg.rank, 2 if self.cfg.rest == "fp16" else 4)

    def reset(self) -> None:
        """Q drawn from the seed (the same on every rank) and no error: at the start, after an
        elastic reset (ranks that joined have no history), and after a skipped step (an error or
        Q with Inf/NaN in it would poison every later step)."""
        self.qs = [self._draw(cols, p.device, self.seed) for p, _, cols in self.low]
        self.errors = ([torch.zeros(rows, cols, device=p.device) for p, rows, cols in self.low]
                       if self.cfg.error_feedback else [])

    def _draw(self, cols: int, device: torch.device, seed: int) -> torch.Tensor:
        gen = torch.Generator().manual_seed(seed + cols)
        return orthonormal(torch.randn(cols, self.cfg.rank, generator=gen)).to(device)

    def reduce(self, global_step: int | None = None) -> None:
        """Average this step's gradients over all ranks, in place (``global_step``: the 0-based
        optimizer step, which decides the warmup; None: one after the last call)."""
        step = self.steps if global_step is None else global_step
        self.steps = step + 1
        if step < self.warmup or not self.low:
            self._finish(*self._start_plain(self.every, "powersgd.warmup"))
            return
        if not self.cfg.warm_start:  # a fresh Q every step, drawn alike on every rank
            self.qs = [self._draw(cols, p.device, self.seed + 7919 * step)
                       for p, _, cols in self.low]
        grads = [_grad(p).view(rows, cols) for p, rows, cols in self.low]
        rest, sent = self._flat(self.rest)

        def average(t: torch.Tensor, name: str) -> None:
            self._average(t, name, sent if name == "powersgd.p" else None)

        # M = gradient + error, built in the error buffer (no copy of the gradient)
        ms = self.errors or grads
        ps, qs = low_rank(ms, self.qs, average, adds=grads if self.errors else None)
        for g, m, p, q in zip(grads, ms, ps, qs):
            if self.errors:  # (``m`` is the error buffer: M - M_hat, in place)
                torch.mm(p, q.t(), out=g)  # the gradient every rank applies
                m.addmm_(p, q.t(), alpha=-1)  # (recomputing P Q^T: one pass less than m - g)
            else:
                g.copy_(p @ q.t())  # (``m`` is the gradient itself: read before written)
        self.qs = qs  # warm start: the next step begins from this Q
        _unflatten(rest, sent)

    @staticmethod
    def _average(t: torch.Tensor, name: str, rest: torch.Tensor | None = None) -> None:
        if rest is None:
            # Horovod: the Q factors of every compressed layer (computed from the averaged P),
            # averaged over the ranks in one allreduce: the step's second round trip.
            hvd.allreduce_(t, op=hvd.Average, name=name)
            return
        # Horovod: the P factors of every compressed layer and, beside them, the gradients
        # PowerSGD does not factor (biases, BatchNorm, small layers; fp16 by default), averaged
        # as one group: negotiated and sent in one cycle of Horovod's background loop (started
        # one after the other, the loop often took the first alone: two cycles, ~4 ms a step on
        # 2 cores).
        hvd.grouped_allreduce_([rest, t], op=hvd.Average, name=name)

    def _flat(self, params: list[torch.nn.Parameter]) -> tuple[list[torch.Tensor],
                                                               torch.Tensor | None]:
        """The gradients of ``params`` and one flat tensor of them as they go on the wire (fp16
        by default): one tensor, no fusion copies."""
        grads = [_grad(p) for p in params]
        if not grads:
            return grads, None
        flat = torch.cat([g.reshape(-1) for g in grads])
        return grads, flat.to(torch.float16) if self.cfg.rest == "fp16" else flat

    def _start_plain(self, params: list[torch.nn.Parameter],
                     name: str) -> tuple[Any, list[torch.Tensor], torch.Tensor | None]:
        grads, sent = self._flat(params)
        if sent is None:
            return None, grads, None
        # Horovod: every gradient during the warm-up (fp16 on the wire by default), averaged in
        # one allreduce.
        return hvd.allreduce_async_(sent, op=hvd.Average, name=name), grads, sent

    @staticmethod
    def _finish(handle: Any, grads: list[torch.Tensor], sent: torch.Tensor | None) -> None:
        if handle is None:
            return
        # Horovod: wait for that allreduce before the optimizer reads the gradients.
        hvd.synchronize(handle)
        _unflatten(grads, sent)

    def state(self) -> dict[str, Any]:
        """What every rank holds alike (Q) and the step count, for a checkpoint."""
        return {"qs": [q.cpu() for q in self.qs], "steps": self.steps}

    def local(self) -> list[torch.Tensor]:
        """This rank's error buffers (gathered to rank 0 for a checkpoint)."""
        return [e.cpu() for e in self.errors]

    def load(self, state: dict[str, Any] | None, errors: list[torch.Tensor] | None) -> None:
        """A checkpoint's Q (and this rank's errors, None: a new world size, start at zero)."""
        if not state or len(state.get("qs", [])) != len(self.qs):
            return  # another layout (or no PowerSGD when it was written): keep the fresh state
        self.qs = [q.to(p.device) for q, (p, _, _) in zip(state["qs"], self.low)]
        self.steps = int(state.get("steps", 0))
        if errors is not None and self.errors and len(errors) == len(self.errors):
            self.errors = [e.to(p.device) for e, (p, _, _) in zip(errors, self.low)]


def _unflatten(grads: list[torch.Tensor], sent: torch.Tensor | None) -> None:
    """The averaged flat tensor copied back into the gradients it was made of."""
    at = 0
    for g in grads:
        g.copy_(sent[at:at + g.numel()].view_as(g))
        at += g.numel()


def _grad(p: torch.nn.Parameter) -> torch.Tensor:
    """The gradient, zeros for a parameter backward did not reach (every rank sends the same
    tensors)."""
    if p.grad is None:
        p.grad = torch.zeros_like(p)
    return p.grad


def powersgd_optimizer(optimizer: torch.optim.Optimizer, psgd: PowerSGD,
                       reduces: bool) -> torch.optim.Optimizer:
    """``optimizer`` with the interface of Horovod's DistributedOptimizer that the loop uses
    (``synchronize``, ``skip_synchronize``, a step that synchronizes first), reducing through
    ``psgd``. ``reduces``: False at np=1 outside elastic mode (nothing to average)."""
    cls = type(optimizer.__class__.__name__, (optimizer.__class__,),
               dict(_PowerSGDOptimizer.__dict__))
    return cls(optimizer.param_groups, psgd, reduces)


class _PowerSGDOptimizer(torch.optim.Optimizer):
    def __init__(self, params: Any, psgd: PowerSGD, reduces: bool) -> None:
        super(self.__class__, self).__init__(params)
        self.powersgd = psgd
        # (the name Horovod's DistributedOptimizer uses: hvdtrain/worker/optim.reduces_gradients)
        self._requires_update = set(psgd.every) if reduces else set()
        self._should_synchronize = True

    def synchronize(self) -> None:
        if self._requires_update:
            self.powersgd.reduce()

    @contextmanager
    def skip_synchronize(self) -> Iterator[None]:
        self._should_synchronize = False
        try:
            yield
        finally:
            self._should_synchronize = True

    def step(self, closure: Any = None) -> Any:
        if self._should_synchronize:
            self.synchronize()
        return super(self.__class__, self).step(closure)

    def zero_grad(self, set_to_none: bool = False) -> None:
        """Zeros, not None, as Horovod's optimizer leaves them (every rank sends every tensor)."""
        super(self.__class__, self).zero_grad(set_to_none=set_to_none)
