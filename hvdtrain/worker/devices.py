"""Which device a rank computes on, and in which precision. The choice is a pure function of what
the rank sees (unit-tested: no GPU on the machines hvdtrain is developed on); the CUDA path itself
is Horovod's documented one-GPU-per-process pattern and is not run by the test suite."""

from __future__ import annotations

from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import torch

from hvdtrain.errors import UserError
from hvdtrain.rules import device_problems, uses_cuda

AUTOCAST = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Seen:
    """What one rank sees: CUDA devices on its host, and its place among the host's ranks."""

    cuda_available: bool
    gpu_count: int
    local_rank: int
    local_size: int
    host: str


def choose_device(setting: str, precision: str, seen: Seen) -> torch.device:
    """``train.device`` (auto | cpu | cuda) -> this rank's device, or a ``UserError`` saying why not."""
    gpus = seen.gpu_count if seen.cuda_available else 0
    problems = device_problems(setting, precision, gpus, seen.local_size, f"host {seen.host}")
    if problems:
        raise UserError(problems[0])
    return torch.device("cuda", seen.local_rank) if uses_cuda(setting, gpus) else \
        torch.device("cpu")


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """Mixed-precision compute for forward and loss (fp32: no context at all; a disabled
    torch.autocast costs ~2 us a step)."""
    dtype = AUTOCAST[precision]
    return nullcontext() if dtype is None else torch.autocast(device_type=device.type, dtype=dtype)
