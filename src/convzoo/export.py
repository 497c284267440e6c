"""``convzoo export``: a trained model as ONNX or a ``torch.export`` program (.pt2), both with
the preprocessing folded in, or as safetensors.

ONNX: the exported graph is ``predictor.Predictor`` in eval mode (its ``forward``, the
composition ``convzoo eval``/``predict`` and the API run, without TTA): it takes float32 images
(B, C, H, W) on the 0-255 scale at the run's input geometry (``checkpoint_geometry``: what
``convzoo predict`` feeds after decoding a file and bringing it to the run's channels and size
by its crop/squash rule), applies the checkpoint's fitted preprocessing and deterministic eval
view (centre crop where the recipe crops), then the network, and returns logits (B, classes).
The batch axis is dynamic. Class names, the input geometry (channels, height, width and the
resize rule a caller must apply first) and the preprocessing kind are stored in the ONNX
model's ``metadata_props``.

pt2: the same graph as ONNX (``Predictor.forward``: float32 0-255 images (B, C, H, W) in,
logits out, preprocessing and eval view included, dynamic batch axis) as a ``torch.export``
program saved with ``torch.export.save``; ``torch.export.load(path).module()`` runs it with no
convzoo installed. The ONNX metadata goes into the archive as ``extra_files['convzoo.json']``.

safetensors: the model's ``state_dict`` (loadable with ``model.load_state_dict``) with the
metadata of the run's own ``model.safetensors`` (one format: ``saved.weights_metadata``):
what rebuilds the model, its classes, geometry, preprocessing, eval view and config, so
``convzoo eval``/``predict``/``export`` and ``convzoo.load`` read it alone.

The input may be a run directory, a ``.pt`` checkpoint or such a ``.safetensors`` file.

TorchScript is not offered: ``torch.jit.trace`` is deprecated in current PyTorch (2.10+).
"""

from __future__ import annotations

import contextlib
import inspect
import io
import logging
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from convzoo import saved as ckpt_io
from convzoo.errors import ConvzooError
from convzoo.jsonio import dumps_json
from convzoo.models.registry import CUSTOM_PREFIX, supplied
from convzoo.outputs import check_output_file, write_output
from convzoo.predictor import Predictor
from convzoo.runtime import Runtime
from convzoo.saved import checkpoint_geometry, read_checkpoint, weights_metadata

log = logging.getLogger("convzoo")

FORMATS = {"onnx": ".onnx", "pt2": ".pt2", "safetensors": ".safetensors"}
PT2_METADATA = "convzoo.json"  # the .pt2 archive's extra file holding onnx_metadata's fields
INPUT_NAME, OUTPUT_NAME = "images", "logits"


def load_inference_model(path: str | Path, which: str = "last",
                         weights: str = "auto") -> tuple[Predictor, dict]:
    """The checkpoint's model as the exported graph: a Predictor on the CPU in fp32 and the
    contiguous memory format, without TTA, in eval mode; and the checkpoint dict."""
    ckpt = read_checkpoint(path, which, weights)  # a run, a .pt or a model.safetensors
    cpu = Runtime(torch.device("cpu"), None, False)
    return Predictor.from_checkpoint(ckpt, cpu, weights, tta="none").eval(), ckpt


@dataclass
class ExportResult:
    """What ``export`` wrote, and what ``check`` found (empty when not asked)."""

    path: Path
    format: str
    exporter: str = ""  # onnx: "dynamo" or "torchscript" (the legacy exporter used as fallback)
    checks: list[str] = field(default_factory=list)


def default_output(path: str | Path, which: str, fmt: str) -> Path:
    """RUN_DIR/<last|best>.<ext>, or the checkpoint file with the format's suffix."""
    p = Path(path)
    return (p / which if p.is_dir() else p).with_suffix(FORMATS[fmt])


