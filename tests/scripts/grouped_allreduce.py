"""Under `horovodrun -np 2`: hvdtrain's grouped gradient allreduce (patch item 7).

1. ``gradient_predivide_factor`` reaches the grouped path: fp16 gradients of 40000 on both ranks
   overflow float16 when summed (80000 > 65504) unless divided first.
2. A group whose parameter is unused on one rank (a forward that skips it) is still reduced as one
   group: without the patch rank 1 submits per-tensor allreduces that never match rank 0's grouped
   one, and the job stalls.
Prints one JSON line per rank.
"""

from __future__ import annotations

import json

import horovod.torch as hvd
import torch

hvd.init()


class TwoBranch(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = torch.nn.Parameter(torch.ones(5))
        self.b = torch.nn.Parameter(torch.ones(3))

    def forward(self, scale: float, use_b: bool) -> torch.Tensor:
        out = (self.a * scale).sum()
        return out + (self.b * scale).sum() if use_b else out


def grads(scale: float, use_b: bool, predivide: float) -> dict[str, list[float]]:
    model = TwoBranch()
    opt = hvd.DistributedOptimizer(torch.optim.SGD(model.parameters(), lr=0.0),
                                   named_parameters=model.named_parameters(),
                                   compression=hvd.Compression.fp16, op=hvd.Average,
                                   gradient_predivide_factor=predivide,
                                   groups=[[model.b, model.a]])
    model(scale, use_b).backward()
    opt.synchronize()
    return {"a": model.a.grad.tolist(), "b": model.b.grad.tolist()}


overflow = grads(40000.0, True, predivide=2.0)
unused = grads(3.0, use_b=hvd.rank() == 0, predivide=1.0)  # rank 1 never touches b
print("GROUPED " + json.dumps({"rank": hvd.rank(), "overflow": overflow, "unused": unused}),
      flush=True)
