"""Under `horovodrun -np 2`: hvdtrain's PowerSGD reduce (hvdtrain/worker/powersgd.py) on real
Horovod allreduces, against PowerSGD written out here for both ranks (each rank knows both
ranks' gradients: they are drawn from the step and the rank).

Per step: the factored layer's gradient equals the reference P Q^T (averaged P, orthonormal,
averaged Q, error feedback carrying each rank's residual), the bias equals the plain average,
the warmup steps are the plain average, and every rank holds bit-identical gradients.
Prints one JSON line per rank.
"""

from __future__ import annotations

import hashlib
import json

import horovod.torch as hvd
import torch

from hvdtrain.recipe import PowerSGDConfig
from hvdtrain.worker.powersgd import PowerSGD, orthonormal

hvd.init()
ROWS, COLS, RANK, WARMUP, STEPS = 16, 12, 2, 1, 4


def grads_of(step: int, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1000 * step + rank)
    return torch.randn(ROWS, COLS, generator=gen), torch.randn(ROWS, generator=gen)


model = torch.nn.Linear(COLS, ROWS)
cfg = PowerSGDConfig(rank=RANK, warmup_steps=WARMUP, rest="none")
psgd = PowerSGD(model, cfg, seed=3)
assert [p is model.weight for p, _, _ in psgd.low] == [True], psgd.layers

q = psgd.qs[0].clone()  # the reference's own state, for both ranks
errors = [torch.zeros(ROWS, COLS), torch.zeros(ROWS, COLS)]
out = {"rank": hvd.rank(), "weight_err": [], "bias_err": [], "warmup_err": [], "hashes": []}
for step in range(STEPS):
    mine = grads_of(step, hvd.rank())
    model.weight.grad, model.bias.grad = mine[0].clone(), mine[1].clone()
    psgd.reduce(step)
    both = [grads_of(step, r) for r in (0, 1)]
    mean_w = (both[0][0] + both[1][0]) / 2
    mean_b = (both[0][1] + both[1][1]) / 2
    if step < WARMUP:
        out["warmup_err"].append(float((model.weight.grad - mean_w).abs().max()))
    else:
        ms = [both[r][0] + errors[r] for r in (0, 1)]
        p = orthonormal((ms[0] @ q + ms[1] @ q) / 2)
        q = (ms[0].t() @ p + ms[1].t() @ p) / 2
        approx = p @ q.t()
        errors = [m - approx for m in ms]
        out["weight_err"].append(float((model.weight.grad - approx).abs().max()))
    out["bias_err"].append(float((model.bias.grad - mean_b).abs().max()))
    digest = torch.cat([model.weight.grad.flatten(), model.bias.grad]).numpy().tobytes()
    out["hashes"].append(hashlib.sha256(digest).hexdigest())
# The rank's own error buffer is the reference's residual for that rank.
out["error_err"] = float((psgd.errors[0] - errors[hvd.rank()]).abs().max())
print("POWERSGD " + json.dumps(out), flush=True)
