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
def _gate_params(alpha_ptr, bias_ptr, is_pre, gcol, gvalid, rcol, rvalid, ACC: tl.constexpr):
    """alpha and bias laid out on the tiles: (alpha per gate column [GP] (a0 on pre, a1 on
    post), a2, bias on the gate tile [GP], bias on the res tile [R*R])."""
    a0 = tl.load(alpha_ptr).to(ACC)
    a1 = tl.load(alpha_ptr + 1).to(ACC)
    a2 = tl.load(alpha_ptr + 2).to(ACC)
    bg = tl.load(bias_ptr + gcol, mask=gvalid, other=0.0).to(ACC)
    br = tl.load(bias_ptr + rcol, mask=rvalid, other=0.0).to(ACC)
    return tl.where(is_pre, a0, a1), a2, bg, br


@triton.jit
def _tanh(v):
    return 2.0 * tl.sigmoid(2.0 * v) - 1.0
