"""One optimizer step (``train_step``: k micro-batches, allreduce, non-finite check, update) and
the per-window metrics (``Meter``) whose allreduce also carries the stop flag.

Every Horovod call carries a ``# Horovod:`` comment saying why it is there.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import horovod.torch as hvd
import torch
import torch.nn.functional as F

from hvdtrain import events
from hvdtrain.worker.job import Job
from hvdtrain.worker.optim import reduces_gradients, set_lr
from hvdtrain.worker.sources import Batch

# One micro-batch's metrics, kept as tensors until the log window ends: (mean loss, logits,
# labels); summed per window, not per step (over 1 % of a digits step: docs/performance.md).
Part = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class Meter:
    """Loss / correct / count sums of this rank's batches, allreduced once per log window.

    The same allreduce carries the stop request (rank 0 sees the launcher's stop file), so every
    rank learns it at the same step without a collective of its own.
    """

    def __init__(self, images_per_step: int, stop_file: Path | None = None) -> None:
        self.images_per_step = images_per_step
        self.stop_file = stop_file  # rank 0 only
        self.stop = False  # every rank: a stop was asked for, as of the last flush
        self.parts: list[Part] = []  # this window's micro-batches
        self.epoch = [0.0, 0.0, 0.0]  # loss sum, correct, count of the epoch, all ranks
        self.steps = self.epoch_steps = 0
        self.data_wait = 0.0  # seconds this rank waited for batches this epoch
        self.t0 = self.t_window = time.perf_counter()

    @staticmethod
    def part(loss: torch.Tensor, out: torch.Tensor, y: torch.Tensor) -> Part:
        """One micro-batch's metrics, still tensors: no Python round trip (no GPU sync)."""
        return loss.detach(), out.detach(), y

    def add(self, parts: list[Part]) -> None:
        """Count one completed step (a skipped step's metrics are left out)."""
        self.parts += parts
        self.steps += 1

    def window(self) -> torch.Tensor:
        """This rank's (loss sum, correct, count, stop) of the window, float64 on the CPU."""
        loss_sum = correct = count = 0.0
        if self.parts:  # one transfer (and GPU sync) per window
            losses, logits, labels = zip(*self.parts)
            counts = [len(y) for y in labels]
            loss_sum = float(torch.stack(losses).double().cpu()
                             @ torch.tensor(counts, dtype=torch.float64))
            correct = float((torch.cat(logits).argmax(1) == torch.cat(labels)).sum())
            count = sum(counts)
        stop = self.stop_file is not None and self.stop_file.exists()
        return torch.tensor([loss_sum, correct, count, float(stop)], dtype=torch.float64)

    def flush(self) -> tuple[float, float, float]:
        """Every rank: (loss, acc, images/s) of the window across all ranks; starts a new one."""
        # Metrics (and the stop flag) summed over all ranks, once per log interval.
        loss, correct, count, stop = allreduce_sum(self.window(), "train_window").tolist()
        now = time.perf_counter()
        rate = self.steps * self.images_per_step / max(now - self.t_window, 1e-9)
        self.stop = self.stop or stop > 0
        self.epoch = [a + b for a, b in zip(self.epoch, (loss, correct, count), strict=True)]
        self.epoch_steps += self.steps
        self.parts = []
        self.steps, self.t_window = 0, now
        return ratio(loss, count), ratio(correct, count), rate


def ratio(total: float, count: float) -> float:
    """A mean over ``count`` samples; NaN when there were none (every image skipped)."""
    return total / count if count else math.nan


def train_step(job: Job, micro: list[Batch], epoch: int, step: int, lr: float,
               rank: int, global_step: int = 0) -> list[Part] | None:
    """One optimizer step on this rank's k micro-batches. Returns their metrics, or None when
    the gradients were non-finite and the step was skipped; raises ``NonFinite`` to stop.

    Every line here runs once a step and costs more than a micro-benchmark shows, hence ``rank``
    from the caller and the other economies (docs/performance.md, "The training step")."""
    k, scaler = job.recipe.horovod.backward_passes_per_step, job.scaler
    set_lr(job.optimizer, lr)
    job.optimizer.zero_grad()  # Horovod 0.28 takes no set_to_none
    parts, loss = [], torch.zeros(())
    for x, y in micro:
        if not len(y):  # data.on_bad_image: skip, and no image of this micro-batch decoded
            zero_pass(job)
            continue
        x, y = x.to(job.device, non_blocking=True), y.to(job.device, non_blocking=True)
        with job.autocast():
            out = job.model(x)
            loss = job.hooks.loss(rank, epoch, step, cross_entropy(out, y))
        part = loss / k if k > 1 else loss  # k passes make one step
        (scaler.scale(part) if scaler else part).backward()
        parts.append(Meter.part(loss, out, y))
    job.beat.at("allreduce", epoch, step)
    if job.adasum:
        return _adasum_step(job, epoch, step, loss, parts)
    # Horovod: wait for this step's gradient allreduces, so the check below sees the averaged
    # gradients. Averaging spreads one rank's Inf/NaN to every rank, so all ranks take the same
    # decision at the same step without another collective.
    if reduces_gradients(job.optimizer) and job.powersgd is not None:
        # Horovod: PowerSGD's grouped allreduces (worker/powersgd.py); the global step decides
        # its warmup alike on every rank.
        job.powersgd.reduce(global_step)
    elif reduces_gradients(job.optimizer):  # (not at np=1: Horovod hooked no gradient there)
        job.optimizer.synchronize()
    if scaler is not None:  # Horovod's AMP pattern: unscale the averaged gradients, then step
        scaler.unscale_(job.optimizer)
    if not job.grads_finite():
        return _skip_or_stop(job, epoch, step, loss)
    if scaler is not None:
        # Horovod: already synchronized above; step without allreducing again.
        with job.optimizer.skip_synchronize():
            scaler.step(job.optimizer)
        scaler.update()
    else:
        # Horovod: already synchronized above, so the wrapped optimizer's own step (Horovod's
        # step() would check that and call it: a second profiled wrapper a step).
        super(type(job.optimizer), job.optimizer).step()
    return parts


def zero_pass(job: Job) -> None:
    """A micro-batch with no image: this rank adds nothing to the step but still takes part."""
    # Horovod: the step's gradient allreduce is collective, so every gradient hook of this rank
    # must fire: a loss of 0 that touches every parameter (gradients: zeros) stands in for the
    # batch. No forward pass: BatchNorm statistics and the metrics leave it out.
    params = [p for p in job.model.parameters() if p.requires_grad]
    (torch.stack([p.sum() for p in params]).sum() * 0.0).backward()


def _adasum_step(job: Job, epoch: int, step: int, loss: torch.Tensor,
                 parts: list[Part]) -> list[Part] | None:
    """op: adasum at np > 1: Horovod's Adasum optimizer reduces in ``step()`` (it has no separate
    synchronize), so each rank checks its own gradients and the ranks agree before stepping."""
    # Horovod: a rank with Inf/NaN gradients makes every rank skip (or stop) the same step.
    finite = hvd.allreduce(torch.tensor(float(job.grads_finite())), op=hvd.Min, name="finite")
    if not finite.item():
        return _skip_or_stop(job, epoch, step, loss)
    if job.scaler is not None:
        job.scaler.step(job.optimizer)
        job.scaler.update()
    else:
        job.optimizer.step()  # Horovod: Adasum-combines every rank's update
    return parts


def cross_entropy(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy; 0 (with a graph) for an empty micro-batch (every image skipped)."""
    return F.cross_entropy(out, y) if len(y) else out.sum() * 0.0


def _skip_or_stop(job: Job, epoch: int, step: int, loss: torch.Tensor) -> None:
    """Non-finite averaged gradients: fp16 loss scaling lowers its scale (as AMP does); otherwise
    ``train.on_nonfinite`` says whether to skip the step or stop every rank."""
    job.optimizer.zero_grad()
    if job.powersgd is not None:
        job.powersgd.reset()  # its error buffers and Q may hold the Inf/NaN now
    if job.scaler is not None:
        job.scaler.update()  # finds the inf recorded by unscale_ and halves the scale
        return None
    if job.recipe.train.on_nonfinite == "stop":
        raise NonFinite(loss)
    if hvd.rank() == 0:
        events.emit("warning", message=f"non-finite gradients at epoch {epoch} step {step}: "
                                       "step skipped")
    return None


class NonFinite(Exception):
    """Inf/NaN gradients with ``train.on_nonfinite: stop``; carries this rank's last loss."""

    def __init__(self, loss: torch.Tensor) -> None:
        super().__init__("non-finite gradients")
        self.loss = loss


def report_nonfinite(job: Job, epoch: int, step: int, global_step: int,
                     loss: torch.Tensor) -> None:
    """Every rank stops here at the same step; rank 0 says why and which ranks' losses blew up."""
    # Horovod: gather which ranks saw a non-finite local loss, to name them in the message.
    bad = hvd.allgather_object(not bool(torch.isfinite(loss.detach())))
    if hvd.rank() != 0:
        return
    culprits = [r for r, b in enumerate(bad) if b]
    who = (f"local loss non-finite on rank(s) {', '.join(map(str, culprits))}" if culprits
           else "local losses finite: the overflow happened in the gradient allreduce")
    fix = ("set horovod.gradient_predivide_factor (e.g. to the number of workers) so fp16 sums "
           "stay in range, or lower optimizer.base_lr" if job.recipe.horovod.compression == "fp16"
           else "lower optimizer.base_lr or the warmup's peak")
    events.emit("error", message=f"non-finite gradients at epoch {epoch} step {step} (global "
                                 f"step {global_step + 1}); {who}. Stopped every rank before the "
                                 f"update, so checkpoints hold only finite weights. Fix: {fix}, "
                                 "or set train.on_nonfinite=skip")


def allreduce_sum(t: torch.Tensor, name: str) -> torch.Tensor:
    """``t`` summed over all ranks (a new tensor). A single rank skips Horovod: an allreduce waits
    for the background thread's next cycle (5-8 % of a digits step at np=1)."""
    # Horovod: the ranks' sums, once per log window / epoch (never per step).
    return hvd.allreduce(t, op=hvd.Sum, name=name) if hvd.size() > 1 else t.clone()
