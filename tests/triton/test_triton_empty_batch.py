"""An empty batch (x [0, n, C] or [2, 0, n, C]) on the Triton path: forward and backward
run, and every output and gradient equals MHC(impl='reference') / mhc_core (empty outputs,
zero parameter gradients) -- no launch with an empty grid, no division by a zero size."""
from collections import OrderedDict

import pytest
import torch
from torch import nn

import mhc_core
from mhc_core_torch import MHC
from mhc_core_torch.kernels import ops

N, C = 3, 8


def _grads(m, x):
    x = x.detach().clone().requires_grad_(True)
    names, params = zip(*m.named_parameters())
    out = m(x)
    gs = torch.autograd.grad(out.float().sum(), (x,) + params, allow_unused=True)
    return out, dict(zip(("x",) + names, gs))


@pytest.mark.parametrize("lead", [(0,), (2, 0)], ids=lambda s: "x".join(map(str, s)))
@pytest.mark.parametrize("variant", ["mhc", "hc"])
def test_module_empty_batch_matches_reference(lead, variant, device, assert_close, mixing_params):
    torch.manual_seed(0)
    layer = nn.Sequential(OrderedDict(fc1=nn.Linear(C, 2 * C), act=nn.SiLU(), fc2=nn.Linear(2 * C, C)))
    init = {k: torch.from_numpy(v).float() for k, v in mixing_params(N, C, variant, 0).items()}
    tri = MHC(layer, N, C, variant=variant, init=init, impl="triton", iters=4).to(device)
    ref = MHC(layer, N, C, variant=variant, init=init, impl="reference", iters=4).to(device)
    x = torch.zeros(lead + (N, C), device=device)
    out_t, g_t = _grads(tri, x)
    out_r, g_r = _grads(ref, x)
    assert out_t.shape == out_r.shape == lead + (N, C)
    assert set(g_t) == set(g_r)
    for name, want in g_r.items():
        got = g_t[name]
        want = torch.zeros_like(g_t[name]) if want is None else want  # unused: zero gradient
        assert got is not None and got.shape == want.shape, f"grad {name}: {got} vs {want.shape}"
        assert_close(got, want, 0.0, f"empty-{variant}-grad-{name}")


@pytest.mark.parametrize("lead", [(0,), (2, 0)], ids=lambda s: "x".join(map(str, s)))
def test_ops_empty_batch_forward_and_backward(lead, device, mixing_params, assert_close):
    p = {k: torch.from_numpy(v).float().to(device).requires_grad_(True)
         for k, v in mixing_params(N, C, "mhc", 0).items()}
    x = torch.zeros(lead + (N, C), device=device, requires_grad=True)
    y = torch.zeros(lead + (C,), device=device, requires_grad=True)
    pre, post, res = ops.coefficients(x, p["phi"], p["bias"], p["alpha"], iters=3)
    assert pre.shape == post.shape == lead + (N,) and res.shape == lead + (N, N)
    h = ops.pre_aggregate(x, pre)
    out = ops.post_residual(x, y + h, post, res)
    m = ops.sinkhorn(torch.zeros(lead + (N, N), device=device, requires_grad=True), iters=3)
    assert h.shape == lead + (C,) and out.shape == lead + (N, C) and m.shape == lead + (N, N)
    xn = {k: v.detach().double().cpu().numpy() for k, v in p.items()}
    want = mhc_core.coefficients(x.detach().double().cpu().numpy(), xn["phi"], xn["bias"], xn["alpha"], iters=3)
    for got, w in zip((pre, post, res), want):
        assert_close(got, w, 0.0, "empty-coefficients")
    grads = torch.autograd.grad(out.sum() + m.sum(), [x, y, p["phi"], p["bias"], p["alpha"]])
    for g, a in zip(grads, [x, y, p["phi"], p["bias"], p["alpha"]]):
        assert g.shape == a.shape
        assert_close(g, torch.zeros_like(a), 0.0, "empty-grad")
