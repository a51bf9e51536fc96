"""The coefficients as one autograd node (mhc_core_torch.autograd.Coefficients): gradcheck in
float64 on both places it runs (numpy views, torch tensors), agreement with autograd
through the spec's plain ops, one recorded node, and the checks of its entry point."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mhc_core
from mhc_core_torch import autograd as ag

CONFIGS = [  # (variant, n, iters, sinkhorn_eps)
    ("mhc", 3, 4, 1e-6),
    ("mhc", 2, 3, 0.0),  # log-domain Sinkhorn
    ("mhc", 2, 1, 1e-6),  # one round: no row normalisation after the softmax
    ("hc", 3, 4, 1e-6),
]


@pytest.fixture(params=["numpy", "torch"])
def where(request, monkeypatch):
    """Run the Function's math on numpy views (the eager CPU default for small x) or on
    torch tensors (large x, torch.compile, other devices)."""
    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20 if request.param == "numpy" else 0)
    return request.param


def _leaves(variant, n, c, seed=0, lead=(2, 3)):
    rng = np.random.default_rng(seed)
    p = mhc_core.init_params(n, c, variant=variant, phi_std=0.5, seed=seed, dtype=np.float64)
    vals = (rng.normal(size=lead + (n, c)), p["phi"], p["bias"] + rng.normal(0.0, 0.5, p["bias"].shape),
            rng.uniform(0.5, 1.5, 3))
    return tuple(torch.tensor(v, dtype=torch.float64, requires_grad=True) for v in vals)


@pytest.mark.parametrize("variant,n,iters,eps", CONFIGS)
def test_coefficients_function_passes_gradcheck(variant, n, iters, eps, where):
    cfg = {"iters": iters, "sinkhorn_eps": eps}
    assert torch.autograd.gradcheck(lambda *a: ag.coefficients(*a, variant=variant, **cfg),
                                    _leaves(variant, n, 2), eps=1e-6, atol=1e-8)


@pytest.mark.parametrize("variant,n,iters,eps", CONFIGS)
def test_coefficients_function_matches_autograd_through_the_spec(variant, n, iters, eps, where, assert_close):
    """Same outputs and gradients as autograd through mhc_core.coefficients' plain ops."""
    cfg = {"iters": iters, "sinkhorn_eps": eps}
    leaves = _leaves(variant, n, 5, seed=1)
    w = [torch.randn(s, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
         for s in ((2, 3, n), (2, 3, n), (2, 3, n, n))]
    runs = []
    for fn in (ag.coefficients, mhc_core.coefficients):
        out = fn(*leaves, variant=variant, **cfg)
        loss = sum((o * wi).sum() for o, wi in zip(out, w))
        runs.append((out, torch.autograd.grad(loss, leaves)))
    (out_f, g_f), (out_s, g_s) = runs
    for got, want, name in zip(out_f + g_f, out_s + g_s, ("pre", "post", "res", "dx", "dphi", "dbias", "dalpha")):
        assert_close(got, want, 1e-12, case=f"{variant} {where} {name}")


def test_coefficients_are_one_autograd_node(where):
    x, phi, bias, alpha = _leaves("mhc", 4, 8)
    pre, post, res = ag.coefficients(x, phi, bias, alpha)
    assert pre.grad_fn is post.grad_fn is res.grad_fn
    assert type(pre.grad_fn).__name__ == "CoefficientsBackward"
    assert {type(f).__name__ for f, _ in pre.grad_fn.next_functions if f is not None} == {"AccumulateGrad"}


def test_float32_and_bfloat16_inputs_give_compute_dtype_outputs_and_input_dtype_grads(where):
    x, phi, bias, alpha = (t.detach() for t in _leaves("mhc", 4, 8))
    for dt in (torch.float32, torch.bfloat16):
        xd = x.to(dt).requires_grad_(True)
        p = [t.float().requires_grad_(True) for t in (phi, bias, alpha)]
        out = ag.coefficients(xd, *p)
        assert all(o.dtype == torch.float32 for o in out)
        sum(o.sum() for o in out).backward()
        assert xd.grad.dtype == dt and all(t.grad.dtype == torch.float32 for t in p)


def test_coefficients_entry_point_rejects_bad_input():
    x, phi, bias, alpha = _leaves("mhc", 4, 8)
    with pytest.raises(ValueError, match="residual"):
        ag.coefficients(x, phi, bias, alpha, variant="residual")
    with pytest.raises(ValueError, match="iters"):
        ag.coefficients(x, phi, bias, alpha, iters=0)
    with pytest.raises(ValueError, match="phi"):
        ag.coefficients(x, phi[:-1], bias, alpha)
    with pytest.raises(TypeError, match="floating"):
        ag.coefficients(x.detach().long(), phi, bias, alpha)


def _mixing_inputs(n=3, c=4, lead=(2, 3), seed=5):
    rng = np.random.default_rng(seed)
    shapes = (lead + (n, c), lead + (c,), lead + (n,), lead + (n, n), lead + (n,))  # x, y, post, res, pre
    return tuple(torch.tensor(rng.normal(size=s), dtype=torch.float64, requires_grad=True) for s in shapes)


def test_pre_aggregate_and_post_residual_functions_pass_gradcheck(where):
    x, y, post, res, pre = _mixing_inputs()
    assert torch.autograd.gradcheck(ag.pre_aggregate, (x, pre))
    assert torch.autograd.gradcheck(ag.post_residual, (x, y, post, res))


def test_step_matches_autograd_through_the_spec(where, assert_close):
    """The three-node step: same output and gradients as autograd through mhc_core.step."""
    n, c = 3, 4
    x, phi, bias, alpha = _leaves("mhc", n, c, seed=7)
    w = torch.randn(c, c, dtype=torch.float64, requires_grad=True)
    cot = torch.randn(2, 3, n, c, dtype=torch.float64)
    leaves = (x, phi, bias, alpha, w)
    runs = []
    for step in (ag.step, mhc_core.step):
        out = step(x, lambda h: torch.tanh(h @ w), phi, bias, alpha, iters=5)
        runs.append([out] + list(torch.autograd.grad((out * cot).sum(), leaves)))
    for got, want, name in zip(*runs, ("out", "dx", "dphi", "dbias", "dalpha", "dw")):
        assert_close(got, want, 1e-12, case=f"step {where} {name}")


def test_mixing_entry_points_reject_bad_input():
    x, y, post, res, pre = _mixing_inputs()
    with pytest.raises(ValueError, match="pre"):
        ag.pre_aggregate(x, pre[..., :-1])
    with pytest.raises(ValueError, match="res"):
        ag.post_residual(x, y, post, res[..., :-1])
    with pytest.raises(ValueError, match="y"):
        ag.post_residual(x, y[..., :-1], post, res)


@pytest.mark.parametrize("variant,n,iters,eps", CONFIGS[:2] + CONFIGS[3:])
def test_coefficients_function_passes_gradgradcheck(variant, n, iters, eps, where):
    """A gradient of the gradient (create_graph=True) works through the node, on both places
    it runs, and matches finite differences of its gradient in float64."""
    cfg = {"iters": iters, "sinkhorn_eps": eps}
    assert torch.autograd.gradgradcheck(lambda *a: ag.coefficients(*a, variant=variant, **cfg),
                                        _leaves(variant, n, 2, lead=(2,)), eps=1e-6, atol=1e-6)


def test_pre_aggregate_and_post_residual_functions_pass_gradgradcheck(where):
    x, y, post, res, pre = _mixing_inputs(lead=(2,))
    assert torch.autograd.gradgradcheck(ag.pre_aggregate, (x, pre))
    assert torch.autograd.gradgradcheck(ag.post_residual, (x, y, post, res))


def test_step_second_derivative_matches_autograd_through_the_spec(where, assert_close):
    """d/dtheta of |d out / dx|^2 through the three nodes equals the same through mhc_core.step."""
    n, c = 3, 4
    leaves = _leaves("mhc", n, c, seed=9, lead=(2,))
    f = torch.tanh
    results = []
    for run in (lambda *a: ag.step(a[0], f, *a[1:]), lambda *a: mhc_core.step(a[0], f, *a[1:])):
        (gx,) = torch.autograd.grad(run(*leaves).square().sum(), leaves[0], create_graph=True)
        results.append(torch.autograd.grad(gx.square().sum(), leaves))
    for got, want, name in zip(*results, ("x", "phi", "bias", "alpha")):
        assert_close(got, want, 1e-10, f"second derivative w.r.t. {name}")
