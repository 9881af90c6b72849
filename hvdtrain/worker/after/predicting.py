"""`hvdtrain predict`: class names and probabilities for image files (image-folder models, with
the run's evaluation preprocessing) or ``.npy`` arrays (models of the built-in sets, normalised
with the training split's statistics from the card). A file that cannot be read is reported on its
own line; the others are still predicted."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from hvdtrain.card import ModelCard
from hvdtrain.errors import UserError
from hvdtrain.imagefolder import IMAGE_SUFFIXES

BATCH = 64


def expand(paths: list[Path], suffixes: tuple[str, ...]) -> list[Path]:
    """Files as given, and a folder's files with one of ``suffixes`` (recursively, sorted)."""
    out: list[Path] = []
    for p in paths:
        if p.is_dir():
            out += sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in suffixes
                          and not any(part.startswith(".") for part in f.relative_to(p).parts))
        else:
            out.append(p)
    return out


def image_inputs(card: ModelCard, files: list[Path]) -> list[tuple[str, torch.Tensor | str]]:
    """(file, input tensor or the reason it failed) of each image file."""
    from hvdtrain.worker.images import BadImage, ImageDataset

    ds = ImageDataset([(str(f), -1) for f in files], card["data"]["image_size"], False, False,
                      tuple(card["mean"]), tuple(card["std"]))
    out: list[tuple[str, torch.Tensor | str]] = []
    for i, f in enumerate(files):
        item = ds[i] if f.is_file() else BadImage(str(f), "no such file")
        out.append((str(f), item.reason if isinstance(item, BadImage) else item[0]))
    return out


def array_inputs(card: ModelCard, files: list[Path]) -> list[tuple[str, torch.Tensor | str]]:
    """(file[index], input tensor or the reason) of every array in each ``.npy`` file: one
    input (C, H, W) or a stack (N, C, H, W); for one channel also (H, W) and (N, H, W). Pixel
    values in the data set's own units (digits 0..16, MNIST and CIFAR-10 0..255)."""
    shape = tuple(card["input_shape"])
    mean = torch.tensor(card["mean"]).view(-1, 1, 1)
    std = torch.tensor(card["std"]).view(-1, 1, 1)
    out: list[tuple[str, torch.Tensor | str]] = []
    for f in files:
        try:
            arr = torch.from_numpy(np.load(f, allow_pickle=False).astype(np.float32))
        except Exception as exc:  # noqa: BLE001 - missing, not .npy, pickled objects
            out.append((str(f), f"{type(exc).__name__}: {str(exc)[:200]}"))
            continue
        if shape[0] == 1 and arr.dim() in (2, 3) and tuple(arr.shape[-2:]) == shape[1:]:
            arr = arr.unsqueeze(-3)
        stack = arr.unsqueeze(0) if arr.dim() == 3 else arr
        if stack.dim() != 4 or tuple(stack.shape[1:]) != shape:
            out.append((str(f), f"an array of shape {tuple(arr.shape)}; this model takes "
                                f"{shape} (or N x {shape})"))
            continue
        named = [str(f)] if arr.dim() == 3 else [f"{f}[{i}]" for i in range(len(stack))]
        out += [(name, (x - mean) / std) for name, x in zip(named, stack)]
    return out


def predict(model: torch.nn.Module, card: ModelCard, names: list[str], paths: list[Path],
            top_k: int) -> list[dict[str, Any]]:
    """One record per input: the top-k classes with probabilities, or the error."""
    if not 1 <= top_k <= card["num_classes"]:
        raise UserError(f"--top-k {top_k}: the model has {card['num_classes']} classes: give "
                        f"1..{card['num_classes']}")
    images = card["data"]["dataset"] == "imagefolder"
    if card["mean"] is None:
        raise UserError("this model was trained on a data component, whose preprocessing hvdtrain "
                        "does not know: predict with your component's own code")
    files = expand(paths, IMAGE_SUFFIXES if images else (".npy",))
    if not files:
        raise UserError("no input files: give image files or folders of them" if images else
                        "no input files: give .npy arrays or folders of them")
    inputs = image_inputs(card, files) if images else array_inputs(card, files)
    good = [(i, x) for i, (_, x) in enumerate(inputs) if isinstance(x, torch.Tensor)]
    probs: dict[int, torch.Tensor] = {}
    with torch.no_grad():
        for start in range(0, len(good), BATCH):
            part = good[start:start + BATCH]
            p = torch.softmax(model(torch.stack([x for _, x in part])).float(), dim=1)
            probs.update({i: row for (i, _), row in zip(part, p)})
    records = []
    for i, (name, x) in enumerate(inputs):
        if i not in probs:
            records.append({"file": name, "error": x})
            continue
        values, indices = probs[i].topk(top_k)
        records.append({"file": name, "top": [{"class": names[j], "index": j, "probability": v}
                                              for v, j in zip(values.tolist(), indices.tolist())]})
    return records
