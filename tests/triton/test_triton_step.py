"""ops.step (kernels/step.py): the whole step with one dx buffer.

- forward and every gradient (x, phi, bias, alpha, the layer's weight) vs float64 autograd
  through mhc_core.step on the same rounded inputs;
- gradcheck in float64 (interpreter; fast_mode: random directions, the full Jacobians of
  each kernel are gradchecked in their own test files), including a layer that ignores h;
- backward runs no torch elementwise op over a [T, n, C] tensor (torch.profiler), while the
  same check does flag the composition of the three separate ops (so it can see the adds).
"""
import numpy as np
import pytest
import torch

import mhc_core
from mhc_core_torch.kernels import ops

# (variant, T, n, C, iters)
CASES = [("mhc", 5, 4, 12, 4), ("mhc", 18, 3, 33, 3), ("hc", 7, 2, 9, 20), ("mhc", 3, 16, 4, 2)]


def _id(case):
    return "{}-T{}-n{}-C{}-it{}".format(*case)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_step_matches_oracle(case, dtype, device, assert_close, rounded, mixing_params, oracle_grads):
    variant, t, n, c, iters = case
    rng = np.random.default_rng(t + n + c)
    p = mixing_params(n, c, variant, seed=1)
    pdt = torch.float32 if dtype == torch.bfloat16 else dtype
    x = rounded(rng.normal(0.0, 1.0, (t, n, c)), dtype, True)
    w = rounded(rng.normal(0.0, 1.0 / np.sqrt(c), (c, c)), dtype, True)
    params = [rounded(p[k], pdt, True) for k in ("phi", "bias", "alpha")]
    cfg = {"variant": variant, "iters": iters}

    out = ops.step(x, lambda h: torch.tanh(h @ w), *params, **cfg)
    cot = rounded(rng.normal(0.0, 1.0, out.shape), dtype)
    ref = lambda x_, w_, *p_: mhc_core.step(x_, lambda h: torch.tanh(h @ w_), *p_, **cfg)  # noqa: E731
    (want,), grads_ref = oracle_grads(ref, [x, w] + params, [cot])
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    cid = f"{_id(case)}-{dtype}"
    assert_close(out, want, tol, cid + "-out")
    grads = torch.autograd.grad((out.float() * cot.float()).sum(), [x, w] + params)
    for name, g, gr, a in zip(("x", "w", "phi", "bias", "alpha"), grads, grads_ref, [x, w] + params):
        assert g.dtype == a.dtype, f"[{cid}] grad {name} dtype {g.dtype} != {a.dtype}"
        assert_close(g, gr, tol, f"{cid}-grad-{name}")


def test_step_gradcheck_float64(device):
    if device != "cpu":
        pytest.skip("float64 kernels run only in the interpreter (float64 is the reference path on GPU)")
    torch.manual_seed(0)
    g = lambda *s, scale=1.0: (scale * torch.randn(*s, dtype=torch.float64)).requires_grad_(True)  # noqa: E731
    n, c = 3, 4
    x, w = g(2, n, c), g(c, c, scale=0.5)
    phi, bias, alpha = g(n * c, n * n + 2 * n, scale=0.3), g(n * n + 2 * n), g(3)
    for variant in ("mhc", "hc"):
        fn = lambda x, w, phi, bias, alpha: ops.step(  # noqa: E731
            x, lambda h: torch.tanh(h @ w), phi, bias, alpha, variant=variant, iters=3)
        assert torch.autograd.gradcheck(fn, (x, w, phi, bias, alpha), eps=1e-6, atol=1e-7, fast_mode=True)
    # a layer that ignores h: no gradient reaches h (dh is None in the fused backward)
    const = lambda x, phi, bias, alpha: ops.step(x, lambda h: w.detach()[0].expand_as(h), phi, bias, alpha)  # noqa: E731
    assert torch.autograd.gradcheck(const, (x, phi, bias, alpha), eps=1e-6, atol=1e-7, fast_mode=True)


_ELEMENTWISE = {"aten::add", "aten::add_", "aten::sub", "aten::sub_", "aten::mul", "aten::mul_", "aten::div",
                "aten::div_", "aten::sum", "aten::copy_", "aten::clone", "aten::fill_", "aten::zero_", "aten::zeros",
                "aten::zeros_like"}


def _big_elementwise_ops_in_backward(run, inputs, shape):
    """(name, input shapes) of the torch elementwise ops that take a tensor of `shape` while
    the gradients of run() w.r.t. `inputs` are computed."""
    loss = run()
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], record_shapes=True) as prof:
        torch.autograd.grad(loss, inputs)
    hits = []
    for ev in prof.events():
        if ev.name in _ELEMENTWISE and any(list(s) == list(shape) for s in ev.input_shapes):
            hits.append((ev.name, ev.input_shapes))
    return hits


def test_step_backward_has_no_torch_elementwise_over_x(device, mixing_params):
    t, n, c = 6, 4, 8
    p = {k: torch.from_numpy(v).float().to(device).requires_grad_(True) for k, v in mixing_params(n, c).items()}
    w = torch.randn(c, c, device=device, requires_grad=True)
    x = torch.randn(t, n, c, device=device, requires_grad=True)
    f = lambda h: torch.tanh(h @ w)  # noqa: E731

    def fused():
        return (ops.step(x, f, p["phi"], p["bias"], p["alpha"], iters=3) * 1.5).sum()

    def composed():  # the three ops separately: autograd sums three dx tensors
        pre, post, res = ops.coefficients(x, p["phi"], p["bias"], p["alpha"], iters=3)
        return (ops.post_residual(x, f(ops.pre_aggregate(x, pre)), post, res) * 1.5).sum()

    inputs = [x, w, *p.values()]
    hits_composed = _big_elementwise_ops_in_backward(composed, inputs, (t, n, c))
    hits_fused = _big_elementwise_ops_in_backward(fused, inputs, (t, n, c))
    assert any(name.startswith("aten::add") for name, _ in hits_composed), \
        f"the check must see autograd's dx sum in the composed ops, saw {hits_composed}"
    # the only [T, n, C] elementwise op allowed is the loss's own `* 1.5` backward
    assert [name for name, _ in hits_fused] == ["aten::mul"], hits_fused
