"""Run under horovodrun -np 2: median milliseconds of one Sum allreduce of N float32 and float16
elements (the goal: float16 <= 0.8x float32 for N >= 1M). Rank 0 prints one JSON line."""

import json
import statistics
import sys
import time

import horovod.torch as hvd
import torch

SIZES = [int(x) for x in (sys.argv[1:] or ["1200000", "5000000"])]

# Horovod: join the job (Gloo rendezvous).
hvd.init()
torch.set_num_threads(1)
out = {}
for n in SIZES:
    for dtype in (torch.float32, torch.float16):
        t = torch.randn(n).to(dtype)
        times = []
        for i in range(23):
            t0 = time.perf_counter()
            # Horovod: the allreduce being timed (a new name each time: no response-cache effects).
            hvd.allreduce(t, op=hvd.Sum, name=f"t{n}{dtype}{i}")
            times.append(time.perf_counter() - t0)
        out[f"{n}_{str(dtype).removeprefix('torch.')}_ms"] = 1000 * statistics.median(times[3:])
if hvd.rank() == 0:
    print("ALLREDUCE " + json.dumps(out), flush=True)
