"""``python -m hvdtrain.worker.after eval|predict|export ... --out RESULT.json``: started by the
launcher (launcher/after.py), never by hand. Rank 0 writes the result (or ``{"ok": false,
"error": ...}`` for bad input, exit 2) to RESULT.json; a crash leaves a traceback on stderr."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m hvdtrain.worker.after")
    p.add_argument("command", choices=["eval", "predict", "export"])
    p.add_argument("--checkpoint", type=Path, action="append", required=True,
                   help="candidates, the preferred first (the first that reads is used)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--data", type=Path)
    p.add_argument("--top-k", type=int, default=3)
    p.add_argument("--format")
    p.add_argument("--output", type=Path)
    p.add_argument("--input", dest="inputs", type=Path, action="append", default=[])
    return p


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    from hvdtrain.errors import UserError

    try:
        result, code = run(args), 0
    except UserError as exc:
        result, code = {"ok": False, "error": exc.lines()}, 2
    if rank_of() == 0:  # under horovodrun every rank runs this; one writes
        tmp = args.out.with_name(f".{args.out.name}.tmp")
        tmp.write_text(json.dumps(result, indent=1) + "\n")
        os.replace(tmp, args.out)
    sys.stdout.flush()
    os._exit(code)  # without Horovod's atexit shutdown racing the other ranks' exits


def run(args: argparse.Namespace) -> dict[str, Any]:
    import torch

    from hvdtrain.worker.after import model as models

    torch.set_num_threads(max(1, (os.cpu_count() or 1)
                              // int(os.environ.get("HOROVOD_LOCAL_SIZE", "1"))))
    path, state, card, skipped = models.first_usable(args.checkpoint)
    net = models.build(card, state, path)
    head = {"ok": True, "checkpoint": str(path), "epoch": card["epoch"],
            "card_eval_acc": card["eval_acc"], "skipped_checkpoints": skipped,
            "classes": models.class_names(card)}
    if args.command == "eval":
        return {**head, **evaluate(net, card, args.data)}
    if args.command == "predict":
        from hvdtrain.worker.after.predicting import predict

        return {**head, "predictions": predict(net, card, head["classes"], args.inputs,
                                               args.top_k)}
    from hvdtrain.worker.after.exporting import export

    return {**head, **export(net, card, args.format, args.output)}


def rank_of() -> int:
    return int(os.environ.get("HOROVOD_RANK", "0"))


def evaluate(net: Any, card: Any, data: Path | None) -> dict[str, Any]:
    from hvdtrain.worker.after import scoring

    rank, size, reduce = scoring.world()
    batches, total, skipped = (scoring.own_split(card, rank, size) if data is None else
                               scoring.other_folder(card, data, rank, size))
    result = scoring.score(net, batches, card["num_classes"], reduce)
    bad = skipped()
    import torch

    result["skipped_images"] = int(reduce(torch.tensor(len(bad)), "eval.skipped").item())
    result["skipped_example"] = f"{bad[0].path} ({bad[0].reason})" if bad else None
    return {**result, "split": "the run's held-out split" if data is None else str(data),
            "world_size": size, "listed": total}


if __name__ == "__main__":
    main()
