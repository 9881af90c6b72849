"""The elastic variant of the training loop (recipe section ``elastic``): workers may leave or join;
the loop runs under ``hvd.elastic.run`` and resumes from the last in-memory commit after a reset.

State committed every ``elastic.commit_every`` steps lives in memory (Horovod's ``TorchState``);
rank 0 still writes durable checkpoints each epoch. The LR is a function of the current world
size, so after a reset it is rescaled to the new number of workers automatically.
"""

from __future__ import annotations

import time
from pathlib import Path

import horovod.torch as hvd
import torch
import torch.nn.functional as F

from hvdtrain import events, faults
from hvdtrain.data import load_dataset
from hvdtrain.heartbeat import Heartbeat
from hvdtrain.models import build_model
from hvdtrain.plan import steps_per_epoch
from hvdtrain.recipe import Recipe, lr_config
from hvdtrain.schedule import lr_at, peak_lr
from hvdtrain.train import (
    distributed_optimizer,
    emit_start,
    evaluate,
    finish,
    grads_finite,
    optimizer_hash,
    prime_optimizer_state,
    report_nonfinite,
    restore_checkpoint,
    save_checkpoint,
    share_cores,
    sync_buffers,
)


def run_elastic(recipe: Recipe, run_dir: Path, resume: bool, fault: faults.Fault | None,
                beat: Heartbeat) -> int:
    assert recipe.elastic is not None
    # Horovod: join the (elastic) job; later resets re-initialise inside hvd.elastic.run.
    hvd.init()
    torch.manual_seed(recipe.train.seed)
    data = load_dataset(recipe.data, recipe.train.seed)
    model = build_model(recipe.model, data.input_shape, data.num_classes)
    optimizer = distributed_optimizer(model, recipe)
    prime_optimizer_state(optimizer)
    # Horovod: a sampler that re-shards the not-yet-processed samples whenever the world changes.
    sampler = hvd.elastic.ElasticSampler(range(len(data.train_y)), shuffle=True,
                                         seed=recipe.train.seed)
    # Horovod: model, optimizer, sampler and counters, committed in memory and synced on reset.
    state = hvd.elastic.TorchState(model=model, optimizer=optimizer, sampler=sampler, epoch=0,
                                   batch=0, global_step=0, resets=0)

    def on_reset() -> None:
        state.resets += 1
        if hvd.rank() == 0:
            cfg = lr_config(recipe)
            events.emit("warning", message=f"elastic reset #{state.resets}: world size now "
                                           f"{hvd.size()}, peak LR rescaled to "
                                           f"{peak_lr(cfg, hvd.size()):g}")

    state.register_reset_callbacks([on_reset])
    if resume and hvd.rank() == 0:
        epoch, _ = restore_checkpoint(run_dir / "checkpoints", model, optimizer)
        if epoch < 0:
            return 3
        # The first state.sync() inside hvd.elastic.run broadcasts all of this from rank 0.
        state.epoch = epoch
        state.global_step = epoch * steps_per_epoch(len(data.train_y), hvd.size(), recipe)
        sampler.set_epoch(epoch)
    state.save()  # the first sync broadcasts the *saved* state from rank 0
    code = _train(state, recipe, data, run_dir, fault, beat)
    return int(code)


