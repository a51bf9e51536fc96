"""Under torch.compile on the CPU the shim writes tiny batched matmuls as a broadcast
product and sum and narrow matrix products as (b^T @ a^T)^T (mhc_core.xp._TorchOps): the
same numbers as torch.matmul, matmul_concat / matmul_concat_t the same as a matmul
with the concatenated operand (transposed), and matmul_concat_backward the same as
autograd's gradients of that matmul."""
from __future__ import annotations

import pytest
import torch

import mhc_core


def _traced(fn):
    # dynamo traces the Python (is_compiling() is True inside); the eager backend runs the graph
    return torch.compile(fn, backend="eager", fullgraph=True)


@pytest.mark.parametrize("shapes", [((5, 1, 4), (5, 4, 16)), ((5, 4, 5), (5, 5, 16)), ((2, 3, 4, 16), (2, 3, 16, 4)),
                                    ((5, 4, 16), (5, 16, 1))])
def test_tiny_matmul_under_compile_matches_matmul(shapes):
    torch.manual_seed(0)
    a, b = (torch.randn(s, dtype=torch.float64) for s in shapes)
    got = _traced(lambda a, b: mhc_core.namespace(a).matmul(a, b))(a, b)
    torch.testing.assert_close(got, torch.matmul(a, b), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", ["2d", "batched a", "transposed a", "wide b", "tiny rows"])
def test_matrix_products_under_compile_match_matmul(case):
    """Products with a matrix right operand (the projection's, its weight gradient's) are
    never written as a [.., p, q, C] broadcast product; <= NARROW result columns run as
    (b^T @ a^T)^T: the same numbers, in the shape a @ b has, with gradients."""
    torch.manual_seed(2)
    shapes = {"2d": ((64, 48), (48, 24)), "batched a": ((3, 5, 48), (48, 24)), "transposed a": ((48, 64), (48, 24)),
              "wide b": ((64, 48), (48, 40)), "tiny rows": ((2, 3, 48), (48, 8))}[case]
    a, b = (torch.randn(s, dtype=torch.float64, requires_grad=True) for s in shapes)
    if case == "transposed a":  # a [64, 48] as a transposed view, as the weight gradient's u^T
        a_in = a.detach().clone().requires_grad_(True)
        fn = _traced(lambda a, b: mhc_core.namespace(a).matmul(a.mT, b))
        want_fn = lambda a, b: a.mT @ b  # noqa: E731
    else:
        a_in = a
        fn = _traced(lambda a, b: mhc_core.namespace(a).matmul(a, b))
        want_fn = torch.matmul
    got, want = fn(a_in, b), want_fn(a, b)
    assert got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, (a_in, b), g), torch.autograd.grad(want, (a, b), g),
                               rtol=1e-12, atol=1e-12)


def test_matrix_product_under_inductor_matches_matmul():
    """The same through inductor (float32, the projection's shape): to float32 rounding."""
    torch.manual_seed(3)
    a, b = torch.randn(256, 512), torch.randn(512, 24)
    got = torch.compile(lambda a, b: mhc_core.namespace(a).matmul(a, b), fullgraph=True)(a, b)
    torch.testing.assert_close(got, (a.double() @ b.double()).float(), rtol=1e-5, atol=1e-4)


def test_matmul_concat_under_compile_matches_concatenated_matmul():
    torch.manual_seed(1)
    a, x, y = torch.randn(6, 4, 5, dtype=torch.float64), torch.randn(6, 4, 16, dtype=torch.float64), \
        torch.randn(6, 1, 16, dtype=torch.float64)
    got = _traced(lambda a, x, y: mhc_core.namespace(a).matmul_concat(a, [x, y]))(a, x, y)
    torch.testing.assert_close(got, a @ torch.cat([x, y], dim=-2), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("lead", [(6,), (2, 3)])
def test_matmul_concat_t_under_compile_matches_concatenated_matmul(lead):
    """Traced, the stacked operand is a sum of zero-padded parts: the same numbers as the
    product with the concatenation, gradients included (float64)."""
    torch.manual_seed(4)
    a, x, y = (torch.randn(lead + s, dtype=torch.float64, requires_grad=True) for s in ((4, 16), (4, 16), (1, 16)))
    got = _traced(lambda a, x, y: mhc_core.namespace(a).matmul_concat_t(a, [x, y]))(a, x, y)
    want = a @ torch.cat([x, y], dim=-2).mT
    assert got.shape == lead + (4, 5)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(want)
    torch.testing.assert_close(torch.autograd.grad(got, (a, x, y), g), torch.autograd.grad(want, (a, x, y), g),
                               rtol=1e-12, atol=1e-12)


def test_matmul_concat_t_under_inductor_matches_matmul():
    """Through inductor (float32, the backward's shape [T, n, C] against [x; y]): to
    float32 rounding of the float64 product; a non-finite part stays in its own columns."""
    torch.manual_seed(5)
    a, x, y = torch.randn(64, 4, 512), torch.randn(64, 4, 512), torch.randn(64, 1, 512)
    y[3, 0, 7] = float("inf")
    got = torch.compile(lambda a, x, y: mhc_core.namespace(a).matmul_concat_t(a, [x, y]), fullgraph=True)(a, x, y)
    want = (a.double() @ torch.cat([x, y], dim=-2).double().mT).float()
    assert torch.isinf(got[3, :, 4]).all() and torch.isfinite(got[..., :4]).all()
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-3)


@pytest.mark.parametrize("lead", [(6,), (2, 3)])
def test_matmul_concat_backward_under_inductor_matches_autograd_of_the_matmul(lead):
    """Through inductor (float32): autograd's gradients of mix @ cat([x, y]) in float64, to
    float32 rounding."""
    torch.manual_seed(6)
    mix, x, y = (torch.randn(lead + s, dtype=torch.float64, requires_grad=True) for s in ((4, 5), (4, 64), (1, 64)))
    dout = torch.randn(lead + (4, 64), dtype=torch.float64)
    want = torch.autograd.grad(mix @ torch.cat([x, y], dim=-2), (x, y, mix), dout)

    def grads(mix, x, y, dout):
        (dx, dy), d_mix = mhc_core.namespace(mix).matmul_concat_backward(mix, [x, y], dout)
        return dx, dy, d_mix
    got = torch.compile(grads, fullgraph=True)(*(t.detach().float() for t in (mix, x, y, dout)))
    for g, w in zip(got, want):
        assert g.dtype == torch.float32 and g.shape == w.shape
        torch.testing.assert_close(g.double(), w, rtol=1e-5, atol=1e-4)
