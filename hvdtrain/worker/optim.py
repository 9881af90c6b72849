"""The optimizer every rank steps: a torch optimizer wrapped in Horovod's DistributedOptimizer, its
state primed so ranks can be synchronised without moving weights, and hashes that prove they were."""

from __future__ import annotations

import hashlib

import horovod.torch as hvd
import torch

from hvdtrain.recipe import Recipe


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    o = recipe.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.base_lr, momentum=o.momentum,
                               weight_decay=o.weight_decay)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=o.base_lr, betas=(o.momentum, 0.999),
               weight_decay=o.weight_decay)


def distributed_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """The wrapped optimizer with primed state (see ``prime_optimizer_state``)."""
    hv = recipe.horovod
    # Horovod: wrap the optimizer so gradients are ring-allreduced (fused, compressed) before
    # every step; fp16 compression halves the bytes on the wire. With k backward passes per step
    # it allreduces once every k backward() calls.
    optimizer = hvd.DistributedOptimizer(
        make_optimizer(model, recipe), named_parameters=model.named_parameters(),
        compression=hvd.Compression.fp16 if hv.compression == "fp16" else hvd.Compression.none,
        op=hvd.Adasum if hv.op == "adasum" else hvd.Average,
        gradient_predivide_factor=hv.gradient_predivide_factor,
        backward_passes_per_step=hv.backward_passes_per_step)
    prime_optimizer_state(optimizer)
    return optimizer


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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def grads_finite(params: list[torch.nn.Parameter]) -> bool:
    """One fused norm over every gradient: Inf or NaN anywhere makes it non-finite."""
    grads = [p.grad for p in params if p.grad is not None]
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))) if grads else True


def compression_report(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    """What one allreduce of the full gradient puts on the wire with the configured compression."""
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
