"""numpy's fast paths in the shim (mhc_core.xp._NumpyOps) give the generic shim's numbers:
Sinkhorn's iterates written into one preallocated array, and matmuls with a
concatenated operand run a block of tokens at a time."""
from __future__ import annotations

import numpy as np
import pytest

import mhc_core
from mhc_core.sinkhorn import sinkhorn_backward, sinkhorn_forward
from mhc_core.xp import Ops

FAST = mhc_core.namespace(np.zeros(1))
GENERIC = Ops(np, "numpy")  # the generic compositions, on numpy arrays


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("iters", [1, 2, 20])
@pytest.mark.parametrize("scale", [1.0, 3.0, 10.0])
def test_sinkhorn_iterates_buffer_gives_the_generic_numbers(dtype, iters, scale):
    """Same operations except the order of one sum (numpy adds eps first: eps + m_0 + ...
    instead of (m_0 + ...) + eps), so forward and explicit backward agree to a few units
    of rounding: measured <= 25 ulps relative (forward) and 6 ulps of max|grad| (backward)."""
    assert FAST.iterates(3, np.zeros((2, 2, 1))) is not None and GENERIC.iterates(3, np.zeros(1)) is None
    ulp = np.finfo(dtype).eps
    rng = np.random.default_rng(iters)
    logits = (scale * rng.normal(size=(4, 4, 37))).astype(dtype)
    cot = rng.normal(size=(4, 4, 37)).astype(dtype)
    m_fast, saved_fast = sinkhorn_forward(FAST, logits, iters, 1e-6)
    m_gen, saved_gen = sinkhorn_forward(GENERIC, logits, iters, 1e-6)
    assert m_fast.dtype == m_gen.dtype == dtype
    np.testing.assert_allclose(m_fast, m_gen, rtol=64 * ulp, atol=0)
    g_fast = sinkhorn_backward(FAST, saved_fast, cot, 1e-6)
    g_gen = sinkhorn_backward(GENERIC, saved_gen, cot, 1e-6)
    np.testing.assert_allclose(g_fast, g_gen, rtol=0, atol=16 * ulp * np.abs(g_gen).max())
    # the same saved iterates through both backwards: bit for bit (same operations, in place)
    np.testing.assert_array_equal(sinkhorn_backward(FAST, saved_gen, cot, 1e-6), g_gen)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_normalize_matches_a_loop_sum(dtype):
    """normalize against a literal per-column / per-row loop (float64 reference)."""
    rng = np.random.default_rng(0)
    m = rng.uniform(0.0, 2.0, size=(3, 4, 5)).astype(dtype)
    for axis in (0, 1):
        want = np.empty(m.shape)
        for idx in np.ndindex(*m.shape):
            line = [float(m[idx[:axis] + (k,) + idx[axis + 1:]]) for k in range(m.shape[axis])]
            want[idx] = float(m[idx]) / (sum(line) + 1e-6)
        for ops in (FAST, GENERIC):
            got = ops.normalize(m, axis, 1e-6)
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want, rtol=8 * np.finfo(dtype).eps, atol=0)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sigmoid_softmax_normalize_backward_give_the_generic_numbers(dtype):
    """The numpy versions run the generic operations with out=: bit for bit, including the
    tails, +-inf and nan; sigmoid within 2 ulps of a long-double reference."""
    rng = np.random.default_rng(1)
    x = np.concatenate([rng.normal(0.0, 20.0, 400), [0.0, -0.0, np.inf, -np.inf, np.nan, 1e4, -1e4,
                                                     700.0, -700.0, 88.0, -88.0, -104.0]]).astype(dtype)
    np.testing.assert_array_equal(FAST.sigmoid(x), GENERIC.sigmoid(x))
    for v in (np.asarray(0.5, dtype=dtype), np.asarray(-30.0, dtype=dtype)):  # 0-d (a gate)
        np.testing.assert_array_equal(FAST.sigmoid(v), GENERIC.sigmoid(v))
    assert FAST.sigmoid(x).dtype == dtype
    finite = x[np.isfinite(x)]
    ref = 1.0 / (1.0 + np.exp(-finite.astype(np.longdouble)))
    tiny = np.finfo(dtype).tiny
    rel = np.abs(FAST.sigmoid(finite) - ref) / np.maximum(ref, tiny)
    assert rel[ref > tiny].max() <= 2 * np.finfo(dtype).eps
    t = rng.normal(0.0, 5.0, size=(4, 4, 9)).astype(dtype)
    for axis in (0, 1, -1):
        np.testing.assert_array_equal(FAST.softmax(t, axis=axis), GENERIC.softmax(t, axis=axis))
    m = rng.uniform(0.0, 1.0, size=t.shape).astype(dtype)
    for axis in (0, 1):
        want = GENERIC.normalize_backward(t, m, axis)
        np.testing.assert_array_equal(FAST.normalize_backward(t, m, axis), want)
        h = t.copy()
        assert FAST.normalize_backward(h, m, axis, out=h) is h
        np.testing.assert_array_equal(h, want)


