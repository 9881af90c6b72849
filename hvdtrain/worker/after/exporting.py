"""`hvdtrain export`: the model as safetensors weights, a ``torch.export`` program (.pt2) or ONNX
(torch's dynamo exporter), each with a JSON sidecar (the model card: architecture or component,
input shape, class names, mean/std), and each verified before it is reported done: reloaded
(safetensors into a freshly built model, .pt2 through ``torch.export.load``, ONNX in
onnxruntime) and its outputs compared with the checkpoint's on a batch. A file that fails the
check is removed, never left looking like a good export."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from hvdtrain.card import ModelCard
from hvdtrain.errors import UserError

TOLERANCE = 1e-4  # max |export - checkpoint| over the check batch's logits (fp32 reorderings)
CHECK_BATCH = 4
SUFFIX = {"safetensors": ".safetensors", "torch-export": ".pt2", "onnx": ".onnx"}
EXTRA = {"safetensors": "safetensors", "onnx": "onnx, onnxruntime and onnxscript"}


def export(model: torch.nn.Module, card: ModelCard, fmt: str, output: Path) -> dict[str, Any]:
    """Write ``output`` (and ``output``.json), check it, and say how close it came."""
    x = torch.randn((CHECK_BATCH, *card["input_shape"]), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = model(x).float()
    write, load = {"safetensors": (_write_safetensors, _load_safetensors),
                   "torch-export": (_write_program, _load_program),
                   "onnx": (_write_onnx, _load_onnx)}[fmt]
    sidecar = output.with_name(output.name + ".json")
    try:
        write(model, card, x, output)
        got = load(card, output)(x)
    except ImportError as exc:
        raise UserError(f"--format {fmt} needs {EXTRA.get(fmt, exc.name)}, which is not installed "
                        f"here: pip install 'hvdtrain[export]' (make install does)") from None
    except UserError:
        raise
    except Exception as exc:  # noqa: BLE001 - torch cannot trace the model, or the file is bad
        output.unlink(missing_ok=True)
        first = (str(exc).strip().splitlines() or [""])[0][:300]
        raise UserError(f"--format {fmt}: the model could not be exported ({type(exc).__name__}: "
                        f"{first}); a component model must be traceable by torch.export (no "
                        "data-dependent Python control flow)") from None
    diff = (got.float() - expected).abs().max().item()
    if not diff <= TOLERANCE:
        output.unlink(missing_ok=True)
        raise UserError(f"--format {fmt}: the exported model's outputs differ from the "
                        f"checkpoint's by {diff:.3g} (> {TOLERANCE}): not written")
    sidecar.write_text(json.dumps({"format": fmt, "card": card}, indent=2) + "\n")
    return {"format": fmt, "output": str(output), "sidecar": str(sidecar),
            "bytes": output.stat().st_size, "max_abs_diff": diff, "tolerance": TOLERANCE,
            "check_batch": CHECK_BATCH}


def _write_safetensors(model: torch.nn.Module, card: ModelCard, _x: torch.Tensor,
                       out: Path) -> None:
    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(out), metadata={"hvdtrain.card": json.dumps(card)})


def _load_safetensors(card: ModelCard, out: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    from safetensors.torch import load_file

    from hvdtrain.recipe import ModelConfig
    from hvdtrain.worker.models import build_model

    fresh = build_model(ModelConfig.model_validate(card["model"]), tuple(card["input_shape"]),
                        card["num_classes"])
    fresh.load_state_dict(load_file(str(out)))
    return _no_grad(fresh.eval())


def _write_program(model: torch.nn.Module, card: ModelCard, x: torch.Tensor, out: Path) -> None:
    program = torch.export.export(model, (x,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    torch.export.save(program, str(out), extra_files={"hvdtrain_card.json": json.dumps(card)})


def _load_program(_card: ModelCard, out: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    return _no_grad(torch.export.load(str(out)).module())


def _write_onnx(model: torch.nn.Module, card: ModelCard, x: torch.Tensor, out: Path) -> None:
    import onnx
    import onnxscript  # noqa: F401 - the dynamo exporter needs it: a clear ImportError first

    torch.onnx.export(model, (x,), str(out), dynamo=True, input_names=["images"],
                      output_names=["logits"], dynamic_shapes=({0: "batch"},), verbose=False,
                      external_data=False)  # one file: the weights inside
    proto = onnx.load(str(out))
    onnx.helper.set_model_props(proto, {"hvdtrain.card": json.dumps(card)})
    onnx.save(proto, str(out))


def _load_onnx(_card: ModelCard, out: Path) -> Callable[[torch.Tensor], torch.Tensor]:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    return lambda x: torch.from_numpy(session.run(None, {"images": x.numpy()})[0])


def _no_grad(module: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)
    return run
