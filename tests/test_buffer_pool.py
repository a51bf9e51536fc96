"""mhc_core.buffer_pool: a pooled array is handed out again only when nothing outside the
pool refers to it (a view, a torch tensor, a saved tensor of a live autograd graph)."""
from __future__ import annotations

import numpy as np
import pytest

import mhc_core
from mhc_core.buffer_pool import BufferPool
from mhc_core.sinkhorn import sinkhorn_backward, sinkhorn_forward


def test_a_released_buffer_is_reused_and_a_held_one_never():
    pool = BufferPool(max_bytes=1 << 20, max_buffer_bytes=1 << 16)
    a = pool.empty((4, 8), np.float32)
    b = pool.empty((4, 8), np.float32)
    assert a is not b and a.shape == (4, 8) and a.dtype == np.float32
    view = a[1]  # a view keeps its base alive: a stays taken
    del a
    c = pool.empty((4, 8), np.float32)
    assert c is not view.base and c is not b
    del view, c  # a and c are free again now
    d = pool.empty((4, 8), np.float32)
    e = pool.empty((4, 8), np.float32)
    assert d is not e and d is not b and e is not b
    assert pool.pooled_bytes == 3 * 4 * 8 * 4  # a, b, c: no more made than were held at once


def test_buffers_held_by_torch_tensors_are_not_handed_out():
    torch = pytest.importorskip("torch")
    pool = BufferPool(max_bytes=1 << 20, max_buffer_bytes=1 << 16)
    t = torch.from_numpy(pool.empty((16,), np.float64))
    t.fill_(7.0)
    for _ in range(3):
        pool.empty((16,), np.float64).fill(-1.0)  # writes only into buffers nobody holds
    assert bool((t == 7.0).all())


def test_shape_dtype_and_size_limits():
    pool = BufferPool(max_bytes=256, max_buffer_bytes=128)
    big = pool.empty((64,), np.float64)  # 512 bytes: above max_buffer_bytes, never pooled
    assert pool.pooled_bytes == 0 and big.shape == (64,)
    x = pool.empty((16,), np.float64)  # 128 bytes, pooled
    y = pool.empty((16,), np.float32)  # another dtype: its own buffer, pooled
    assert pool.pooled_bytes == 192 and x.dtype == np.float64 and y.dtype == np.float32
    z = pool.empty((16,), np.float64)  # x is held: 320 bytes would pass max_bytes, not pooled
    assert pool.pooled_bytes == 192 and z is not x
    pool.clear()
    assert pool.pooled_bytes == 0


def test_sinkhorn_saved_iterates_survive_later_forwards():
    """Iterates saved by one forward are not overwritten by the next forwards (the pool
    hands them out only after the saved tuple is gone); the backward on them matches a
    backward run before any other forward."""
    ops = mhc_core.namespace(np.zeros(1))
    rng = np.random.default_rng(0)
    logits = [rng.normal(size=(4, 4, 6)) for _ in range(3)]
    cot = rng.normal(size=(4, 4, 6))
    _, saved0 = sinkhorn_forward(ops, logits[0], 5, 1e-6)
    want = sinkhorn_backward(ops, saved0, cot, 1e-6)
    kept = saved0[1].copy()
    others = [sinkhorn_forward(ops, lg, 5, 1e-6) for lg in logits[1:]]  # noqa: F841 (held)
    for _ in range(3):
        sinkhorn_forward(ops, logits[1], 5, 1e-6)  # released at once: recycled
    np.testing.assert_array_equal(saved0[1], kept)
    np.testing.assert_array_equal(sinkhorn_backward(ops, saved0, cot, 1e-6), want)
