"""The eager CPU path (numpy views) when Sinkhorn reaches a floating-point fixed point and
stops early: the saved iterate count travels through autograd's saved tensors, and the
gradients equal the same Function run on torch tensors (no early stop) and gradcheck."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mhc_core_torch import autograd as ag


def _leaves(n=3, c=4, lead=(2, 5), res_scale=0.0):
    """x random; phi's res columns scaled by res_scale (0: equal res logits, which reach a
    fixed point at once), the pre / post columns random."""
    rng = np.random.default_rng(3)
    m = n * n + 2 * n
    phi = rng.normal(0.0, 0.5, (n * c, m))
    phi[:, 2 * n :] *= res_scale
    x = rng.normal(size=lead + (n, c))
    bias, alpha = rng.normal(0.0, 0.5, m), np.array([0.7, 0.9, 1.1])
    bias[2 * n :] *= res_scale
    return [torch.tensor(a, dtype=torch.float64, requires_grad=True) for a in (x, phi, bias, alpha)]


def _grads(monkeypatch, numpy_path: bool, leaves, iters=5):
    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20 if numpy_path else 0)
    outs = ag.coefficients(*leaves, variant="mhc", iters=iters)
    weights = torch.Generator().manual_seed(0)
    loss = sum((o * torch.randn(o.shape, generator=weights, dtype=o.dtype)).sum() for o in outs)
    return [o.detach() for o in outs], torch.autograd.grad(loss, leaves)


@pytest.mark.parametrize("res_scale", [0.0, 1.0])
def test_fixed_point_stop_gives_the_torch_path_gradients(monkeypatch, res_scale):
    leaves = _leaves(res_scale=res_scale)
    outs_np, grads_np = _grads(monkeypatch, True, leaves)
    outs_t, grads_t = _grads(monkeypatch, False, leaves)
    for a, b in zip(outs_np + list(grads_np), outs_t + list(grads_t)):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)


def test_fixed_point_stop_gradcheck(monkeypatch):
    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20)
    x, phi, bias, alpha = _leaves(res_scale=0.0)
    assert torch.autograd.gradcheck(lambda x_, p_: ag.coefficients(x_, p_, bias, alpha, variant="mhc", iters=5),
                                    (x, phi))
