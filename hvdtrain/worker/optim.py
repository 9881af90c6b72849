"""The optimizer every rank steps: a torch optimizer wrapped in Horovod's DistributedOptimizer, its
state primed so ranks can be synchronised without moving weights, and hashes that prove they were."""

from __future__ import annotations

import hashlib
import os

import horovod.torch as hvd
import torch

from hvdtrain.gradient_groups import group_lengths
from hvdtrain.recipe import HorovodConfig, OptimizerConfig


def make_optimizer(model: torch.nn.Module, o: OptimizerConfig) -> torch.optim.Optimizer:
    """The recipe's torch optimizer for ``model`` (fused where PyTorch can)."""
    fused = o.fused and can_fuse(model)
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.base_lr, momentum=o.momentum,
                               weight_decay=o.weight_decay, fused=fused)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=o.base_lr, betas=(o.momentum, 0.999),
               weight_decay=o.weight_decay, fused=fused)


def can_fuse(model: torch.nn.Module) -> bool:
    """Whether PyTorch's fused optimizer kernels take this model: dense floating-point parameters
    on CPU or CUDA (no sparse embeddings: their gradients are sparse)."""
    params = [p for p in model.parameters() if p.requires_grad]
    sparse = any(getattr(m, "sparse", False) is True for m in model.modules())
    return bool(params) and not sparse and all(
        p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in params)


def is_fused(optimizer: torch.optim.Optimizer) -> bool:
    """Whether ``optimizer`` steps with PyTorch's fused kernel (for the start event)."""
    return all(bool(g.get("fused")) for g in optimizer.param_groups)


def distributed_optimizer(model: torch.nn.Module, o: OptimizerConfig,
                          hv: HorovodConfig, seed: int = 0) -> torch.optim.Optimizer:
    """The wrapped optimizer with primed state (see ``prime_optimizer_state``)."""
    if hv.compression == "powersgd":
        return _powersgd_optimizer(model, o, hv, seed)
    # Horovod: wrap the optimizer so gradients are ring-allreduced (fused, compressed) before
    # every step; fp16 compression halves the bytes on the wire. With k backward passes per step
    # it allreduces once every k backward() calls.
    # Gradients go in ~group_mb groups (one fused allreduce each) rather than tensor by tensor.
    optimizer = hvd.DistributedOptimizer(
        make_optimizer(model, o), named_parameters=model.named_parameters(),
        compression=hvd.Compression.fp16 if hv.compression == "fp16" else hvd.Compression.none,
        op=hvd.Adasum if hv.op == "adasum" else hvd.Average,
        gradient_predivide_factor=hv.gradient_predivide_factor,
        backward_passes_per_step=hv.backward_passes_per_step,
        groups=gradient_groups(model, hv.group_mb) if hv.op == "average" else None)
    prime_optimizer_state(optimizer)
    return optimizer


def _powersgd_optimizer(model: torch.nn.Module, o: OptimizerConfig, hv: HorovodConfig,
                        seed: int) -> torch.optim.Optimizer:
    from hvdtrain.worker.powersgd import PowerSGD, powersgd_optimizer

    # Horovod: PowerSGD is no hvd.Compression (its state and two rounds per step do not fit the
    # API): the optimizer reduces through PowerSGD's grouped allreduces instead of Horovod's
    # gradient hooks, where Horovod would hook them (np > 1, or an elastic job).
    reduces = hvd.size() > 1 or os.environ.get("HOROVOD_ELASTIC") == "1"
    optimizer = powersgd_optimizer(make_optimizer(model, o), PowerSGD(model, hv.powersgd, seed),
                                   reduces)
    prime_optimizer_state(optimizer)
    return optimizer


