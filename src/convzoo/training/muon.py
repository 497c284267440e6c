"""Muon: momentum SGD whose update for each weight matrix is orthogonalised (Jordan et al. 2024).

For a hidden weight ``W`` (a conv filter bank is viewed as the matrix (out, in*kh*kw)) the step is

    buf <- momentum * buf + grad                      (heavy-ball buffer)
    g   <- grad + momentum * buf   (Nesterov)  or  buf
    O   <- NewtonSchulz5(g)  ~ U V^T  where  g = U S V^T (all singular values pushed towards 1)
    W   <- W - lr * sqrt(max(1, out / fan_in)) * O

so every direction the gradient spans moves by about the same amount, whatever the gradient's
scale. Optionally (airbench94_muon) each weight is renormalised to Frobenius norm sqrt(out) before
the step, which makes weight decay unnecessary for these layers.

Everything else (biases, norm parameters, the classifier) is not a good fit for orthogonalisation
and takes a plain SGD step (coupled L2 decay, momentum, optional Nesterov), in the same optimizer:
a group's ``use_muon`` flag picks the rule. One optimizer means the LR schedule, lookahead and
checkpoints work unchanged; the groups come from ``convzoo.training.optim.param_groups``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor

from convzoo.errors import ConvzooError

# Quintic Newton-Schulz coefficients (a, b, c) of Jordan et al.: chosen to maximise the slope at 0,
# so few iterations suffice; the result has singular values in roughly [0.7, 1.2], not exactly 1.
NS_COEFFS = (3.4445, -4.7750, 2.0315)


def newton_schulz(g: Tensor, steps: int = 5, eps: float = 1e-7, dtype: Any = None) -> Tensor:
    """Approximate orthogonalisation ``U V^T`` of a 2-D ``g`` (m, n) by quintic Newton-Schulz.

    Each iteration maps ``X -> a X + (b A + c A^2) X`` with ``A = X X^T`` (computed on the short
    side, so the cost is O(min(m, n)^2 max(m, n))). ``dtype`` is the working precision: bf16
    (default, what the GPU is fast at) or float32 (CPU, tests). Returns ``g``'s dtype and shape.
    """
    if g.ndim != 2:
        raise ValueError(f"newton_schulz expects a matrix, got shape {tuple(g.shape)}")
    a, b, c = NS_COEFFS
    x = g.to(dtype or torch.bfloat16)
    x = x / (x.norm() + eps)  # Frobenius norm >= spectral norm: singular values now <= 1
    tall = x.shape[0] > x.shape[1]
    if tall:
        x = x.T
    for _ in range(steps):
        A = x @ x.T
        B = b * A + c * (A @ A)
        x = a * x + B @ x
    if tall:
        x = x.T
    return x.to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Muon for groups with ``use_muon=True``, SGD (momentum, optional Nesterov, coupled weight
    decay, as ``torch.optim.SGD`` with dampening 0) for the others.

    Group options: ``lr``, ``momentum``, ``nesterov``, ``weight_decay`` (SGD groups only),
    ``use_muon``, ``ns_steps`` (Newton-Schulz iterations), ``normalize`` (renormalise Muon weights
    to norm sqrt(out) before each step). ``ns_dtype`` is the Newton-Schulz working precision
    (None = bf16).
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 0.02,
        momentum: float = 0.9,
        nesterov: bool = True,
        weight_decay: float = 0.0,
        use_muon: bool = True,
        ns_steps: int = 5,
        normalize: bool = True,
        ns_dtype: Any = None,
    ) -> None:
        if lr < 0:
            raise ConvzooError(f"optim.lr must be >= 0, got {lr}")
        if not 0.0 <= momentum < 1.0:
            raise ConvzooError(f"muon momentum must be in [0, 1), got {momentum}")
        defaults = dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay,
                        use_muon=use_muon, ns_steps=ns_steps, normalize=normalize)
        super().__init__(params, defaults)
        self.ns_dtype = ns_dtype
        for g in self.param_groups:
            if g["use_muon"] and any(p.ndim < 2 for p in g["params"]):
                raise ConvzooError("muon groups may only hold weights with 2 or more dimensions")

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, mom, nesterov = float(group["lr"]), group["momentum"], group["nesterov"]
            for p in group["params"]:
                if p.grad is None:  # frozen this step (e.g. a bias switched off): no decay either
                    continue
                grad = p.grad
                if not group["use_muon"] and group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                buf = state.get("momentum_buffer")
                if buf is None:
                    buf = state["momentum_buffer"] = grad.detach().clone()
                else:
                    buf.mul_(mom).add_(grad)
                update = grad.add(buf, alpha=mom) if nesterov else buf
                if not group["use_muon"]:
                    p.add_(update, alpha=-lr)
                    continue
                out = p.shape[0]
                fan_in = p[0].numel()
                if group["normalize"]:
                    p.mul_(out**0.5 / p.norm().clamp_min(1e-12))
                ortho = newton_schulz(update.reshape(out, fan_in), group["ns_steps"],
                                      dtype=self.ns_dtype)
                p.add_(ortho.view_as(p), alpha=-lr * max(1.0, out / fan_in) ** 0.5)
        return loss
