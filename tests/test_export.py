"""`convzoo export`: ONNX with preprocessing folded in, safetensors weights, clear errors."""

import functools
import json

import numpy as np
import pytest
import torch

from convzoo import config as C
from convzoo import saved as ckpt_io
from convzoo.cli import main
from convzoo.data.transforms.augment import build_eval_transform
from convzoo.saved import load_model_for_eval

onnx = pytest.importorskip("onnx")


def convzoo_logits(run_dir, images: torch.Tensor) -> np.ndarray:
    """Logits of convzoo's own eval path: checkpoint -> preprocess -> eval view -> model."""
    ckpt = ckpt_io.load_checkpoint(run_dir, "last")
    model, preprocess = load_model_for_eval(ckpt, torch.device("cpu"))
    view = build_eval_transform(C.from_dict(ckpt["config"]).augment)
    with torch.no_grad():
        return model(view(preprocess(images))).numpy()


def onnx_logits(path, images: torch.Tensor) -> np.ndarray:
    feed = {"images": images.float().numpy()}
    try:
        import onnxruntime as ort
    except ImportError:
        from onnx.reference import ReferenceEvaluator

        return ReferenceEvaluator(str(path)).run(None, feed)[0]
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feed)[0]


def tiny_images(n: int, seed: int = 0) -> torch.Tensor:
    """(n, 3, 8, 8) uint8 images like the run's training images."""
    return torch.randint(0, 256, (n, 3, 8, 8), dtype=torch.uint8,
                         generator=torch.Generator().manual_seed(seed))


def test_onnx_matches_pytorch(run_dir, tmp_path, capsys):
    out = tmp_path / "model.onnx"
    assert main(["export", str(run_dir), "--format", "onnx", "--out", str(out), "--check"]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out)
    assert "onnx.checker: ok" in captured.err
    onnx.checker.check_model(str(out), full_check=True)

    model = onnx.load(str(out))
    meta = {p.key: p.value for p in model.metadata_props}
    assert json.loads(meta["convzoo.classes"]) == [str(i) for i in range(10)]
    assert json.loads(meta["convzoo.input_size"]) == [3, 8, 8]
    assert meta["convzoo.model"] == "resnet20" and meta["convzoo.weights"] == "raw"
    batch_dim = model.graph.input[0].type.tensor_type.shape.dim[0]
    assert batch_dim.dim_param and not batch_dim.dim_value  # dynamic batch axis

    for n in (2, 3):  # the traced batch size and another
        images = tiny_images(n, seed=n)
        expected = convzoo_logits(run_dir, images)
        got = onnx_logits(out, images)
        assert got.shape == (n, 10)
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=0)


def test_legacy_exporter_fallback(run_dir, tmp_path, monkeypatch):
    """When the default (torch.export-based) exporter fails, the legacy one is used."""
    from convzoo import export as export_mod

    real = torch.onnx.export

    @functools.wraps(real)  # keeps the signature the exporter choice inspects
    def failing_dynamo(*args, **kwargs):
        if kwargs.get("dynamo", False):
            raise RuntimeError("simulated exporter failure")
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.onnx, "export", failing_dynamo)
    if not export_mod._accepts(real, "dynamo"):
        pytest.skip("this torch has only the legacy exporter")
    result = export_mod.export(run_dir, "onnx", out=tmp_path / "legacy.onnx", check=True)
    assert result.exporter == "torchscript"
    images = tiny_images(2)
    np.testing.assert_allclose(onnx_logits(result.path, images),
                               convzoo_logits(run_dir, images), atol=1e-4, rtol=0)


def test_safetensors_weights(run_dir, tmp_path, capsys):
    from safetensors import safe_open
    from safetensors.torch import load_file

    out = tmp_path / "w.safetensors"
    assert main(["export", str(run_dir), "--format", "safetensors", "--out", str(out),
                 "--checkpoint", "best"]) == 0
    assert capsys.readouterr().out.strip() == str(out)
    state = ckpt_io.load_checkpoint(run_dir, "best")["model"]
    tensors = load_file(str(out))
    assert set(tensors) == set(state)
    assert all(torch.equal(tensors[k], v) for k, v in state.items())
    with safe_open(str(out), "pt") as f:
        meta = f.metadata()
    assert meta["model"] == "resnet20" and json.loads(meta["classes"])[0] == "0"
    assert json.loads(meta["image_shape"]) == [3, 8, 8]
    assert json.loads(meta["preprocess"])["kind"] == "channel"
    assert meta["weights"] == "raw"  # the run kept no EMA


def test_default_output_path(run_dir, capsys):
    assert main(["export", str(run_dir), "--format", "safetensors"]) == 0
    assert capsys.readouterr().out.strip() == str(run_dir / "last.safetensors")
    assert (run_dir / "last.safetensors").is_file()


@pytest.mark.parametrize("case", ["format", "not_checkpoint", "missing", "opset"])
def test_bad_inputs_exit_2_with_one_line(case, run_dir, tmp_path, capsys):
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    args, needle = {
        "format": ([str(run_dir), "--format", "torchscript"], "torchscript"),
        "not_checkpoint": ([str(junk), "--format", "onnx"], str(junk)),
        "missing": ([str(tmp_path / "nope"), "--format", "onnx"], "nope"),
        "opset": ([str(run_dir), "--format", "safetensors", "--opset", "17"], "--opset"),
    }[case]
    assert main(["export", *args]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("convzoo: error:") and needle in lines[0]