def gradient_groups(model: torch.nn.Module, mb: float) -> list[list[torch.nn.Parameter]] | None:
    """The trainable parameters in groups of at least ``mb`` MB of float32 gradient, last
    parameter first (hvdtrain/gradient_groups.py); None (Horovod's one allreduce per tensor) for
    0. Every rank builds the same model, so the same groups: Horovod matches a group's allreduce
    across ranks by its first parameter's name."""
    params = [p for p in model.parameters() if p.requires_grad]
    lengths = group_lengths([p.numel() for p in params], mb)
    if lengths is None:
        return None
    last_first, groups, at = params[::-1], [], 0
    for n in lengths:
        groups.append(last_first[at:at + n])
        at += n
    return groups


def prime_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's per-parameter state with a zero-LR, zero-gradient local step.

    Both modes synchronise ranks by broadcasting rank 0's optimizer state (``broadcast_optimizer_
    state`` or ``TorchState``). On a rank with empty state Horovod would first create it with a
    zero-gradient step at the configured LR, and weight decay would move that rank's weights.
    """
    saved = [g["lr"] for g in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
        for p in group["params"]:
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
    # Horovod: the wrapped optimizer's own step, so no allreduce is involved.
    super(optimizer.__class__, optimizer).step()
    for group, lr in zip(optimizer.param_groups, saved, strict=True):
        group["lr"] = lr
    optimizer.zero_grad()


def reduces_gradients(optimizer: torch.optim.Optimizer) -> bool:
    """Whether the wrapped optimizer hooked any gradient for an allreduce. Horovod hooks them
    only where size() > 1 or the job is elastic (horovod/torch/optimizer.py); without hooks its
    ``synchronize()`` has nothing to wait for."""
    return bool(optimizer._requires_update)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


class FiniteCheck:
    """Whether every gradient is free of Inf and NaN, called once per step.

    GradScaler's fused check (one kernel over all gradients; it multiplies them by 1.0 in place,
    which changes no value), with its two one-element tensors made once: ~14 us for digits' ten
    gradients where a total norm took ~50 us, over 1 % of a 4 ms step. Parameters of mixed
    devices or dtypes fall back to the total norm."""

    def __init__(self, params: list[torch.nn.Parameter]) -> None:
        self.params = params
        kinds = {(p.device, p.dtype) for p in params}
        self.fused = len(kinds) == 1
        if self.fused:
            device = params[0].device
            self.found, self.one = torch.zeros(1, device=device), torch.ones(1, device=device)

    def __call__(self) -> bool:
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return True
        if not self.fused:
            return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads)))
        # It only ever sets ``found``: cleared after a hit, not before every check.
        torch._amp_foreach_non_finite_check_and_unscale_(grads, self.found, self.one)
        if not self.found.item():
            return True
        self.found.zero_()
        return False


def compression_report(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    """What one allreduce of the full gradient puts on the wire with the configured compression."""
    psgd = getattr(optimizer, "powersgd", None)
    if psgd is not None:  # P and Q for the layers it factors, the rest as configured
        w = psgd.wire()
        return {"wire_dtype": f"powersgd rank {psgd.cfg.rank} + "
                              f"{'float16' if psgd.cfg.rest == 'fp16' else 'float32'}",
                "grad_bytes": w.grad_bytes, "wire_bytes": w.wire_bytes}
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    wire, _ = optimizer._compression.compress(flat)  # the object DistributedOptimizer uses
    return {"wire_dtype": str(wire.dtype).removeprefix("torch."),
            "grad_bytes": flat.numel() * flat.element_size(),
            "wire_bytes": wire.numel() * wire.element_size()}


def state_hash(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, to prove all ranks hold the same model."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def optimizer_hash(optimizer: torch.optim.Optimizer) -> str:
    """SHA-256 of the optimizer's per-parameter state (momentum buffers, Adam moments)."""
    return tensors_hash(optimizer.state_dict()["state"])


def tensors_hash(state: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        for name, value in sorted(state[key].items()):
            h.update(f"{key}.{name}".encode())
            if isinstance(value, torch.Tensor):
                h.update(value.detach().cpu().contiguous().numpy().tobytes())
            else:
                h.update(repr(value).encode())
    return h.hexdigest()
