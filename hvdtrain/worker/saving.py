"""What rank 0 saves: the resumable checkpoint after an epoch (or a mid-epoch stop), and
``best.pt``, the weights with the highest eval accuracy so far. Both carry the model card
(hvdtrain/card.py), so `eval`, `predict` and `export` need nothing else.

Every Horovod call carries a ``# Horovod:`` comment saying why it is there.
"""

from __future__ import annotations

import math

import horovod.torch as hvd
import torch

from hvdtrain import events
from hvdtrain.card import CARD_FORMAT, ModelCard
from hvdtrain.worker import checkpoint
from hvdtrain.worker.job import Job


def rank_states(job: Job) -> list[tuple[torch.Tensor, list[torch.Tensor] | None]]:
    """Every rank: all ranks' (CPU RNG state: dropout, augmentation; PowerSGD error buffers or
    None), for a checkpoint: what differs between ranks."""
    psgd = job.powersgd
    # Horovod: gathered to rank 0, which writes them; a resume gives each rank its own back.
    return hvd.allgather_object((torch.get_rng_state(), psgd.local() if psgd else None))


def model_card(job: Job, epoch: int, eval_acc: float | None) -> ModelCard:
    """What inference needs to rebuild and feed the model, without the recipe."""
    r, data = job.recipe, job.data
    mean, std = data.norm if data.norm is not None else (None, None)
    return {"format": CARD_FORMAT, "model": r.model.model_dump(mode="json"),
            "data": r.data.model_dump(mode="json"), "seed": r.train.seed,
            "input_shape": list(data.input_shape),
            "num_classes": data.num_classes, "classes": data.classes,
            "mean": None if mean is None else list(mean),
            "std": None if std is None else list(std), "epoch": epoch,
            "eval_acc": None if eval_acc is None or math.isnan(eval_acc) else eval_acc}


def save_checkpoint(job: Job, epoch: int, global_step: int, step: int = 0,
                    rng: list[tuple[torch.Tensor, list[torch.Tensor] | None]] | None = None,
                    eval_acc: float | None = None) -> str:
    """Rank 0: the durable checkpoint after ``epoch`` completed epochs (and ``step`` steps of the
    next, whose first ``processed_samples`` of the epoch's permutation are done), then its event."""
    path = checkpoint.save(job.run_dir.checkpoints, epoch, {
        "epoch": epoch, "step": step, "global_step": global_step, "world_size": hvd.size(),
        "rng": None if rng is None else [r for r, _ in rng],
        **({"powersgd": {**job.powersgd.state(), "errors": None if rng is None else
                         [e for _, e in rng]}} if job.powersgd else {}),
        "processed_samples": job.sampler.processed_num if step else 0,
        "model": job.model.state_dict(), "optimizer": job.optimizer.state_dict(),
        "recipe_model": job.recipe.model.model_dump(mode="json"),
        "classes": job.data.classes, "card": model_card(job, epoch, eval_acc),
    }, keep=job.recipe.train.keep_checkpoints,
        before_replace=lambda: job.hooks.before_checkpoint_replace(0, epoch), step=step)
    events.emit("checkpoint", epoch=epoch, step=step, path=str(path))
    return str(path)


def best_so_far(job: Job) -> float:
    """Rank 0: the eval accuracy of ``best.pt``, read once per process (a resumed run, or a new
    rank 0 after an elastic reset, must not replace a better model with a worse one)."""
    if job.best_acc is None:
        job.best_acc = -1.0
        path = job.run_dir.best_checkpoint
        if path.is_file():
            try:
                card = torch.load(path, map_location="cpu", weights_only=True).get("card") or {}
                job.best_acc = float(card.get("eval_acc") or -1.0)
            except Exception as exc:  # noqa: BLE001 - unreadable: the next evaluation replaces it
                events.emit("warning", message=f"{path} is unusable ({checkpoint.unusable(exc)}): "
                                               "the next evaluated epoch replaces it")
    return job.best_acc


def keep_best(job: Job, epoch: int, global_step: int, eval_acc: float) -> None:
    """Rank 0, after an evaluation: ``best.pt`` becomes these weights when they beat it."""
    if math.isnan(eval_acc) or eval_acc <= best_so_far(job):
        return
    path = checkpoint.write_atomic(job.run_dir.best_checkpoint, {
        "epoch": epoch, "global_step": global_step, "model": job.model.state_dict(),
        "card": model_card(job, epoch, eval_acc)})
    job.best_acc = eval_acc
    events.emit("best", epoch=epoch, eval_acc=eval_acc, path=str(path))
