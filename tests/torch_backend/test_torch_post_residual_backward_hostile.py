"""PostResidual's backward (mhc_core.post_residual_backward: [dx; dy] from [res; post],
[dres^T | dpost] from one product dout @ [x; y]^T) under hostile use, on the eager numpy
path, the eager torch path and compiled: stream counts 1 to 6, C = 1, empty and single
token batches, bf16 / fp16 x, strided views of x, non-finite entries, leaf inputs.
Gradients are compared with float64 torch autograd through the spec's plain ops
(mhc_core.post_residual on torch tensors) or with a naive einsum in numpy float64."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mhc_core
from mhc_core_torch import autograd as ag

PATHS = ["eager numpy", "eager torch", "compiled"]


def _entry(path, monkeypatch, backend="aot_eager"):
    """ag.post_residual as the path runs it (compiled: dynamic=True, fullgraph=True)."""
    if path == "eager torch":
        monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 0)
    if path != "compiled":
        return ag.post_residual
    torch._dynamo.reset()
    return torch.compile(ag.post_residual, backend=backend, dynamic=True, fullgraph=True)


def _inputs(lead, n, c, dtype, seed, view=None):
    """(x, y, post, res) leaves and a cotangent g; x a transposed or sliced view if asked."""
    gen = torch.Generator().manual_seed(seed)
    if view == "transposed":  # [*lead, n, C] with C the slowest axis
        x = torch.randn((c, n) + lead, generator=gen, dtype=torch.float64).permute(*range(2, 2 + len(lead)), 1, 0)
    elif view == "sliced":  # every other token, C cut out of a wider row
        x = torch.randn((2 * lead[0],) + lead[1:] + (n, c + 2), generator=gen, dtype=torch.float64)[::2, ..., 1:c + 1]
    else:
        x = torch.randn(lead + (n, c), generator=gen, dtype=torch.float64)
    y = torch.randn(lead + (c,), generator=gen, dtype=torch.float64)
    post, res = torch.rand(lead + (n,), generator=gen, dtype=torch.float64), torch.rand(lead + (n, n), generator=gen,
                                                                                      dtype=torch.float64)
    g = torch.randn(lead + (n, c), generator=gen, dtype=torch.float64)
    ins = [x.to(dtype)] + [t.to(dtype if dtype == torch.float64 else torch.float32) for t in (y, post, res)]
    return [t.requires_grad_() for t in ins], g  # leaves (x's view too: its base needs no grad)


def _spec_grads(ins, g):
    """float64 autograd through mhc_core.post_residual's plain torch ops."""
    leaves = [t.detach().double().requires_grad_() for t in ins]
    out = mhc_core.post_residual(*leaves)
    return out, torch.autograd.grad(out, leaves, g)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("n,c", [(1, 1), (2, 5), (3, 1), (4, 7), (6, 3)])
def test_backward_matches_spec_for_every_stream_count_and_batch(path, n, c, monkeypatch):
    """One compiled graph per n (dynamic token count): no, one and several tokens, with
    no, one and two batch axes, float64."""
    fn = _entry(path, monkeypatch)
    for lead in [(), (0,), (1,), (5,), (2, 3), (1, 0)]:
        ins, g = _inputs(lead, n, c, torch.float64, seed=n * 10 + c)
        out = fn(*ins)
        got = torch.autograd.grad(out, ins, g)
        want_out, want = _spec_grads(ins, g)
        torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
        for a, b, name in zip(got, want, ("dx", "dy", "dpost", "dres")):
            assert a.shape == b.shape, (lead, name)
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=f"{path} lead={lead} {name}")


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("dtype,view", [(torch.bfloat16, None), (torch.float16, None), (torch.float64, "transposed"),
                                        (torch.float64, "sliced")])
