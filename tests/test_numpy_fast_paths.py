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
def test_sinkhorn_iterates_buffer_gives_the_generic_numbers(dtype, iters):
    """Same operations (sum, + eps, divide), so forward and explicit backward agree bit for bit."""
    assert FAST.iterates(3, np.zeros((2, 2, 1))) is not None and GENERIC.iterates(3, np.zeros(1)) is None
    rng = np.random.default_rng(iters)
    logits = (3 * rng.normal(size=(4, 4, 37))).astype(dtype)
    cot = rng.normal(size=(4, 4, 37)).astype(dtype)
    m_fast, saved_fast = sinkhorn_forward(FAST, logits, iters, 1e-6)
    m_gen, saved_gen = sinkhorn_forward(GENERIC, logits, iters, 1e-6)
    np.testing.assert_array_equal(m_fast, m_gen)
    np.testing.assert_array_equal(sinkhorn_backward(FAST, saved_fast, cot, 1e-6),
                                  sinkhorn_backward(GENERIC, saved_gen, cot, 1e-6))


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
