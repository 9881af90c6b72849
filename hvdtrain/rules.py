"""Rules that more than one process judges, each written once with one message: the recipe's
validation (what the recipe alone says), the launcher's pre-launch checks (this machine) and each
worker (its own host) call the same function with what they know. Pure: no I/O, no torch."""

from __future__ import annotations


def device_problems(device: str, precision: str, gpus: int | None, ranks: int,
                    where: str) -> list[str]:
    """``train.device`` and ``train.precision`` against a host with ``gpus`` usable NVIDIA GPUs
    (None: not known yet, judge the recipe alone) running ``ranks`` of the processes; ``where``
    names the host in the message ("this machine", "host node1")."""
    if device == "cuda" and gpus == 0:
        return [f"train.device=cuda, but {where} has no usable NVIDIA GPU: use train.device=auto "
                "(CUDA where there is one, else CPU) or cpu"]
    if precision == "fp16" and (device == "cpu" or gpus == 0):
        why = "train.device is cpu" if device == "cpu" else f"{where} has no usable NVIDIA GPU"
        return [f"train.precision=fp16 needs CUDA (fp16 autocast on CPUs is slow and unsupported "
                f"for many ops), but {why}: use train.precision=bf16 or fp32 on CPUs"]
    if uses_cuda(device, gpus) and gpus is not None and ranks > gpus:
        return [f"{ranks} ranks on {where} but {gpus} GPU(s): hvdtrain runs one GPU per process; "
                f"give it at most {gpus} slot(s) (--np {gpus} on one machine), or set "
                "train.device=cpu"]
    return []


def uses_cuda(device: str, gpus: int | None) -> bool:
    """Whether ``train.device`` puts the ranks on CUDA on a host with ``gpus`` usable GPUs."""
    return device == "cuda" or (device == "auto" and bool(gpus))
