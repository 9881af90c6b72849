"""Run under horovodrun: every rank allreduces (rank + 1) and checks the sum on its own."""

import sys

import horovod.torch as hvd
import torch

# Horovod: join the job (Gloo rendezvous with the launcher).
hvd.init()
# Horovod: a Sum allreduce, so the expected result is 1 + 2 + ... + size on every rank.
total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum, name="smoke")
expected = hvd.size() * (hvd.size() + 1) / 2
print(f"SMOKE rank={hvd.rank()} size={hvd.size()} sum={total.item():g} expected={expected:g}", flush=True)
sys.exit(0 if total.item() == expected else 3)
