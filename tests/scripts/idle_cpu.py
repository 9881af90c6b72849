"""Under `horovodrun -np 2`: how much CPU Horovod burns while a rank has nothing to do (patch item
5: the background loop sleeps until work is enqueued) and while rank 0 waits in synchronize() for a
peer that arrives 2 s late (patch item 6: the wait sleeps on a condition variable instead of
polling). Prints one JSON line per rank."""

from __future__ import annotations

import json
import time

import horovod.torch as hvd
import torch

hvd.init()
hvd.allreduce(torch.zeros(1), name="warm_up")

# Idle: no operation enqueued for 2 s; CPU time of the whole process (every thread).
cpu0, wall0 = time.process_time(), time.perf_counter()
time.sleep(2.0)
idle_cpu, idle_wall = time.process_time() - cpu0, time.perf_counter() - wall0

# Waiting: rank 1 joins the allreduce 2 s late; CPU time of rank 0's calling thread only.
if hvd.rank() == 1:
    time.sleep(2.0)
cpu0, wall0 = time.thread_time(), time.perf_counter()
total = hvd.allreduce(torch.ones(1), op=hvd.Sum, name="late_peer").item()
wait_cpu, wait_wall = time.thread_time() - cpu0, time.perf_counter() - wall0

print("IDLE_CPU " + json.dumps({"rank": hvd.rank(), "sum": total, "idle_cpu": idle_cpu,
                                "idle_wall": idle_wall, "wait_cpu": wait_cpu,
                                "wait_wall": wait_wall}), flush=True)
