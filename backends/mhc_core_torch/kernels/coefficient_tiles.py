"""Column layout of the coefficient kernels (forward and backward share it).

phi / z columns are [pre (n) | post (n) | res (n*n)]. The kernels gather them into two
padded tiles so that every tl.dot operand is >= 16 wide: a gate tile of GP = max(16, 2R)
columns (pre in [0, R), post in [R, 2R)) and a res tile of R*R columns (q = i*R + o), with
R = max(4, next_pow2(n)) (kernels/_common.py).
"""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def _gate_cols(n, R: tl.constexpr, GP: tl.constexpr):
    """For gate tile column j: is it pre, its stream index, validity, column of phi / z."""
    j = tl.arange(0, GP)
    is_pre = j < R
    idx = j % R
    valid = (j < 2 * R) & (idx < n)
    return is_pre, idx, valid, tl.where(is_pre, idx, n + idx)


@triton.jit
def _res_cols(n, R: tl.constexpr):
    """For res tile column q = i*R + o: (i, o), validity, column of phi / z (2n + i*n + o)."""
    q = tl.arange(0, R * R)
    i = q // R
    o = q % R
    return i, o, (i < n) & (o < n), 2 * n + i * n + o


@triton.jit
def _tanh(v):
    return 2.0 * tl.sigmoid(2.0 * v) - 1.0
