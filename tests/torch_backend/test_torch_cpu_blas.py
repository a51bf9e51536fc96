"""mhc_core_torch.cpu_blas: the compiled-CPU narrow products on numpy's BLAS.

The op against torch.matmul in float64 (values and gradients, any strides), its fallbacks,
where its results live (torch memory: a parameter gradient must stay resizable for FSDP),
and that traced mhc_core code calls it exactly for the narrow products.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import mhc_core
from mhc_core_torch import MHC, cpu_blas
from mhc_core_torch.cpu_blas import blas_matmul


def _operands(case: str, dtype=torch.float64):
    g = torch.Generator().manual_seed(7)

    def rnd(*shape):
        return torch.randn(*shape, generator=g, dtype=dtype)
    return {
        "plain": (rnd(33, 70), rnd(70, 24)),
        "a transposed": (rnd(70, 33).mT, rnd(70, 24)),  # the weight gradient's u^T
        "b transposed": (rnd(33, 24), rnd(70, 24).mT),  # the input gradient's phi^T
        "a sliced": (rnd(33, 140)[:, ::2], rnd(70, 24)),
        "a broadcast row": (rnd(1, 70).expand(33, 70), rnd(70, 24)),
        "one row": (rnd(1, 70), rnd(70, 24)),
        "empty rows": (rnd(0, 70), rnd(70, 24)),
        "empty contraction": (rnd(33, 0), rnd(0, 24)),
    }[case]


CASES = ["plain", "a transposed", "b transposed", "a sliced", "a broadcast row", "one row", "empty rows",
         "empty contraction"]


@pytest.fixture
def numpy_calls(monkeypatch):
    """Counts the op's numpy matmul calls (0: it fell back to torch.matmul)."""
    calls, real = [], cpu_blas.np.matmul

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)
    monkeypatch.setattr(cpu_blas.np, "matmul", spy)
    return calls


@pytest.mark.parametrize("case", CASES)
def test_blas_matmul_matches_torch_matmul(case, numpy_calls):
    a, b = _operands(case)
    got = blas_matmul(a, b)
    assert got.shape == (a.shape[0], b.shape[1]) and got.dtype == a.dtype
    torch.testing.assert_close(got, a @ b, rtol=1e-13, atol=1e-13)
    assert len(numpy_calls) == 1


def test_blas_matmul_takes_parameters(numpy_calls):
    """phi is an nn.Parameter: the forward projection must run on numpy too."""
    a, b = _operands("plain")
    got = blas_matmul(a, nn.Parameter(b))
    torch.testing.assert_close(got, a @ b, rtol=1e-13, atol=1e-13)
    assert len(numpy_calls) == 1


@pytest.mark.parametrize("case", ["plain", "a transposed", "b transposed", "one row"])
def test_blas_matmul_gradients(case):
    a, b = (t.detach().clone().requires_grad_(True) for t in _operands(case))
    assert torch.autograd.gradcheck(blas_matmul, (a, b))
    g = torch.randn(a.shape[0], b.shape[1], dtype=a.dtype)
    got = torch.autograd.grad(blas_matmul(a, b), (a, b), g)
    want = torch.autograd.grad(a @ b, (a, b), g)
    torch.testing.assert_close(got, want, rtol=1e-13, atol=1e-13)


def test_blas_matmul_float32_to_rounding():
    a, b = _operands("plain", torch.float32)
    torch.testing.assert_close(blas_matmul(a, b), (a.double() @ b.double()).float(), rtol=1e-5, atol=1e-5)


def test_blas_matmul_passes_torch_opcheck():
    """Schema, fake (meta) kernel, autograd registration and dispatch are consistent."""
    a, b = _operands("plain")
    torch.library.opcheck(blas_matmul, (a, b))
    torch.library.opcheck(blas_matmul, (a.requires_grad_(True), b.requires_grad_(True)))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_blas_matmul_other_dtypes_run_torch(dtype, numpy_calls):
    a, b = (t.to(dtype) for t in _operands("plain"))
    torch.testing.assert_close(blas_matmul(a, b), a @ b, rtol=0, atol=0)
    assert not numpy_calls


