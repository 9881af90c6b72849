"""`make bench` only (tests/bench/turns.py): a worker started with this folder on PYTHONPATH and
HVDTRAIN_BENCH_GATE set waits at the start of every epoch, before its epoch timer starts, until the
bench gives it the turn. Nothing happens in any other process (horovodrun, hvdtrain: no
HOROVOD_RANK). The bench puts tests/bench on PYTHONPATH too, for turns.wait_for_turn."""

import os

if os.environ.get("HVDTRAIN_BENCH_GATE") and os.environ.get("HOROVOD_RANK") is not None:
    import hvdtrain.worker.faults as _faults
    from turns import wait_for_turn

    def _epoch_start(self, rank, epoch, _gate=os.environ["HVDTRAIN_BENCH_GATE"]):
        wait_for_turn(_gate)

    _faults.Hooks.epoch_start = _epoch_start