def export(path: str | Path, fmt: str, *, out: str | Path | None = None, which: str = "last",
           opset: int | None = None, check: bool = False, weights: str = "auto",
           model: nn.Module | Callable[..., nn.Module] | None = None) -> ExportResult:
    """Export the checkpoint at ``path`` (run directory or .pt file) to ``fmt``; ``weights``:
    auto (the EMA when the run kept one), ema or raw (``checkpoint.select_weights``).
    ``model``: the module (or its factory) of a run of a module passed to ``convzoo.train`` as
    an object (``custom:...``), as ``convzoo.load`` takes it."""
    if model is not None:
        with supplied(CUSTOM_PREFIX, model):
            return export(path, fmt, out=out, which=which, opset=opset, check=check,
                          weights=weights)
    if fmt not in FORMATS:
        raise ConvzooError(f"unknown export format '{fmt}' (choose: {', '.join(FORMATS)})")
    if fmt != "onnx" and opset is not None:
        raise ConvzooError("--opset applies to --format onnx only")
    default = out is None or not str(out)
    target = Path(out) if not default else default_output(path, which, fmt)
    # Checked before any work: a link, a device, a folder, a run's own files and the input are
    # refused; the write is atomic, after the same check again (outputs.write_output).
    option, suffixes = ("--out" if not default else "export to"), (FORMATS[fmt],)
    target = check_output_file(target, option=option, suffixes=suffixes, inputs=[path])

    def write(fill: Any) -> None:
        write_output(target, fill, option=option, suffixes=suffixes, inputs=[path])

    wrapper, ckpt = load_inference_model(path, which, weights)
    state, weights = ckpt_io.select_weights(ckpt, weights)
    if fmt == "safetensors":
        result = ExportResult(target, fmt)
        metadata = weights_metadata(ckpt, weights)  # the one format, as the run's own file
        write(lambda tmp: ckpt_io.save_safetensors(state, tmp, metadata))
        if check:
            result.checks.append(check_safetensors(target, wrapper.model))
        return result
    if fmt == "pt2":
        write(lambda tmp: export_pt2(wrapper, ckpt, tmp, weights=weights))
        result = ExportResult(target, fmt, "torch.export")
        if check:
            result.checks.append(check_pt2(target, wrapper, checkpoint_geometry(ckpt).shape))
        return result
    exporter: list[str] = []
    write(lambda tmp: exporter.append(export_onnx(wrapper, ckpt, tmp, opset=opset,
                                                  weights=weights)))
    result = ExportResult(target, fmt, exporter[0])
    if check:
        result.checks.extend(check_onnx(target, wrapper, checkpoint_geometry(ckpt).shape))
    return result


# ----------------------------------------------------------------------------- safetensors


def check_safetensors(path: Path, model: nn.Module) -> str:
    """Reload the file (verified, as every reader does) and compare it with the model's state;
    raise if anything differs."""
    tensors, _ = ckpt_io.read_safetensors(path)
    state = model.state_dict()
    if set(tensors) != set(state):
        raise ConvzooError(f"{path}: keys differ from the model's state_dict")
    bad = [k for k, v in state.items() if not torch.equal(tensors[k], v.detach().cpu())]
    if bad:
        raise ConvzooError(f"{path}: tensor '{bad[0]}' differs from the checkpoint")
    return f"safetensors: {len(tensors)} tensors reload identically"


# ----------------------------------------------------------------------------- torch.export


def export_pt2(wrapper: Predictor, ckpt: dict[str, Any], path: Path,
               weights: str = "raw") -> None:
    """``torch.export`` of ``wrapper`` (eval mode, a dynamic batch axis) saved to ``path``
    with the ONNX export's metadata as the extra file :data:`PT2_METADATA`."""
    shape = checkpoint_geometry(ckpt).shape
    example = torch.randint(0, 256, (2, *shape)).float()  # (2, C, H, W) 0-255
    batch = torch.export.Dim("batch", min=1)
    try:
        with _quiet(), torch.no_grad():
            program = torch.export.export(wrapper, (example,), dynamic_shapes=({0: batch},))
    except Exception as e:  # torch.export raises many types (unsupported ops, guards)
        raise ConvzooError(f"torch.export of {ckpt['model_name']} failed "
                           f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})"
                           ) from None
    meta = dumps_json(onnx_metadata(ckpt, wrapper, weights))
    torch.export.save(program, str(path), extra_files={PT2_METADATA: meta})


def check_pt2(path: Path, wrapper: Predictor, image_shape: tuple[int, ...],
              atol: float = 1e-4, rtol: float = 1e-4) -> str:
    """Load the file back (``torch.export.load(path).module()``) and compare its logits with
    the PyTorch model's on 1 and 3 random images (batch sizes other than the traced one)."""
    try:
        module = torch.export.load(str(path)).module()
    except Exception as e:
        raise ConvzooError(f"{path}: torch.export.load failed ({type(e).__name__}: "
                           f"{str(e).splitlines()[0] if str(e) else ''})") from None
    diff = 0.0
    for n in (1, 3):
        x = torch.randint(0, 256, (n, *image_shape), generator=torch.Generator().manual_seed(n))
        x = x.float()
        with torch.no_grad():
            expected, got = wrapper(x).float(), module(x).float()
        diff = max(diff, (got - expected).abs().max().item())
        if got.shape != expected.shape or not torch.allclose(got, expected, atol=atol, rtol=rtol):
            raise ConvzooError(f"{path}: the loaded program's logits differ from PyTorch's "
                               f"by {diff:.2e}")
    return f"torch.export: logits of the loaded program match PyTorch (max abs diff {diff:.1e})"


# ----------------------------------------------------------------------------- onnx


def _require_onnx() -> Any:
    try:
        import onnx
    except ImportError:
        raise ConvzooError(
            "ONNX export needs the onnx and onnxscript packages: pip install 'convzoo[onnx]'"
        ) from None
    return onnx


