"""Preprocessing: every kind against an independent NumPy reference, ZCA whitening, state."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from convzoo.config import PreprocessConfig
from convzoo.data.transforms.preprocess import KINDS, Preprocessor, fit_preprocessor
from convzoo.errors import ConvzooError

SEED_E_MEAN = [125.307, 122.95, 113.865]
SEED_E_STD = [62.9932, 62.0887, 66.7048]


@pytest.fixture(scope="module")
def data() -> tuple[torch.Tensor, torch.Tensor]:
    """Train (64, 3, 6, 5) and test (16, 3, 6, 5) uint8 images with channel-dependent statistics."""
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, size=(80, 3, 6, 5)).astype(np.float64)
    base[:, 0] = base[:, 0] * 0.5 + 100  # give the channels different means and spreads
    base[:, 2] = base[:, 2] * 0.25
    imgs = torch.from_numpy(np.clip(base, 0, 255).astype(np.uint8))
    return imgs[:64], imgs[64:]


def _np(t: torch.Tensor) -> np.ndarray:
    return t.numpy().astype(np.float64)


def _gcn_np(x: np.ndarray, scale: float = 1.0) -> np.ndarray:
    flat = x.reshape(len(x), -1)
    out = (flat - flat.mean(1, keepdims=True)) / flat.std(1, keepdims=True) * scale
    return out.reshape(x.shape)


def _check(kind: str, train: torch.Tensor, test: torch.Tensor, expected: np.ndarray, **kw) -> None:
    p = fit_preprocessor(PreprocessConfig(kind=kind, **kw), train)
    out = p(test)
    assert out.dtype == torch.float32 and out.shape == test.shape
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-4, atol=1e-4)


def test_none(data):
    train, test = data
    _check("none", train, test, _np(test) / 255.0)


def test_mean_image(data):
    train, test = data
    tr = _np(train)
    mean = tr.mean(axis=0)  # (C, H, W)
    std = (tr - mean).std()
    _check("mean_image", train, test, (_np(test) - mean) / std)


def test_global_mean(data):
    train, test = data
    tr = _np(train)
    mean = tr.mean()
    std = tr.std()
    _check("global_mean", train, test, (_np(test) - mean) / std)


def test_channel_fitted(data):
    train, test = data
    tr = _np(train)
    mean = tr.mean(axis=(0, 2, 3)).reshape(1, 3, 1, 1)
    std = tr.std(axis=(0, 2, 3)).reshape(1, 3, 1, 1)
    _check("channel", train, test, (_np(test) - mean) / std)


def test_channel_fixed_constants_ignore_the_data(data):
    train, test = data
    mean = np.array(SEED_E_MEAN).reshape(1, 3, 1, 1)
    std = np.array(SEED_E_STD).reshape(1, 3, 1, 1)
    _check("channel", train, test, (_np(test) - mean) / std, mean=SEED_E_MEAN, std=SEED_E_STD)
    # Fitting on other data changes nothing.
    _check("channel", test, test, (_np(test) - mean) / std, mean=SEED_E_MEAN, std=SEED_E_STD)


def test_channel_fixed_mean_fitted_std(data):
    train, test = data
    tr = _np(train)
    mean = np.array(SEED_E_MEAN).reshape(1, 3, 1, 1)
    std = np.sqrt(((tr - mean) ** 2).mean(axis=(0, 2, 3))).reshape(1, 3, 1, 1)
    _check("channel", train, test, (_np(test) - mean) / std, mean=SEED_E_MEAN)


def test_gcn(data):
    train, test = data
    _check("gcn", train, test, _gcn_np(_np(test), 2.5), gcn_scale=2.5)


def test_gcn_constant_image_is_zero_not_nan():
    p = fit_preprocessor(PreprocessConfig(kind="gcn"), torch.zeros(2, 3, 4, 4, dtype=torch.uint8))
    out = p(torch.full((3, 3, 4, 4), 77, dtype=torch.uint8))
    assert torch.equal(out, torch.zeros_like(out))


def _zca_np(train: np.ndarray, eps: float) -> tuple[np.ndarray, np.ndarray]:
    g = _gcn_np(train).reshape(len(train), -1)
    mu = g.mean(0)
    cov = np.cov(g - mu, rowvar=False, bias=True)
    s, u = np.linalg.eigh(cov)
    s = np.maximum(s, 0)
    return mu, u @ np.diag(1.0 / np.sqrt(s + eps)) @ u.T


def test_gcn_zca_matches_numpy(data):
    train, test = data
    mu, w = _zca_np(_np(train), 0.05)
    expected = ((_gcn_np(_np(test)).reshape(len(test), -1) - mu) @ w).reshape(test.shape)
    p = fit_preprocessor(PreprocessConfig(kind="gcn_zca", zca_eps=0.05), train)
    np.testing.assert_allclose(p(test).numpy(), expected, rtol=1e-3, atol=2e-3)


def test_zca_whitened_training_data_has_identity_covariance():
    # N=2000 correlated 3x4x4 images: D=48 with a strongly non-diagonal covariance.
    rng = np.random.default_rng(1)
    d = 48
    mix = rng.normal(size=(d, d)) / np.sqrt(d) + np.eye(d)
    z = rng.normal(size=(2000, d)) @ mix.T
    imgs = np.clip(128 + 25 * z, 0, 255).astype(np.uint8).reshape(2000, 3, 4, 4)
    train = torch.from_numpy(imgs)
    g = _gcn_np(_np(train)).reshape(2000, -1)
    assert np.abs(np.cov(g, rowvar=False) - np.eye(d)).max() > 0.3  # really correlated before

    p = fit_preprocessor(PreprocessConfig(kind="gcn_zca", zca_eps=1e-5), train)
    y = p(train).reshape(2000, -1).double().numpy()
    cov = np.cov(y, rowvar=False, bias=True)
    # GCN makes every image sum to 0, so the all-ones direction has zero variance: the whitened
    # covariance is the identity on its orthogonal complement.
    proj = np.eye(d) - np.ones((d, d)) / d
    np.testing.assert_allclose(cov, proj, atol=2e-3)
    np.testing.assert_allclose(y.mean(0), 0, atol=1e-3)


@pytest.mark.parametrize("kind", KINDS)
def test_state_round_trip_is_exact(data, kind, tmp_path):
    train, test = data
    p = fit_preprocessor(PreprocessConfig(kind=kind), train)
    state = p.state()
    assert state["kind"] == kind
    tensors = {k: v for k, v in state.items() if k != "kind"}
    assert all(isinstance(v, torch.Tensor) and v.device.type == "cpu" for v in tensors.values())

    q = Preprocessor.from_state(state)
    assert torch.equal(q(test), p(test))
    for k, v in q.state().items():
        assert v == state[k] if k == "kind" else torch.equal(v, state[k])

    # Through torch.save (a checkpoint) and safetensors (tensors + "kind" as metadata).
    torch.save(state, tmp_path / "ckpt.pt")
    q = Preprocessor.from_state(torch.load(tmp_path / "ckpt.pt", weights_only=True))
    assert torch.equal(q(test), p(test))
    from safetensors import safe_open
    from safetensors.torch import save_file

    save_file(tensors, str(tmp_path / "pre.safetensors"), metadata={"kind": kind})
    with safe_open(str(tmp_path / "pre.safetensors"), "pt") as f:
        loaded = {"kind": f.metadata()["kind"], **{k: f.get_tensor(k) for k in f.keys()}}  # noqa: SIM118
    assert torch.equal(Preprocessor.from_state(loaded)(test), p(test))


@pytest.mark.parametrize("kind", KINDS)
def test_uint8_float_and_channels_last_inputs_agree(data, kind):
    train, test = data
    p = fit_preprocessor(PreprocessConfig(kind=kind), train)
    ref = p(test)
    as_float = test.float()
    assert torch.allclose(p(as_float), ref, atol=1e-5)
    assert torch.equal(as_float, test.float())  # the float input was not modified in place
    cl = test.float().contiguous(memory_format=torch.channels_last)
    assert torch.allclose(p(cl), ref, atol=1e-5)
    wide = torch.zeros(test.shape[:3] + (2 * test.shape[3],))
    wide[..., ::2] = test.float()
    strided = wide[..., ::2]  # non-contiguous view of the same images
    assert not strided.is_contiguous()
    assert torch.allclose(p(strided), ref, atol=1e-5)


def test_zero_is_the_mean_after_preprocessing():
    p = fit_preprocessor(
        PreprocessConfig(kind="channel", mean=SEED_E_MEAN, std=SEED_E_STD),
        torch.zeros(1, 3, 2, 2, dtype=torch.uint8),
    )
    assert p.fill_value == 0.0
    mean_img = torch.tensor(SEED_E_MEAN).view(1, 3, 1, 1).expand(2, 3, 4, 4)
    assert p(mean_img).abs().max() < 1e-5


def test_unknown_kind_names_key_and_value(data):
    with pytest.raises(ConvzooError, match=r"preprocess\.kind.*'whiten'"):
        fit_preprocessor(PreprocessConfig(kind="whiten"), data[0])
    with pytest.raises(ConvzooError, match="whiten"):
        Preprocessor.from_state({"kind": "whiten"})


def test_bad_values_are_user_errors(data):
    train, _ = data
    with pytest.raises(ConvzooError, match=r"preprocess\.mean"):
        fit_preprocessor(PreprocessConfig(kind="channel", mean=[1.0, 2.0]), train)
    with pytest.raises(ConvzooError, match=r"preprocess\.std"):
        fit_preprocessor(PreprocessConfig(kind="channel", std=[1.0, 0.0, 1.0]), train)
    with pytest.raises(ConvzooError, match="lacks"):
        Preprocessor.from_state({"kind": "channel", "mean": torch.zeros(3)})
    p = fit_preprocessor(PreprocessConfig(kind="mean_image"), train)
    with pytest.raises(ConvzooError, match="mean image"):
        p(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu(data):
    train, test = data
    for kind in KINDS:
        p = fit_preprocessor(PreprocessConfig(kind=kind), train, device="cuda")
        q = fit_preprocessor(PreprocessConfig(kind=kind), train)
        out = p.to("cuda")(test.cuda())
        assert out.device.type == "cuda"
        assert torch.allclose(out.cpu(), q(test), atol=1e-3)