def test_numpy_reshape_and_matrix_transpose_follow_the_array_api():
    a = np.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(FAST.reshape(a, (6, 4)), GENERIC.reshape(a, (6, 4)))
    np.testing.assert_array_equal(FAST.matrix_transpose(a), GENERIC.matrix_transpose(a))
    with pytest.raises(ValueError, match="matrix_transpose expects an array with >= 2 axes"):
        FAST.matrix_transpose(np.zeros(3))
    with pytest.raises(ValueError):
        FAST.reshape(a.transpose(), (24,), copy=False)  # a view is impossible: refused, as the standard says


@pytest.mark.parametrize("lead", [(37,), (3, 13), (1,)])
def test_blocked_matmul_concat_matches_one_matmul(monkeypatch, lead):
    """Blocks of a few tokens (uneven last block) give the one-matmul result; float64."""
    monkeypatch.setattr(type(FAST), "MATMUL_BLOCK_BYTES", 5 * 8 * 8 * 3)  # 3 tokens of [5, 8] float64
    rng = np.random.default_rng(len(lead))
    parts = [rng.normal(size=lead + (4, 8)), rng.normal(size=lead + (1, 8))]
    a = rng.normal(size=lead + (3, 5))
    got = FAST.matmul_concat(a, parts)
    want = a @ np.concatenate(parts, axis=-2)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(GENERIC.matmul_concat(a, parts), want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("lead", [(37,), (3, 13), ()])
def test_matmul_concat_t_matches_product_with_concatenation(lead):
    """a @ concat(parts)^T, written per part, against the product with the concatenated
    copy (float64); its part boundaries do not move values between columns."""
    rng = np.random.default_rng(7 + len(lead))
    parts = [rng.normal(size=lead + (4, 9)), rng.normal(size=lead + (1, 9)), rng.normal(size=lead + (2, 9))]
    a = rng.normal(size=lead + (3, 9))
    want = a @ np.swapaxes(np.concatenate(parts, axis=-2), -1, -2)
    for ops in (FAST, GENERIC):
        got = ops.matmul_concat_t(a, parts)
        assert got.shape == lead + (3, 7)
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shapes", [((7, 4), (7, 9)), ((4,), (9,)), ((2, 3, 4), (3, 9)), ((2, 1, 4), (1, 5, 9)),
                                    ((0, 4), (0, 9)), ((5, 0), (5, 3))])
def test_batched_outer_is_the_broadcast_product_bit_for_bit(shapes, dtype):
    """numpy's einsum version: every entry the one product a[..., i] * b[..., j] (non-finite
    entries included), leading axes broadcast, the dtype numpy's multiply gives."""
    rng = np.random.default_rng(5)
    a, b = rng.normal(size=shapes[0]).astype(dtype), rng.normal(size=shapes[1]).astype(np.float64)
    if a.size and b.size:
        a.flat[0], b.flat[-1] = np.inf, np.nan
    want = a[..., :, None] * b[..., None, :]
    for ops in (FAST, GENERIC):
        got = ops.batched_outer(a, b)
        assert got.shape == want.shape and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_batched_outer_refuses_a_scalar():
    for a, b in ((np.float64(2.0), np.ones(3)), (np.ones(3), np.array(2.0))):
        for ops in (FAST, GENERIC):
            with pytest.raises(ValueError, match=r"batched_outer: . must have shape \[\.\.\., k\]"):
                ops.batched_outer(a, b)


@pytest.mark.parametrize("lead", [(37,), (3, 13), (1,), ()])
def test_blocked_matmul_concat_backward_matches_products_with_the_concatenation(monkeypatch, lead):
    """matmul_concat's gradients in blocks of a few tokens (uneven last block; one part
    with no rows) against numpy's products with the concatenated operand (float64), and
    bit for bit the generic version's (the same per-token products)."""
    monkeypatch.setattr(type(FAST), "MATMUL_BLOCK_BYTES", 3 * 8 * 8 * 2)  # 2 tokens of dout [3, 8]
    rng = np.random.default_rng(11 + len(lead))
    parts = [rng.normal(size=lead + (4, 8)), rng.normal(size=lead + (0, 8)), rng.normal(size=lead + (1, 8))]
    a, dout = rng.normal(size=lead + (3, 5)), rng.normal(size=lead + (3, 8))
    stacked = np.concatenate(parts, axis=-2)
    d_stacked = np.swapaxes(a, -1, -2) @ dout  # [..., 5, 8]
    want_parts = [d_stacked[..., :4, :], d_stacked[..., 4:4, :], d_stacked[..., 4:, :]]
    want_a = dout @ np.swapaxes(stacked, -1, -2)
    got_parts, got_a = FAST.matmul_concat_backward(a, parts, dout)
    gen_parts, gen_a = GENERIC.matmul_concat_backward(a, parts, dout)
    for got, gen, want in zip([*got_parts, got_a], [*gen_parts, gen_a], [*want_parts, want_a]):
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
        np.testing.assert_array_equal(got, gen)


