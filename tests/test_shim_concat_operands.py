"""The shim's products with a concatenated operand (`Ops.matmul_concat`: a @ concat(parts);
`Ops.matmul_concat_t`: a @ concat(parts)^T; `Ops.matmul_concat_backward`: the first one's
gradients) refuse operands that do not fit with a
ValueError naming the shapes, on every path: numpy (one product and token blocks), torch
eager, torch's compiled branch (written without a concatenation, where a width C = 1
broadcast and a short row count sliced silently before) and mlx. Well-formed calls
under torch.compile(dynamic=True) keep one graph for every token count."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mhc_core
from mhc_core.xp import _NumpyOps

BAD_CALLS = {  # (function, a shape, part shapes, words the message must hold[, dout shape])
    "t: no parts": ("matmul_concat_t", (3, 4, 16), [], ["at least one part", "empty"]),
    "t: rank-1 part": ("matmul_concat_t", (3, 4, 16), [(16,)], ["part 0", "rank >= 2", "(16,)"]),
    "t: rank-1 a": ("matmul_concat_t", (16,), [(3, 4, 16)], ["a must have rank >= 2", "(16,)"]),
    "t: part of width 1": ("matmul_concat_t", (3, 4, 16), [(3, 4, 16), (3, 1, 1)], ["C = 16", "(3, 1, 1)"]),
    "t: a of width 1": ("matmul_concat_t", (3, 4, 1), [(3, 4, 16), (3, 1, 16)], ["C = 1", "(3, 4, 16)"]),
    "concat: no parts": ("matmul_concat", (3, 4, 5), [], ["at least one part", "empty"]),
    "concat: rows short of a": ("matmul_concat", (3, 4, 5), [(3, 3, 16), (3, 1, 16)], ["sum q_i", "(3, 4, 5)"]),
    "concat: rows beyond a": ("matmul_concat", (3, 4, 3), [(3, 3, 16), (3, 1, 16)], ["sum q_i", "(3, 4, 3)"]),
    "concat: widths differ": ("matmul_concat", (3, 4, 4), [(3, 3, 16), (3, 1, 1)], ["same width", "(3, 1, 1)"]),
    "backward: dout rows unlike a's": ("matmul_concat_backward", (3, 4, 5), [(3, 4, 16), (3, 1, 16)],
        ["dout", "[..., 4, 16]", "(3, 3, 16)"], (3, 3, 16)),
    "backward: dout width unlike the parts'": ("matmul_concat_backward", (3, 4, 5), [(3, 4, 16), (3, 1, 16)],
        ["[..., 4, 16]", "(3, 4, 8)"], (3, 4, 8)),
    "backward: dout without leading axes": ("matmul_concat_backward", (3, 4, 5), [(3, 4, 16), (3, 1, 16)],
        ["dout", "(4, 16)"], (4, 16)),
    "backward: parts' rows short of a": ("matmul_concat_backward", (3, 4, 6), [(3, 4, 16), (3, 1, 16)],
        ["sum q_i", "(3, 4, 6)"], (3, 4, 16)),
    "backward: no parts": ("matmul_concat_backward", (3, 4, 5), [],
        ["at least one part"], (3, 4, 16)),
    "backward: a broadcast over the tokens": ("matmul_concat_backward", (1, 4, 5), [(3, 4, 16), (3, 1, 16)],
        ["leading axes (1,)", "(1, 4, 5)"], (3, 4, 16)),
    "backward: a part broadcast": ("matmul_concat_backward", (3, 4, 5), [(3, 4, 16), (1, 1, 16)],
        ["leading axes (3,)", "(1, 1, 16)"], (3, 4, 16)),
    "backward: a without leading axes": ("matmul_concat_backward", (4, 5), [(3, 4, 16), (3, 1, 16)],
        ["leading axes ()", "(3, 4, 16)"], (3, 4, 16)),
    "backward: dout broadcast": ("matmul_concat_backward", (3, 4, 5), [(3, 4, 16), (3, 1, 16)],
        ["dout", "leading axes (3,)", "(1, 4, 16)"], (1, 4, 16)),
    "backward: same token count, other axes": ("matmul_concat_backward", (6, 4, 5), [(2, 3, 4, 16), (2, 3, 1, 16)],
        ["leading axes (6,)", "(2, 3, 4, 16)"], (6, 4, 16)),
}


def _numpy_blocked(monkeypatch):
    ops = _NumpyOps(np)
    monkeypatch.setattr(ops, "MATMUL_BLOCK_BYTES", 1)  # one token per block
    return ops, np.asarray


def _torch_compiled_branch(monkeypatch):
    # the branch taken while torch.compile traces, run eagerly: it writes no concatenation
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    return mhc_core.namespace(torch.zeros(1)), torch.from_numpy


def _mlx(monkeypatch):
    mx = pytest.importorskip("mlx.core")
    return mhc_core.namespace(mx.zeros(1)), mx.array


PATHS = {
    "numpy": lambda mp: (mhc_core.namespace(np.zeros(1)), np.asarray),
    "numpy blocked": _numpy_blocked,
    "torch eager": lambda mp: (mhc_core.namespace(torch.zeros(1)), torch.from_numpy),
    "torch compiled branch": _torch_compiled_branch,
    "mlx": _mlx,
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("case", list(BAD_CALLS))
def test_products_with_a_concatenation_reject_operands_that_do_not_fit(path, case, monkeypatch):
    fn, a_shape, part_shapes, words, *dout_shape = BAD_CALLS[case]
    ops, array = PATHS[path](monkeypatch)
    rng = np.random.default_rng(0)
    a, parts = array(rng.normal(size=a_shape)), [array(rng.normal(size=s)) for s in part_shapes]
    dout = [array(rng.normal(size=s)) for s in dout_shape]  # matmul_concat_backward's third operand
    with pytest.raises(ValueError, match=fn) as err:
        getattr(ops, fn)(a, parts, *dout)
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("path", ["torch eager", "torch compiled branch", "numpy blocked", "mlx"])
@pytest.mark.parametrize("fn", ["matmul_concat", "matmul_concat_t"])
def test_products_with_a_concatenation_match_numpy_float64(path, fn, monkeypatch):
    """A single part and a part with no rows, against numpy's product with the
    concatenated copy (float64; mlx float32)."""
    ops, array = PATHS[path](monkeypatch)
    rng = np.random.default_rng(1)
    parts = [rng.normal(size=s) for s in ((3, 4, 7), (3, 0, 7), (3, 2, 7))]
    for chosen in (parts[:1], parts):
        stacked = np.concatenate(chosen, axis=-2)
        if fn == "matmul_concat_t":
            a = rng.normal(size=(3, 5, 7))
            want = a @ np.swapaxes(stacked, -1, -2)
        else:
            a = rng.normal(size=(3, 5, stacked.shape[-2]))
            want = a @ stacked
        got = getattr(ops, fn)(array(a), [array(p_) for p_ in chosen])
        assert tuple(got.shape) == want.shape
        tol = 1e-5 if path == "mlx" else 1e-13
        np.testing.assert_allclose(np.asarray(got), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("path", ["torch eager", "torch compiled branch", "numpy blocked", "mlx"])
def test_matmul_concat_backward_matches_numpy_float64(path, monkeypatch):
    """A single part, and parts with one of no rows: the products with the concatenated
    operand, against numpy (float64; mlx float32)."""
    ops, array = PATHS[path](monkeypatch)
    rng = np.random.default_rng(2)
    parts = [rng.normal(size=s) for s in ((3, 4, 7), (3, 0, 7), (3, 2, 7))]
    for chosen in (parts[:1], parts):
        stacked = np.concatenate(chosen, axis=-2)
        a, dout = rng.normal(size=(3, 5, stacked.shape[-2])), rng.normal(size=(3, 5, 7))
        d_stacked = np.swapaxes(a, -1, -2) @ dout
        bounds = np.cumsum([0] + [p_.shape[-2] for p_ in chosen])
        want = [d_stacked[..., s:e, :] for s, e in zip(bounds[:-1], bounds[1:])] + [dout @ np.swapaxes(stacked, -1, -2)]
        d_parts, d_a = ops.matmul_concat_backward(array(a), [array(p_) for p_ in chosen], array(dout))
        tol = 1e-5 if path == "mlx" else 1e-13
        assert len(d_parts) == len(chosen)
        for got, w in zip([*d_parts, d_a], want):
            assert tuple(got.shape) == w.shape
            np.testing.assert_allclose(np.asarray(got), w, rtol=tol, atol=tol)


def test_fullgraph_compile_names_the_bad_operand():
    """Traced with fullgraph=True, dynamo reports the shim's ValueError in its message."""
    ops = mhc_core.namespace(torch.zeros(1))
    torch._dynamo.reset()
    fn = torch.compile(lambda a, x, y: ops.matmul_concat_t(a, [x, y]), backend="eager", fullgraph=True)
    with pytest.raises(Exception, match=r"matmul_concat_t: every part .* C = 16"):
        fn(torch.randn(3, 4, 16), torch.randn(3, 4, 16), torch.randn(3, 1, 1))