def test_blas_matmul_result_is_torch_memory():
    """The result is a resizable torch storage, and the inputs' storages stay resizable
    (`.numpy()` would pin them: FSDP resizes parameter and gradient storage)."""
    a, b = _operands("plain")
    out = blas_matmul(a, b)
    for t in (out, a, b):
        assert t.untyped_storage().resizable()


def _traced_ops(fn, *args):
    graphs = []

    def backend(gm, example_inputs):
        graphs.append(gm)
        return gm
    torch._dynamo.reset()
    torch.compile(fn, backend=backend, fullgraph=True)(*args)
    return [str(n.target) for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]


@pytest.mark.parametrize("shapes", [((8, 64), (64, 24)), ((3, 8, 64), (64, 24)), ((8, 24), (24, 64))])
def test_traced_narrow_products_call_the_op(shapes, monkeypatch):
    a, b = torch.randn(shapes[0]), torch.randn(shapes[1])
    ops = _traced_ops(lambda a, b: mhc_core.namespace(a).matmul(a, b), a, b)
    assert any("blas_matmul" in o for o in ops), ops
    monkeypatch.setattr(cpu_blas, "ENABLED", False)
    ops = _traced_ops(lambda a, b: mhc_core.namespace(a).matmul(a, b), a, b)
    assert not any("blas_matmul" in o for o in ops), ops


def test_traced_wide_products_do_not_call_the_op():
    a, b = torch.randn(8, 64), torch.randn(64, 40)  # no side <= NARROW (32)
    ops = _traced_ops(lambda a, b: mhc_core.namespace(a).matmul(a, b), a, b)
    assert not any("blas_matmul" in o for o in ops), ops


def test_compiled_step_gradients_match_eager_and_stay_resizable(numpy_calls):
    """An MHC step through inductor (its projection on the op) against the eager path, in
    float64 forward and gradients; every parameter and gradient storage stays resizable."""
    torch.manual_seed(0)
    n, c = 4, 16
    layer = nn.Linear(c, c, dtype=torch.float64)
    m = MHC(layer, n, c, seed=1).double()
    x = torch.randn(2, 5, n, c, dtype=torch.float64, requires_grad=True)
    g = torch.randn(2, 5, n, c, dtype=torch.float64)
    torch._dynamo.reset()
    out = torch.compile(m, fullgraph=True)(x)
    got = torch.autograd.grad(out, [x, *m.parameters()], g)
    want_out = m(x)
    want = torch.autograd.grad(want_out, [x, *m.parameters()], g)
    torch.testing.assert_close(out, want_out, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)
    numpy_calls.clear()
    out = torch.compile(m, fullgraph=True)(x)
    out.backward(g)
    assert len(numpy_calls) == 3  # z = u @ phi, dphi = u^T @ w, du = w @ phi^T
    for p in m.parameters():
        assert p.untyped_storage().resizable() and p.grad.untyped_storage().resizable()


@pytest.mark.parametrize("transform", ["jvp", "vmap"])
def test_transforms_inside_compile_keep_torch_matmul(transform, numpy_calls):
    """The op has no forward-mode rule: under torch.func.jvp inside torch.compile it gave a
    silently wrong tangent (off by ~4 on a scale of ~6). Under a transform the products stay
    torch.matmul; the compiled result matches the eager transform (float32)."""
    from mhc_core_torch import StreamHead

    torch.manual_seed(0)
    head = StreamHead(4, 8)
    with torch.no_grad():
        head.phi.normal_()  # phi far from its init, so the projection matters
    x, t = torch.randn(3, 4, 8), torch.randn(3, 4, 8)
    if transform == "jvp":
        def f(x, t):
            return torch.func.jvp(head, (x,), (t,))[1]
    else:
        def f(x, t):
            return torch.func.vmap(head)(x + t)
    want = f(x, t)
    torch._dynamo.reset()
    numpy_calls.clear()
    got = torch.compile(f, fullgraph=True)(x, t)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    assert not numpy_calls
