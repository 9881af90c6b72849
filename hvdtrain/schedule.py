"""The learning-rate schedule and the epoch length: small pure functions (no torch), shared by the
plan (launcher) and the loop (worker).

Linear scaling rule with gradual warmup (Goyal et al. 2017), exactly as Horovod's
``examples/pytorch/pytorch_imagenet_resnet50.py`` adjusts it per batch::

    epoch_f = epoch + (batch_idx + 1) / steps_per_epoch
    adj     = 1/size * (epoch_f * (size - 1) / warmup_epochs + 1)      while epoch_f < warmup
    lr      = base_lr * size * batches_per_allreduce * adj

so the LR climbs linearly from ``base_lr`` to ``base_lr * size`` over the warmup, then decays.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal


@dataclass(frozen=True)
class LRConfig:
    """The recipe fields the schedule reads (built from ``OptimizerConfig`` by the caller)."""

    base_lr: float
    scaling: Literal["linear", "none"] = "linear"
    warmup_epochs: float = 0.0
    decay: Literal["none", "cosine", "step"] = "none"
    decay_epochs: tuple[float, ...] = field(default_factory=tuple)  # milestones for "step"
    decay_factor: float = 0.1
    epochs: int = 1  # total, for "cosine"
    backward_passes_per_step: int = 1


def peak_lr(cfg: LRConfig, world_size: int) -> float:
    """The LR after warmup: per-worker base LR scaled by the number of workers (linear rule)."""
    scale = world_size if cfg.scaling == "linear" else 1
    return cfg.base_lr * scale * cfg.backward_passes_per_step


def lr_at(step: int, steps_per_epoch: int, world_size: int, cfg: LRConfig) -> float:
    """LR for the 0-based global batch ``step`` (epoch = step // steps_per_epoch)."""
    if steps_per_epoch < 1:
        raise ValueError("steps_per_epoch must be >= 1")
    epoch_f = (step + 1) / steps_per_epoch
    peak = peak_lr(cfg, world_size)
    if epoch_f < cfg.warmup_epochs:
        size = world_size if cfg.scaling == "linear" else 1
        adj = 1.0 / size * (epoch_f * (size - 1) / cfg.warmup_epochs + 1)
        return peak * adj
    if cfg.decay == "cosine":
        span = max(cfg.epochs - cfg.warmup_epochs, 1e-12)
        progress = min(max((epoch_f - cfg.warmup_epochs) / span, 0.0), 1.0)
        return peak * 0.5 * (1.0 + math.cos(math.pi * progress))
    if cfg.decay == "step":
        epoch = step // steps_per_epoch  # Horovod's example decays on whole epochs
        drops = sum(1 for m in cfg.decay_epochs if epoch >= m)
        return peak * cfg.decay_factor**drops
    return peak


def warmup_steps(cfg: LRConfig, steps_per_epoch: int) -> int:
    """Batches until the LR reaches its peak (the peak is used from step ``warmup_steps - 1`` on)."""
    return math.ceil(cfg.warmup_epochs * steps_per_epoch)


def steps_per_epoch(train_samples: int, np: int, batch_size: int, passes: int = 1,
                    cap: int | None = None) -> int:
    """Optimizer steps per epoch, equal on every rank: each rank gets floor(N / np) samples and
    drops the last partial step (a step is ``passes`` batches), capped by ``cap``; 0 when one
    step needs more samples than a rank has."""
    steps = train_samples // np // (batch_size * passes)
    return min(steps, cap) if cap else steps
