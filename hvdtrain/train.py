"""The training loop every rank runs under horovodrun: ring-allreduce SGD with fp16 gradient
compression and the linearly scaled, gradually warmed-up learning rate.

Every Horovod call carries a ``# Horovod:`` comment saying why it is there.
"""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import horovod.torch as hvd
import torch
import torch.nn.functional as F

from hvdtrain import checkpoint, events, faults
from hvdtrain.data import Dataset, eval_shard, load_dataset, shard_batches
from hvdtrain.heartbeat import Heartbeat
from hvdtrain.models import build_model
from hvdtrain.plan import steps_per_epoch
from hvdtrain.recipe import Recipe, lr_config
from hvdtrain.schedule import lr_at, peak_lr


def make_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    o = recipe.optimizer
    if o.name == "sgd":
        return torch.optim.SGD(model.parameters(), lr=o.base_lr, momentum=o.momentum,
                               weight_decay=o.weight_decay)
    cls = torch.optim.Adam if o.name == "adam" else torch.optim.AdamW
    return cls(model.parameters(), lr=o.base_lr, betas=(o.momentum, 0.999),
               weight_decay=o.weight_decay)


def distributed_optimizer(model: torch.nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    hv = recipe.horovod
    # Horovod: wrap the optimizer so gradients are ring-allreduced (fused, compressed) before
    # every step; fp16 compression halves the bytes on the wire.
    return hvd.DistributedOptimizer(
        make_optimizer(model, recipe), named_parameters=model.named_parameters(),
        compression=hvd.Compression.fp16 if hv.compression == "fp16" else hvd.Compression.none,
        op=hvd.Adasum if hv.op == "adasum" else hvd.Average,
        gradient_predivide_factor=hv.gradient_predivide_factor,
        backward_passes_per_step=hv.backward_passes_per_step)


def state_hash(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter and buffer, to prove all ranks hold the same model."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def share_cores() -> list[str]:
    """Give this rank its share of the machine's cores (cores / ranks on the same machine);
    returns each rank's host as horovodrun named it.

    Counted by real node name, not Horovod's local_size: two "hosts" that are the same machine
    (localhost and 127.0.0.1, or network namespaces) would otherwise oversubscribe the cores.
    """
    node = os.uname().nodename
    # Horovod: every rank's machine and the host name horovodrun gave it, in rank order.
    seen = hvd.allgather_object((node, os.environ.get("HOROVOD_HOSTNAME", node)))
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // [n for n, _ in seen].count(node)))
    return [host for _, host in seen]


def prime_optimizer_state(optimizer: torch.optim.Optimizer) -> None:
    """Create the optimizer's per-parameter state with a zero-LR, zero-gradient local step.

    Horovod's broadcast_optimizer_state does such a step itself on ranks with empty state, but with
    the configured LR, so weight decay moves those ranks' weights after they were synchronised.
    """
    saved = [g["lr"] for g in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = 0.0
        for p in group["params"]:
            if p.requires_grad and p.grad is None:
                p.grad = torch.zeros_like(p)
    # Horovod: the wrapped optimizer's own step, so no allreduce is involved.
    super(optimizer.__class__, optimizer).step()
    for group, lr in zip(optimizer.param_groups, saved):
        group["lr"] = lr
    optimizer.zero_grad()


def grads_finite(params: list[torch.nn.Parameter]) -> bool:
    """One fused norm over every gradient: Inf or NaN anywhere makes it non-finite."""
    grads = [p.grad for p in params if p.grad is not None]
    return bool(torch.isfinite(torch.nn.utils.get_total_norm(grads))) if grads else True


def report_nonfinite(rank: int, epoch: int, step: int, global_step: int, loss: torch.Tensor,
                     recipe: Recipe) -> None:
    """Every rank stops here at the same step; rank 0 says why and which ranks' losses blew up."""
    # Horovod: gather which ranks saw a non-finite local loss, to name them in the message.
    bad = hvd.allgather_object(not bool(torch.isfinite(loss.detach())))
    if rank == 0:
        culprits = [r for r, b in enumerate(bad) if b]
        who = (f"local loss non-finite on rank(s) {', '.join(map(str, culprits))}" if culprits
               else "local losses finite: the overflow happened in the gradient allreduce")
        fix = ("set horovod.gradient_predivide_factor (e.g. to the number of workers) so fp16 sums "
               "stay in range, or lower optimizer.base_lr" if recipe.horovod.compression == "fp16"
               else "lower optimizer.base_lr or the warmup's peak")
        events.emit("error", message=f"non-finite gradients at epoch {epoch} step {step} (global "
                                     f"step {global_step + 1}); {who}. Stopped every rank before the "
                                     f"update, so checkpoints hold only finite weights. Fix: {fix}, "
                                     "or set train.on_nonfinite=skip")


def optimizer_hash(optimizer: torch.optim.Optimizer) -> str:
    """SHA-256 of the optimizer's per-parameter state (momentum buffers, Adam moments)."""
    return tensors_hash(optimizer.state_dict()["state"])


def tensors_hash(state: dict) -> str:
    h = hashlib.sha256()
    for key in sorted(state):
        for name, value in sorted(state[key].items()):
            h.update(f"{key}.{name}".encode())
            if isinstance(value, torch.Tensor):
                h.update(value.detach().cpu().contiguous().numpy().tobytes())
            else:
                h.update(repr(value).encode())
    return h.hexdigest()


def sync_buffers(model: torch.nn.Module) -> None:
    """Average BatchNorm running statistics so every rank evaluates (and saves) the same model."""
    for name, buf in model.named_buffers():
        if buf.is_floating_point():
            # Horovod: BN statistics are per-rank (gradients are averaged, buffers are not).
            hvd.allreduce_(buf, op=hvd.Average, name=f"buffer.{name}")


def evaluate(model: torch.nn.Module, data: Dataset, batch: int, rank: int, size: int) -> tuple[float, float]:
    model.eval()
    idx = eval_shard(len(data.eval_y), rank, size)
    sums = torch.zeros(3, dtype=torch.float64)
    with torch.no_grad():
        for part in idx.split(batch):
            out = model(data.eval_x[part])
            y = data.eval_y[part]
            sums += torch.tensor([F.cross_entropy(out, y, reduction="sum").item(),
                                  (out.argmax(1) == y).sum().item(), len(y)], dtype=torch.float64)
    # Horovod: each rank saw a different shard; sum the counts to get the global loss/accuracy.
    total = hvd.allreduce(sums, op=hvd.Sum, name="eval_sums")
    return (total[0] / total[2]).item(), (total[1] / total[2]).item()


def compression_report(optimizer: torch.optim.Optimizer, model: torch.nn.Module) -> dict:
    """What one allreduce of the full gradient puts on the wire with the configured compression."""
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    wire, _ = optimizer._compression.compress(flat)  # the object DistributedOptimizer uses
    return {"wire_dtype": str(wire.dtype).removeprefix("torch."),
            "grad_bytes": flat.numel() * flat.element_size(),
            "wire_bytes": wire.numel() * wire.element_size()}


def run(run_dir: Path, resume: bool) -> int:
    import yaml

    recipe = Recipe.model_validate(yaml.safe_load((run_dir / "recipe.yaml").read_text()))
    fault = faults.from_env()
    env_rank = int(os.environ.get("HOROVOD_RANK", "0"))
    beat = Heartbeat(env_rank).start()
    faults.trigger(fault, "delay_init", env_rank)
    if recipe.elastic is not None:
        from hvdtrain.elastic_loop import run_elastic

        return run_elastic(recipe, run_dir, resume, fault, beat)
    # Horovod: join the job; with Gloo this is the rendezvous with every other rank.
    hvd.init()
    # Horovod: rank and size place this process in the job.
    rank, size = hvd.rank(), hvd.size()
    nodes = share_cores()
    torch.manual_seed(recipe.train.seed + rank)  # dropout etc.; weights come from rank 0 below
    data = load_dataset(recipe.data, recipe.train.seed)
    k = recipe.horovod.backward_passes_per_step
    spe = steps_per_epoch(len(data.train_y), size, recipe)
    model_cfg = recipe.model
    if faults.trigger(fault, "model_shape", rank):
        model_cfg = model_cfg.model_copy(update={"width": model_cfg.width + 1})
    model = build_model(model_cfg, data.input_shape, data.num_classes)
    optimizer = distributed_optimizer(model, recipe)

    ckpt_dir = run_dir / "checkpoints"
    start_epoch, restored_from = 0, ""
    if rank == 0 and resume:
        start_epoch, restored_from = restore_checkpoint(ckpt_dir, model, optimizer)
    # Horovod: every rank must resume from rank 0's epoch (-1: rank 0 could not load a checkpoint).
    start_epoch = int(hvd.broadcast(torch.tensor(start_epoch), root_rank=0, name="start_epoch").item())
    if start_epoch < 0:
        return 3
    # Horovod: identical optimizer state and starting weights everywhere (fresh or restored).
    # Optimizer state first: on a rank with empty state Horovod initialises it with a zero-gradient
    # step, which weight decay turns into a parameter change; the parameter broadcast undoes it.
    hvd.broadcast_optimizer_state(optimizer, root_rank=0)
    hvd.broadcast_parameters(model.state_dict(), root_rank=0)
    if start_epoch > 0:
        # Horovod: gather each rank's optimizer-state hash to show the restore reached every rank.
        opt_hashes = hvd.allgather_object(optimizer_hash(optimizer))
        if rank == 0:
            events.emit("resumed", epoch=start_epoch, path=restored_from,
                        optimizer_hashes=opt_hashes)

    cfg = lr_config(recipe)
    epochs, batch = recipe.train.epochs, recipe.data.batch_size
    images_per_step = batch * k * size
    if rank == 0:
        emit_start(recipe, data, model, optimizer, nodes, start_epoch, spe)
    global_step = start_epoch * spe
    eval_loss = eval_acc = float("nan")
    params = [p for p in model.parameters() if p.requires_grad]
    for epoch in range(start_epoch, epochs):
        faults.trigger(fault, "raise", rank, epoch + 1)
        model.train()
        epoch_sums = torch.zeros(3, dtype=torch.float64)
        window = torch.zeros(3, dtype=torch.float64)
        t0 = t_win = time.perf_counter()
        steps_in_window = 0
        for step, idx in enumerate(shard_batches(len(data.train_y), batch * k, spe, rank, size,
                                                 recipe.train.seed, epoch)):
            beat.at("compute", epoch + 1, step + 1)
            faults.trigger(fault, "kill", rank, epoch + 1, step + 1)
            faults.trigger(fault, "hang", rank, epoch + 1, step + 1)
            inject_inf = faults.trigger(fault, "inf_grad", rank, epoch + 1, step + 1)
            lr = lr_at(global_step, spe, size, cfg)
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad()  # Horovod 0.28 takes no set_to_none
            for micro in idx.split(batch):
                out = model(data.train_x[micro])
                y = data.train_y[micro]
                loss = F.cross_entropy(out, y)
                if inject_inf:
                    loss = loss * float("inf")
                (loss / k if k > 1 else loss).backward()  # k passes make one step
                with torch.no_grad():  # tensor accumulation: no per-step Python round trips
                    window[0] += loss.detach() * len(y)
                    window[1] += (out.argmax(1) == y).sum()
                    window[2] += len(y)
            # Horovod: wait for this step's gradient allreduces, so the check below sees the averaged
            # gradients. Averaging spreads one rank's Inf/NaN to every rank, so all ranks take the
            # same decision at the same step without another collective.
            beat.at("allreduce", epoch + 1, step + 1)
            optimizer.synchronize()
            if not grads_finite(params):
                if recipe.train.on_nonfinite == "stop":
                    report_nonfinite(rank, epoch + 1, step + 1, global_step, loss, recipe)
                    return 4
                optimizer.zero_grad()
                if rank == 0:
                    events.emit("warning", message=f"non-finite gradients at epoch {epoch + 1} "
                                                   f"step {step + 1}: step skipped")
            else:
                # Horovod: already synchronized above; step without allreducing again.
                with optimizer.skip_synchronize():
                    optimizer.step()
            global_step += 1
            steps_in_window += 1
            if (step + 1) % recipe.train.log_interval == 0 or step + 1 == spe:
                # Horovod: metrics averaged over all ranks, once per log interval (not per step).
                total = hvd.allreduce(window, op=hvd.Sum, name="train_window")
                epoch_sums += total
                now = time.perf_counter()
                if rank == 0:
                    events.emit("step", epoch=epoch + 1, step=step + 1, steps=spe,
                                global_step=global_step, loss=(total[0] / total[2]).item(),
                                acc=(total[1] / total[2]).item(), lr=lr,
                                images_per_s=steps_in_window * images_per_step / max(now - t_win, 1e-9))
                window.zero_()
                t_win, steps_in_window = now, 0
        seconds = time.perf_counter() - t0
        last = epoch + 1 == epochs
        beat.at("eval", epoch + 1, spe)
        if (epoch + 1) % recipe.train.eval_every == 0 or last:
            sync_buffers(model)
            eval_loss, eval_acc = evaluate(model, data, recipe.data.eval_batch_size, rank, size)
        if rank == 0:
            events.emit("epoch", epoch=epoch + 1, epochs=epochs,
                        train_loss=(epoch_sums[0] / epoch_sums[2]).item(),
                        train_acc=(epoch_sums[1] / epoch_sums[2]).item(),
                        eval_loss=eval_loss, eval_acc=eval_acc, seconds=seconds,
                        images_per_s=spe * images_per_step / max(seconds, 1e-9), lr=lr,
                        global_step=global_step)
            if (epoch + 1) % recipe.train.checkpoint_every == 0 or last:
                save_checkpoint(run_dir, recipe, epoch + 1, global_step, model, optimizer,
                                before_replace=lambda e=epoch + 1:
                                faults.trigger(fault, "kill_in_checkpoint", rank, e))
    beat.at("finish", epochs, spe)
    finish(recipe, model, global_step, eval_acc, eval_loss)
    return 0


def emit_start(recipe: Recipe, data: Dataset, model: torch.nn.Module,
               optimizer: torch.optim.Optimizer, hosts: list[str], start_epoch: int,
               spe: int) -> None:
    """Rank 0's ``start`` event: what is about to run, and what goes on the wire."""
    hv, size = recipe.horovod, hvd.size()
    events.emit("start", epochs=recipe.train.epochs, start_epoch=start_epoch, steps_per_epoch=spe,
                world_size=size, threads=torch.get_num_threads(), hosts=hosts,
                compression={"name": hv.compression, **compression_report(optimizer, model)},
                op=hv.op, base_lr=recipe.optimizer.base_lr,
                peak_lr=peak_lr(lr_config(recipe), size),
                params=sum(p.numel() for p in model.parameters()),
                train_samples=len(data.train_y), eval_samples=len(data.eval_y))


def save_checkpoint(run_dir: Path, recipe: Recipe, epoch: int, global_step: int,
                    model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                    before_replace=None) -> None:
    """Rank 0: the durable checkpoint after ``epoch`` completed epochs, then its event."""
    path = checkpoint.save(run_dir / "checkpoints", epoch, {
        "epoch": epoch, "global_step": global_step, "world_size": hvd.size(),
        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
        "recipe_model": recipe.model.model_dump(mode="json"),
    }, keep=recipe.train.keep_checkpoints, before_replace=before_replace)
    events.emit("checkpoint", epoch=epoch, path=str(path))


def finish(recipe: Recipe, model: torch.nn.Module, global_step: int, eval_acc: float,
           eval_loss: float, **extra: object) -> None:
    """Every rank: prove the replicas agree and ran the same steps; rank 0 reports ``done``."""
    sync_buffers(model)
    # Horovod: gather every rank's model hash to prove the replicas never diverged.
    hashes = hvd.allgather_object(state_hash(model))
    # Horovod: and every rank's step count, to show they all ran the same number of steps.
    steps = hvd.allgather_object(global_step)
    if hvd.rank() == 0:
        events.emit("done", epochs=recipe.train.epochs, eval_acc=eval_acc, eval_loss=eval_loss,
                    param_hashes=hashes, replicas_identical=len(set(hashes)) == 1,
                    steps_per_rank=steps, world_size=hvd.size(), **extra)


def restore_checkpoint(ckpt_dir: Path, model: torch.nn.Module,
             optimizer: torch.optim.Optimizer) -> tuple[int, str]:
    """Rank 0: load the newest valid checkpoint; returns (completed epoch or -1 on failure, path)."""
    checkpoint.clean_stray_temp_files(ckpt_dir)
    try:
        loaded = checkpoint.load_latest(ckpt_dir)
    except checkpoint.CheckpointError as exc:
        events.emit("warning", message=f"cannot resume: {exc}")
        return -1, ""
    if loaded is None:
        events.emit("warning", message=f"no checkpoint in {ckpt_dir}: starting from epoch 1")
        return 0, ""
    for path, why in loaded.skipped:
        events.emit("warning", message=f"skipped unusable checkpoint {path.name} ({why}); "
                                       f"using {loaded.path.name}")
    model.load_state_dict(loaded.state["model"])
    optimizer.load_state_dict(loaded.state["optimizer"])
    return int(loaded.state["epoch"]), str(loaded.path)
