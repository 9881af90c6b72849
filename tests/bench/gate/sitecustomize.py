"""`make bench` only (tests/bench/turns.py): a worker started with this folder on PYTHONPATH and
HVDTRAIN_BENCH_GATE set waits at the start of every epoch, before its epoch timer starts, until the
bench gives it the turn. Nothing happens in any other process (horovodrun, hvdtrain: no
HOROVOD_RANK)."""

import os

if os.environ.get("HVDTRAIN_BENCH_GATE") and os.environ.get("HOROVOD_RANK") is not None:
    import hvdtrain.worker.faults as _faults

    def _epoch_start(self, rank, epoch, _gate=os.environ["HVDTRAIN_BENCH_GATE"]):
        with open(_gate + ".ready", "wb", buffering=0) as f:
            f.write(b"r")
        with open(_gate + ".go", "rb", buffering=0) as f:
            f.read(1)

    _faults.Hooks.epoch_start = _epoch_start
