"""TensorBoard curves from rank 0, in ``RUN_DIR/tensorboard/`` (as Horovod's PyTorch example and
Lightning do): loss, accuracy and the LR per log window (every step cost ~70 us a scalar, 2 % of a
digits step; the warmup still shows), eval loss and accuracy, images/s, epoch time and the share of
it spent waiting for data.
``train.tensorboard: false``, another rank, or no tensorboard package: every call does nothing."""

from __future__ import annotations

from pathlib import Path
from typing import Any


class Board:
    def __init__(self, writer: Any = None) -> None:
        self.writer = writer

    def scalars(self, step: int, **values: float | None) -> None:
        """One event holding every value (``a__b`` is tag ``a/b``; None is left out): four
        ``add_scalar`` calls took ~240 us, one summary of four values ~55 us."""
        if self.writer is None:
            return
        from tensorboard.compat.proto.summary_pb2 import Summary

        summary = Summary(value=[Summary.Value(tag=tag.replace("__", "/"), simple_value=value)
                                 for tag, value in values.items() if value is not None])
        self.writer.file_writer.add_summary(summary, step)

    def flush(self) -> None:
        if self.writer is not None:
            self.writer.flush()


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
    return Board(SummaryWriter(str(folder), purge_step=first_step + 1 if first_step else None))
