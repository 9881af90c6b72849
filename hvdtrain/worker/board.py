"""TensorBoard curves from rank 0, in ``RUN_DIR/tensorboard/`` (as Horovod's PyTorch example and
Lightning do): loss and accuracy per log window (per step cost 2 % of a digits step), the LR of
every step (written at each window from the pure schedule: the warmup shows), eval loss and accuracy, images/s, epoch time and the share of it spent waiting for data. Held and
flushed every ``HOLD`` seconds at most: TensorBoard's writer thread takes the GIL from training
(the numbers: docs/performance.md, "TensorBoard").
``train.tensorboard: false``, another rank, or no tensorboard package: every call does nothing."""

from __future__ import annotations

import math
import time
from pathlib import Path
from collections.abc import Callable
from typing import Any

# Seconds summaries are held before they go to the writer, and between two flushes to disk: each
# hand-over wakes SummaryWriter's thread, which takes the GIL from training.
HOLD = 2.0
# Records SummaryWriter's queue takes before a hand-over waits for its writer thread (its default,
# 10, made every hand-over wait record by record); a few KB a record.
QUEUE = 100_000


class Board:
    def __init__(self, writer: Any = None, first_step: int = 0) -> None:
        self.writer = writer
        self.lr_step = first_step  # the last step whose LR is written
        self.held: list[tuple[Any, int]] = []  # (summary, step) not yet handed to the writer
        self.handed = self.flushed = -math.inf  # when they last were, and last flushed to disk

    def scalars(self, step: int, **values: float | None) -> None:
        """One event holding every value (``a__b`` is tag ``a/b``; None is left out), a quarter
        of the cost of one ``add_scalar`` per value. Handed to the writer at most every ``HOLD``
        seconds."""
        if self.writer is None:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.held.append((Summary(value=[Summary.Value(tag=tag.replace("__", "/"),
                                                       simple_value=value)
                                         for tag, value in values.items() if value is not None]),
                          step))
        if time.monotonic() - self.handed >= HOLD:
            self._hand_over()

    def learning_rates(self, upto: int, lr_of: Callable[[int], float]) -> None:
        """``train/lr`` of every step since the last call up to ``upto`` (the step a log window
        ends at); ``lr_of(i)`` is the LR the ``i``-th step (0-based) trained with."""
        if self.writer is None:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        self.held += [(Summary(value=[Summary.Value(tag="train/lr", simple_value=lr_of(s - 1))]), s)
                      for s in range(self.lr_step + 1, upto + 1)]
        self.lr_step = upto

    def _hand_over(self) -> None:
        for summary, step in self.held:
            self.writer.file_writer.add_summary(summary, step)
        self.held.clear()
        self.handed = time.monotonic()

    def flush(self, force: bool = False) -> None:
        """Everything to disk (end of an epoch): at most every ``HOLD`` seconds unless ``force``
        (the last epoch, a stop), so a run killed mid-way loses at most that much of its curves."""
        if self.writer is None or not (force or time.monotonic() - self.flushed >= HOLD):
            return
        self._hand_over()
        self.writer.flush()
        self.flushed = time.monotonic()


def open_board(folder: Path, enabled: bool, rank: int, first_step: int) -> Board:
    """Rank 0's writer. ``first_step``: the last step already done when this process starts; a
    resumed run's older events after it are dropped (``purge_step``), so curves continue without
    duplicates."""
    if not enabled or rank != 0:
        return Board()
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is an optional extra (make install installs it)
        return Board()
    return Board(SummaryWriter(str(folder), max_queue=QUEUE,
                               purge_step=first_step + 1 if first_step else None), first_step)