def test_checked_products_keep_one_graph_for_every_token_count():
    """The operand checks compare symbolic sizes without specialising them: dynamic=True
    traces one graph for T = 3, 5, 7 (values against the concatenated product, float64)."""
    from torch._dynamo.utils import counters
    ops = mhc_core.namespace(torch.zeros(1))
    torch._dynamo.reset()
    counters.clear()

    def both(a, x, y, mix):
        (dx, dy), d_mix = ops.matmul_concat_backward(mix, [x, y], a)
        return ops.matmul_concat_t(a, [x, y]), ops.matmul_concat(mix, [x, y]), dx, dy, d_mix
    fn = torch.compile(both, backend="eager", dynamic=True, fullgraph=True)
    for t in (3, 5, 7):
        a, x, y, mix = (torch.randn(t, *s, dtype=torch.float64) for s in ((4, 6), (4, 6), (1, 6), (4, 5)))
        got_t, got, dx, dy, d_mix = fn(a, x, y, mix)
        stacked = torch.cat([x, y], dim=-2)
        torch.testing.assert_close(got_t, a @ stacked.mT, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(got, mix @ stacked, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(torch.cat([dx, dy], dim=-2), mix.mT @ a, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(d_mix, a @ stacked.mT, rtol=1e-12, atol=1e-12)
    assert counters["stats"]["unique_graphs"] == 1