def _accepts(fn: Any, name: str) -> bool:
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


@contextlib.contextmanager
def _quiet() -> Any:
    """Silence the exporters' progress prints and warnings (they are not the user's problem)."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export_onnx(wrapper: Predictor, ckpt: dict[str, Any], path: Path,
                opset: int | None = None, weights: str = "raw") -> str:
    """Write ``wrapper`` as ONNX with a dynamic batch axis and metadata; returns the exporter.

    The default exporter of the installed torch is tried first (torch.export-based since 2.9);
    if it fails, the legacy TorchScript-based exporter (``dynamo=False``) is used.
    """
    onnx = _require_onnx()
    shape = checkpoint_geometry(ckpt).shape
    example = torch.randint(0, 256, (2, *shape)).float()  # (2, C, H, W) 0-255
    common: dict[str, Any] = {"input_names": [INPUT_NAME], "output_names": [OUTPUT_NAME]}
    if opset is not None:
        common["opset_version"] = opset
    has_dynamo = _accepts(torch.onnx.export, "dynamo")
    attempts: list[tuple[str, dict[str, Any]]] = []
    if has_dynamo:
        batch = torch.export.Dim("batch")
        attempts.append(("dynamo", {"dynamo": True, "dynamic_shapes": ({0: batch},),
                                    "external_data": False, "verbose": False}))
    legacy = {"dynamic_axes": {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}}
    attempts.append(("torchscript", {**legacy, "dynamo": False} if has_dynamo else legacy))
    errors = []
    for name, kwargs in attempts:
        try:
            with _quiet(), torch.no_grad():
                torch.onnx.export(wrapper, (example,), str(path), **common, **kwargs)
        except Exception as e:  # exporters raise many types; try the next one
            errors.append(f"{name}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            log.debug(f"ONNX export with the {name} exporter failed: {e}")
            continue
        break
    else:
        raise ConvzooError(f"ONNX export of {ckpt['model_name']} failed ({'; '.join(errors)})")
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, onnx_metadata(ckpt, wrapper, weights))
    model.doc_string = (f"convzoo {ckpt['model_name']}: float32 images (batch, "
                        f"{', '.join(map(str, shape))}) on the 0-255 scale -> "
                        f"logits (batch, {ckpt['num_classes']}); preprocessing included")
    onnx.save(model, str(path))
    return name


def onnx_metadata(ckpt: dict[str, Any], wrapper: Predictor,
                  weights: str = "raw") -> dict[str, str]:
    """metadata_props of the exported graph."""
    return {
        "convzoo.model": ckpt["model_name"],
        "convzoo.classes": dumps_json(ckpt["classes"]),
        "convzoo.input_size": dumps_json(list(checkpoint_geometry(ckpt).shape)),  # (C, H, W)
        # how a caller brings an image to input_size: crop = scale to cover, centre crop;
        # squash = resize ignoring the aspect ratio (bilinear, antialiased)
        "convzoo.geometry": dumps_json(checkpoint_geometry(ckpt).state()),
        "convzoo.input": "float32 (batch, C, H, W), RGB/grey values 0-255, unnormalised",
        "convzoo.output": "logits (batch, classes); softmax for probabilities",
        "convzoo.preprocess": wrapper.preprocess.kind,
        "convzoo.epoch": str(ckpt["epoch"]),
        "convzoo.weights": weights,  # "ema" or "raw" (select_weights)
        "convzoo.model_kwargs": dumps_json(ckpt["model_kwargs"]),
    }


def check_onnx(path: Path, wrapper: Predictor, image_shape: tuple[int, ...],
               atol: float = 1e-4, rtol: float = 1e-4) -> list[str]:
    """onnx.checker on the file; then, if onnxruntime is installed, compare its logits with
    the PyTorch model's on 3 random images (a batch size other than the traced one)."""
    onnx = _require_onnx()
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as e:
        raise ConvzooError(f"{path}: onnx.checker failed: {str(e).splitlines()[0]}") from None
    notes = ["onnx.checker: ok"]
    try:
        import onnxruntime as ort
    except ImportError:
        return [*notes, "onnxruntime not installed: output comparison skipped"]
    x = torch.randint(0, 256, (3, *image_shape), generator=torch.Generator().manual_seed(0))
    x = x.float()
    with torch.no_grad():
        expected = wrapper(x).float()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = torch.from_numpy(session.run(None, {INPUT_NAME: x.numpy()})[0])
    diff = (got - expected).abs().max().item()
    if not torch.allclose(got, expected, atol=atol, rtol=rtol):
        raise ConvzooError(f"{path}: onnxruntime logits differ from PyTorch's by {diff:.2e}")
    return [*notes, f"onnxruntime: logits match PyTorch (max abs diff {diff:.1e})"]