def test_backward_of_low_precision_and_strided_x_matches_spec(path, dtype, view, monkeypatch):
    """bf16 / fp16 x (y, post, res float32; float32 compute): the input dtypes' gradients
    within their rounding of the float64 spec; float64 views of x to 1e-12."""
    fn = _entry(path, monkeypatch)
    ins, g = _inputs((2, 5), 3, 5, dtype, seed=3, view=view)
    got = torch.autograd.grad(fn(*ins), ins, g.to(dtype))
    _, want = _spec_grads(ins, g.to(dtype).double())
    tol = {torch.bfloat16: 2e-2, torch.float16: 2e-3, torch.float64: 1e-12}[dtype]
    for a, b, t, name in zip(got, want, ins, ("dx", "dy", "dpost", "dres")):
        assert a.dtype == t.dtype, name
        torch.testing.assert_close(a.double(), b, rtol=tol, atol=tol, msg=f"{path} {dtype} {view} {name}")


def _naive_grads(x, y, post, res, g):
    """dx, dy, dpost, dres by einsum in numpy float64 (IEEE: inf * 0 is nan)."""
    return (np.einsum("...io,...oc->...ic", res, g), np.einsum("...o,...oc->...c", post, g),
            np.einsum("...c,...oc->...o", y, g), np.einsum("...ic,...oc->...io", x, g))


@pytest.mark.parametrize("path", PATHS + ["inductor"])
@pytest.mark.parametrize("n", [1, 4])
def test_non_finite_entries_stay_in_their_own_rows_and_columns(path, n, monkeypatch):
    """inf / nan in x, y and dout, 3e38 and -0.0 in x: each gradient has nan / inf exactly
    where the naive float64 einsum has them (a non-finite x[t, i] reaches dres[t, i, :]
    only, y[t] dpost[t] only), and its finite entries equal the einsum's."""
    fn = _entry("compiled" if path == "inductor" else path, monkeypatch,
                backend="inductor" if path == "inductor" else "aot_eager")
    rng = np.random.default_rng(n)
    t_, c = 6, 5
    x, y = rng.normal(size=(t_, n, c)), rng.normal(size=(t_, c))
    post, res, g = rng.uniform(size=(t_, n)), rng.uniform(size=(t_, n, n)), rng.uniform(-0.5, 0.5, (t_, n, c))
    x[2, n - 1, 3], x[3, 0, 1], x[1, 0, 0], x[0] = np.inf, np.nan, 3e38, -0.0
    y[4, 0], g[5, 0, 2] = -np.inf, np.nan
    ins = [torch.tensor(a, requires_grad=True) for a in (x, y, post, res)]
    got = torch.autograd.grad(fn(*ins), ins, torch.tensor(g))
    with np.errstate(invalid="ignore"):
        want = _naive_grads(x, y, post, res, g)
    for a, b, name in zip(got, want, ("dx", "dy", "dpost", "dres")):
        a = a.numpy()
        np.testing.assert_array_equal(np.isnan(a), np.isnan(b), err_msg=f"{path} {name}: nan positions")
        np.testing.assert_array_equal(np.isposinf(a), np.isposinf(b), err_msg=f"{path} {name}: +inf positions")
        np.testing.assert_array_equal(np.isneginf(a), np.isneginf(b), err_msg=f"{path} {name}: -inf positions")
        finite = np.isfinite(b)
        np.testing.assert_allclose(a[finite], b[finite], rtol=1e-12, atol=1e-12, err_msg=f"{path} {name}")


@pytest.mark.parametrize("path", PATHS)
def test_leaf_post_and_res_get_gradients_of_their_own(path, monkeypatch):
    """n = 1, no leading axes, the inputs parameters: dpost and dres are views of one
    product, and a leaf keeps a contiguous gradient as its .grad, so post.grad and
    res.grad shared one storage on the torch paths; freeing res.grad's storage (as FSDP
    does) must leave post.grad alone."""
    fn = _entry(path, monkeypatch)
    ins, g = _inputs((), 1, 4, torch.float64, seed=5)
    ins = [torch.nn.Parameter(t.detach()) for t in ins]  # the numpy path gives parameters torch-owned .grad
    x, y, post, res = ins
    (fn(*ins) * g).sum().backward()
    storages = [t.grad.untyped_storage().data_ptr() for t in ins]
    assert len(set(storages)) == 4, storages
    _, want = _spec_grads(ins, g)
    res.grad.untyped_storage().resize_(0)
    torch.testing.assert_close(post.grad, want[2], rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(x.grad, want[0], rtol=1e-12, atol=1e-12)