@hvd.elastic.run
def _train(state, recipe: Recipe, data, run_dir: Path, fault, beat: Heartbeat) -> int:
    model, optimizer, sampler = state.model, state.optimizer, state.sampler
    cfg = lr_config(recipe)
    batch, epochs = recipe.data.batch_size, recipe.train.epochs
    commit_every = recipe.elastic.commit_every
    params = [p for p in model.parameters() if p.requires_grad]
    eval_acc = eval_loss = float("nan")
    nodes = share_cores()  # again after every reset: the world may have changed
    if state.resets == 0 and state.batch == 0 and state.epoch > 0:
        # Horovod: each rank's optimizer-state hash after the sync, to show the restore reached all.
        hashes = hvd.allgather_object(optimizer_hash(optimizer))
        if hvd.rank() == 0:
            events.emit("resumed", epoch=state.epoch, path=str(run_dir / "checkpoints"),
                        optimizer_hashes=hashes)
    if hvd.rank() == 0 and state.batch == 0 and state.resets == 0:
        emit_start(recipe, data, model, optimizer, nodes, state.epoch,
                   steps_per_epoch(len(data.train_y), hvd.size(), recipe))
    while state.epoch < epochs:
        epoch = state.epoch
        size, rank = hvd.size(), hvd.rank()
        spe_full = steps_per_epoch(len(data.train_y), size, recipe)  # the schedule's epoch length
        indices = torch.tensor(list(iter(sampler)), dtype=torch.long)
        steps = len(indices) // batch  # equal on every rank: the sampler pads to equal shards
        model.train()
        t0 = t_win = time.perf_counter()
        window = torch.zeros(3, dtype=torch.float64)
        first = state.batch  # steps of this epoch already committed before a reset
        for step in range(first, first + steps):
            local = step - first
            beat.at("compute", epoch + 1, step + 1)
            faults.trigger(fault, "kill", rank, epoch + 1, step + 1)
            idx = indices[local * batch:(local + 1) * batch]
            lr = lr_at(state.global_step, spe_full, size, cfg)  # rescaled with the world size
            for group in optimizer.param_groups:
                group["lr"] = lr
            optimizer.zero_grad()
            out = model(data.train_x[idx])
            loss = F.cross_entropy(out, data.train_y[idx])
            loss.backward()
            beat.at("allreduce", epoch + 1, step + 1)
            optimizer.synchronize()
            if not grads_finite(params):
                report_nonfinite(rank, epoch + 1, step + 1, state.global_step, loss, recipe)
                return 4
            with optimizer.skip_synchronize():
                optimizer.step()
            with torch.no_grad():
                window += torch.stack([loss.detach().double() * len(idx),
                                       (out.argmax(1) == data.train_y[idx]).sum().double(),
                                       torch.tensor(float(len(idx)), dtype=torch.float64)])
            state.global_step += 1
            sampler.record_batch(local, batch)
            if (step + 1) % commit_every == 0:
                state.batch = step + 1
                # Horovod: commit in-memory state and pick up host changes at a safe point.
                state.commit()
            if rank == 0 and (step + 1) % recipe.train.log_interval == 0:
                now = time.perf_counter()
                events.emit("step", epoch=epoch + 1, step=step + 1, steps=spe_full,
                            global_step=state.global_step, loss=loss.item(),
                            acc=(window[1] / window[2]).item(), lr=lr,
                            images_per_s=recipe.train.log_interval * batch * size / (now - t_win))
                t_win = now
        seconds = time.perf_counter() - t0
        sync_buffers(model)
        eval_loss, eval_acc = evaluate(model, data, recipe.data.eval_batch_size, rank, size)
        # Horovod: epoch metrics averaged over the ranks alive now.
        total = hvd.allreduce(window, op=hvd.Sum, name="elastic_epoch")
        if rank == 0:
            events.emit("epoch", epoch=epoch + 1, epochs=epochs,
                        train_loss=(total[0] / total[2]).item(),
                        train_acc=(total[1] / total[2]).item(), eval_loss=eval_loss,
                        eval_acc=eval_acc, seconds=seconds,
                        images_per_s=total[2].item() / max(seconds, 1e-9), lr=lr,
                        global_step=state.global_step, world_size=size)
            save_checkpoint(run_dir, recipe, epoch + 1, state.global_step, model, optimizer)
        state.epoch, state.batch = epoch + 1, 0
        sampler.set_epoch(epoch + 1)
        state.commit()
    finish(recipe, model, state.global_step, eval_acc, eval_loss, resets=state.resets)
    return 0
