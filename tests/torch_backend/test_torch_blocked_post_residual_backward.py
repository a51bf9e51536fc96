"""PostResidual's eager CPU backward on numpy's blocked products (`_NumpyOps.
matmul_concat_backward` a few tokens at a time, forced here with a small block size;
the default block is ~1 MB of dout, more than any other test's inputs): stream counts 1
to 6, no / one / many tokens, bf16 / fp16 x, gradients asked for a subset of the inputs,
parameters, gradcheck, and non-finite entries, against torch autograd of a plain einsum
in float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from mhc_core.xp import _NumpyOps
from mhc_core_torch import autograd as ag


@pytest.fixture(params=[1, 3], ids=["1-token blocks", "3-token blocks"])
def blocked(request, monkeypatch):
    """A function (n, C, compute itemsize) that sets numpy's block to `param` tokens of
    that dout [n, C] (3: an uneven last block for 5, 7 and 30 tokens)."""
    def use(n: int, c: int, itemsize: int = 8):
        monkeypatch.setattr(_NumpyOps, "MATMUL_BLOCK_BYTES", request.param * n * c * itemsize)
    return use


def _einsum_step(x, y, post, res):
    """out[o] = sum_i res[i, o] x[i] + post[o] y: plain torch ops."""
    return torch.einsum("...io,...ic->...oc", res, x) + post[..., :, None] * y[..., None, :]


def _inputs(lead, n, c, x_dtype, seed):
    gen = torch.Generator().manual_seed(seed)
    shapes = (lead + (n, c), lead + (c,), lead + (n,), lead + (n, n))
    ins = [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]
    low = torch.float64 if x_dtype == torch.float64 else torch.float32
    return [ins[0].to(x_dtype)] + [t.to(low) for t in ins[1:]], torch.randn(lead + (n, c), generator=gen,
                                                                             dtype=torch.float64)


def _want(ins, g):
    leaves = [t.detach().double().requires_grad_() for t in ins]
    out = _einsum_step(*leaves)
    return out, torch.autograd.grad(out, leaves, g)


@pytest.mark.parametrize("n", [1, 2, 3, 4, 6])
@pytest.mark.parametrize("lead", [(0,), (1,), (7,), (2, 3, 5)])
def test_blocked_backward_matches_autograd_of_einsum(blocked, n, lead):
    blocked(n, 8)
    ins, g = _inputs(lead, n, 8, torch.float64, seed=n)
    ins = [t.requires_grad_() for t in ins]
    out = ag.post_residual(*ins)
    got = torch.autograd.grad(out, ins, g)
    want_out, want = _want(ins, g)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    for a, b, name in zip(got, want, ("dx", "dy", "dpost", "dres")):
        assert a.shape == b.shape and a.dtype == torch.float64, name
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"{lead} n={n} {name}")


@pytest.mark.parametrize("x_dtype,tol", [(torch.bfloat16, 2e-2), (torch.float16, 2e-3), (torch.float32, 1e-5)])
def test_blocked_backward_of_low_precision_x_matches_float64(blocked, x_dtype, tol):
    """y, post, res float32; the gradients in the inputs' dtypes, within x's rounding."""
    blocked(4, 8, 4)  # float32 compute
    ins, g = _inputs((3, 5), 4, 8, x_dtype, seed=1)
    ins = [t.requires_grad_() for t in ins]
    g = g.to(x_dtype)
    got = torch.autograd.grad(ag.post_residual(*ins), ins, g)
    _, want = _want(ins, g.double())
    for a, b, t in zip(got, want, ins):
        assert a.dtype == t.dtype
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol * 8)


@pytest.mark.parametrize("wanted", [(0,), (1,), (2,), (3,), (0, 3), (1, 2)])
@pytest.mark.parametrize("parameters", [False, True])
def test_blocked_backward_for_a_subset_of_the_inputs(blocked, wanted, parameters):
    """Gradients asked for some inputs only, plain leaves or nn.Parameters (.grad via
    backward(); parameters' in torch-owned, resizable storage)."""
    blocked(3, 8)
    ins, g = _inputs((7,), 3, 8, torch.float64, seed=2)
    make = (lambda t: torch.nn.Parameter(t)) if parameters else (lambda t: t.requires_grad_())
    ins = [make(t) if i in wanted else t for i, t in enumerate(ins)]
    (ag.post_residual(*ins) * g).sum().backward()
    _, want = _want(ins, g)
    for i, t in enumerate(ins):
        if i not in wanted:
            assert t.grad is None
            continue
        torch.testing.assert_close(t.grad, want[i], rtol=1e-12, atol=1e-12)
        if parameters:
            assert t.grad.untyped_storage().resizable()


def test_blocked_backward_passes_gradcheck(blocked):
    blocked(3, 4)
    ins, _ = _inputs((5,), 3, 4, torch.float64, seed=3)
    ins = [t.requires_grad_() for t in ins]
    assert torch.autograd.gradcheck(ag.post_residual, ins)
    assert torch.autograd.gradgradcheck(ag.post_residual, ins)  # create_graph: the torch path


def test_blocked_backward_keeps_non_finite_entries_where_einsum_has_them(blocked):
    """inf / nan in x, y and dout: nan / inf where the float64 einsum has them; the finite
    entries equal its."""
    blocked(4, 5)
    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(7, 4, 5)), rng.normal(size=(7, 5))
    post, res, g = rng.uniform(size=(7, 4)), rng.uniform(size=(7, 4, 4)), rng.normal(size=(7, 4, 5))
    x[2, 3, 1], y[4, 0], g[6, 1, 2], x[0] = np.inf, np.nan, -np.inf, -0.0
    ins = [torch.tensor(a, requires_grad=True) for a in (x, y, post, res)]
    got = torch.autograd.grad(ag.post_residual(*ins), ins, torch.tensor(g))
    _, want = _want(ins, torch.tensor(g))
    for a, b, name in zip(got, want, ("dx", "dy", "dpost", "dres")):
        a, b = a.numpy(), b.numpy()
        for same in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(same(a), same(b), err_msg=f"{name}: {same.__name__}")
        np.testing.assert_allclose(a[np.isfinite(b)], b[np.isfinite(b)], rtol=1e-12, atol=1e-12, err_msg=name)