@pytest.mark.parametrize("shapes", [((9, 4, 5), [(9, 4, 0), (9, 1, 0)]), ((9, 0, 5), [(9, 4, 7), (9, 1, 7)]),
                                    ((9, 4, 0), [(9, 0, 7)])])
def test_blocked_products_with_empty_axes_match_the_generic_ones(monkeypatch, shapes):
    """An empty C, p or q (no bytes per token) on the blocked numpy path: the shapes and
    numbers of the generic products (float64)."""
    monkeypatch.setattr(type(FAST), "MATMUL_BLOCK_BYTES", 64)
    a_shape, part_shapes = shapes
    rng = np.random.default_rng(3)
    a, parts = rng.normal(size=a_shape), [rng.normal(size=s) for s in part_shapes]
    dout = rng.normal(size=a_shape[:-1] + part_shapes[0][-1:])
    np.testing.assert_array_equal(FAST.matmul_concat(a, parts), GENERIC.matmul_concat(a, parts))
    got, want = FAST.matmul_concat_backward(a, parts, dout), GENERIC.matmul_concat_backward(a, parts, dout)
    for g, w in zip([*got[0], got[1]], [*want[0], want[1]]):
        assert g.shape == w.shape
        np.testing.assert_array_equal(g, w)


def test_post_residual_blocked_matches_naive_loop(monkeypatch):
    """mhc_core.post_residual and its backward on the blocked path, against a loop over
    tokens and streams (float64)."""
    monkeypatch.setattr(type(FAST), "MATMUL_BLOCK_BYTES", 64)
    rng = np.random.default_rng(0)
    t, n, c = 7, 3, 5
    x, y = rng.normal(size=(t, n, c)), rng.normal(size=(t, c))
    post, res, dout = rng.normal(size=(t, n)), rng.normal(size=(t, n, n)), rng.normal(size=(t, n, c))
    out = mhc_core.post_residual(x, y, post, res)
    dx, dy, dpost, dres = mhc_core.streams.post_residual_backward(FAST, x, y, post, res, dout)
    for k in range(t):
        for o in range(n):
            want = post[k, o] * y[k] + sum(res[k, i, o] * x[k, i] for i in range(n))
            np.testing.assert_allclose(out[k, o], want, rtol=1e-12, atol=1e-12)
            np.testing.assert_allclose(dpost[k, o], y[k] @ dout[k, o], rtol=1e-12, atol=1e-12)
            for i in range(n):
                np.testing.assert_allclose(dres[k, i, o], x[k, i] @ dout[k, o], rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dy[k], sum(post[k, o] * dout[k, o] for o in range(n)), rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(dx[k], res[k] @ dout[k], rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("scale", [0.0, 0.05, 1.0, 10.0])
def test_sinkhorn_fixed_point_exit_gives_the_computed_numbers(monkeypatch, dtype, scale):
    """numpy stops iterating at a floating-point fixed point (an iterate equal to the one two
    steps back) and saves only the iterates so far, with the count of all: the output, each
    stored iterate and the gradient equal the full iteration's bit for bit, and the full
    iteration's later iterates repeat the last two stored. Equal logits reach such a point
    at once (the exit is taken); random ones here do not (nothing is skipped)."""
    rng = np.random.default_rng(7)
    logits = (scale * rng.normal(size=(4, 4, 23))).astype(dtype)
    cot = rng.normal(size=(4, 4, 23)).astype(dtype)
    calls = []
    normalize = FAST.normalize
    monkeypatch.setattr(FAST, "normalize", lambda *a: calls.append(1) or normalize(*a))
    m_exit, saved_exit = sinkhorn_forward(FAST, logits, 20, 1e-6)
    ms_exit, exit_calls = saved_exit[1].copy(), len(calls)
    monkeypatch.setattr(FAST, "equal_all", lambda a, b: False)  # the full 39 normalisations
    calls.clear()
    m_full, saved_full = sinkhorn_forward(FAST, logits, 20, 1e-6)
    assert len(calls) == 39
    stored = ms_exit.shape[0]
    if scale == 0.0:  # a fixed point was reached: the rest neither computed nor stored
        assert exit_calls == stored < 39 and len(saved_exit) == 3 and int(saved_exit[2]) == 39
    else:
        assert exit_calls == stored == 39 and len(saved_exit) == 2
    np.testing.assert_array_equal(m_exit, m_full)
    full = saved_full[1]
    np.testing.assert_array_equal(ms_exit, full[:stored])
    for j in range(stored, 39):  # the full iteration's later iterates repeat the last two stored
        np.testing.assert_array_equal(full[j], ms_exit[stored - 1 - (j - stored + 1) % 2])
    np.testing.assert_array_equal(sinkhorn_backward(FAST, (saved_exit[0], ms_exit) + tuple(saved_exit[2:]), cot, 1e-6),
                                  sinkhorn_backward(FAST, saved_full, cot, 1e-6))
