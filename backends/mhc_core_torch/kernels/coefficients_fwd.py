"""Coefficient forward: projection + RMS + gating + Sinkhorn, one pass over x.

Reference: `mhc_core.coefficients` (DESIGN §1, paper Eq. 7-8, 14-15); the math is in the
docstring of kernels/coefficients.py. Per token (x [T, K = n*C], phi [K, W = n*n + 2n]):

    acc = x @ phi [W],  ss = sum(x^2),  r = rsqrt(ss/K + eps),  z = acc * r

then the gating and the Sinkhorn tail (`_coeff_tail`, shared by both launch shapes). Outputs
pre [T, n], post [T, n], res [T, n, n], and for the backward z [T, W] and rs = (rho, 1/m)
[T, 2] with r = rho / m, m a power of two with max|x| < 2m (so rho = O(sqrt K) at most and
the backward works with x/m at any magnitude).

Fast sweep: acc and ss accumulate on RAW x in float32, with no per-step rescaling, so
consecutive dots do not wait on each other.
- bf16 x, n <= 4 (`_parts_sweep`): phi's exact bf16 parts phi = hi + mid + lo (3 x 8 significand
  bits cover float32's 24; `phi_parts`, once per call) side by side in one [K, 3*NP] operand, so
  each K block is ONE dot, x tile read once by the tensor cores; bf16 products are exact in
  float32, so float32-level accuracy; ss = diag(x @ x^T) on the tensor cores as well, so x
  never leaves shared memory for registers.
- bf16 x, n > 4 (`_fast_sweep`): the same three parts split in-kernel, one dot each per tile.
- float32 / float16 x: tf32x3 on x as float32 (ieee in the interpreter).
After the sweep m = 2^floor(log2(ss)/2) (from ss's exponent bits; m <= sqrt(ss) < 2m, so
max|x| < 2m as in the fallback), clamped to [m_lo, m_hi], and acc/m, ss/m^2 are exact
(powers of two).

Range (the float32 guarantee of the scaled formula: x up to 3e38, tiny x with eps = 0) -- a
block keeps the fast result only if every token t of it is SAFE:
1. acc_t and ss_t are finite. ss is a sum of non-negative terms, so a finite ss means no
   partial sum overflowed; an overflow in a dot gives inf (or inf - inf = nan), which stays
   non-finite, so finite acc means no product or partial sum overflowed. Without overflow
   every operation has float32's relative rounding error (the usual dot error bound).
2. ss_t >= S_LO = 2^-80, or ss_t <= S_EPS = 2^-30 * 2^(2 floor(log2 sqrt(eps))) (<= 2^-30 eps;
   eps >= 2^-100; S_EPS = -1, never, otherwise). Underflow is the only other loss: each
   product x_k^2 or x_k * phi_part rounds with absolute error <= 2^-149 once it is subnormal.
   With ss >= 2^-80, K such errors (K <= 2^31) are < 2^-118 <= 2^-38 ss: float32-level; in
   acc they add at most 3K 2^-149 |phi|, so in z = acc * r (r <= sqrt(K / ss)) an absolute
   error < 2^-60 |phi|, far under any z the gating can resolve (the scaled sweep loses
   absolute accuracy below |phi| ~ 2^-110 the same way).
   With ss <= S_EPS, ss/K <= 2^-30 eps, so ss hardly enters r = rsqrt(ss/K + eps) and its
   absolute error 2^-149 per term is < 2^-24 eps for eps >= 2^-100; the absolute error of
   z = acc r is then <= 3K 2^-149 |phi| / sqrt(eps), as in the scaled formula, whose scale m
   is floored at ~sqrt(eps) there. Between the two bounds (tiny x with a tiny or zero eps),
   and for x = 0 when eps = 0, the block falls back.
The fallback (`_scaled_sweep`, a runtime branch per program, rare) re-runs the block with the
online power-of-two scale m > max|x|/2 of the module docstring of coefficients.py: exact
float32 behaviour up to 3e38 and down to the smallest normals.

Launch shapes (`FwdConfig`, chosen by `fwd_config` from T and the SM count):
- one launch, grid cdiv(T, BT): sweep, then the tail, when the token blocks fill the device;
- split-K for small T, grid (cdiv(T, BT), S): program (b, s) sweeps K columns
  [s*KS, (s+1)*KS) and writes (acc/m_s, ss/m_s^2, m_s) to a float32 workspace [S, T, P]; then
  `_coeff_merge_kernel` merges the S partials as online softmax merges its running maxima
  (M = max m_s, acc/M = sum (acc_s/m_s)(m_s/M), the same with (m_s/M)^2 for ss: powers of two,
  exact unless a part underflows, which it does only when it is < 2^-126 of the largest)
  and runs the tail (rs = (rho, 1/M): any power-of-two m with max|x| < 2m serves the backward).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from ..triton_gate import INTERPRETED
from ._common import capability, gate_pad, sm_count, stream_pad
from .coefficient_tiles import _gate_cols, _gate_params, _res_cols, _tanh
from .sinkhorn import sinkhorn_tile

S_LO = 2.0 ** -80            # fast path: smallest sum(x^2) per token whose x^2 and products stay normal
FLT_MIN = tl.constexpr(2.0 ** -126)  # float32's smallest normal
MERGE_BT = 32                # token block of the split-K merge kernel (16 spilled 4 B on sm_80)
MIN_K_STEPS = 8              # split-K: each split sweeps at least this many K blocks
# The interpreter's tl.dot multiplies bf16 operands as raw 16-bit integers; there the bf16
# parts are widened to float32 first (same numbers: bf16 products are exact in float32).
_NATIVE_BF16_DOT = tl.constexpr(not INTERPRETED)


# ----------------------------------------------------------------------------------------
# Sweeps over K columns [0, k_len) of one token block (pointers already at the first column)
# ----------------------------------------------------------------------------------------
@triton.jit
def _pow2_floor(v):
    """2^floor(log2 v) for normal v > 0, exactly: v with its significand bits cleared (a GPU's
    approximate log2 / exp2 could miss by one near powers of two or not return one)."""
    if v.dtype == tl.float64:
        return (v.to(tl.int64, bitcast=True) & 0x7FF0000000000000).to(tl.float64, bitcast=True)
    return (v.to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)


@triton.jit
def _pow2_sqrt_floor(v):
    """2^floor(e/2) for normal v = f * 2^e > 0 (1 <= f < 2), exactly, from the exponent bits:
    <= sqrt(v) < 2 * 2^floor(e/2). (An arithmetic shift floors negative exponents too.)"""
    if v.dtype == tl.float64:
        e = ((v.to(tl.int64, bitcast=True) >> 52) & 0x7FF) - 1023
        return (((e >> 1) + 1023) << 52).to(tl.float64, bitcast=True)
    e = ((v.to(tl.int32, bitcast=True) >> 23) & 0xFF) - 127
    return (((e >> 1) + 127) << 23).to(tl.float32, bitcast=True)


@triton.jit
def _bf16_parts(p):
    """float32 p -> bf16 (hi, mid, lo) with hi + mid + lo = p exactly (3 x 8 significand bits
    cover float32's 24; each residual is exact in float32)."""
    hi = p.to(tl.bfloat16)
    r1 = p - hi.to(tl.float32)
    mid = r1.to(tl.bfloat16)
    lo = (r1 - mid.to(tl.float32)).to(tl.bfloat16)
    return hi, mid, lo


@triton.jit
def _dot_bf16x3(xb, p, acc):
    """acc + xb @ p for bf16 xb [BT, BK] and float32 p [BK, N]: p split into bf16 parts
    hi + mid + lo (exact), three bf16 dots with float32 accumulation, smallest part first."""
    hi, mid, lo = _bf16_parts(p)
    if not _NATIVE_BF16_DOT:
        xb, hi, mid, lo = xb.to(tl.float32), hi.to(tl.float32), mid.to(tl.float32), lo.to(tl.float32)
    acc = tl.dot(xb, lo, acc)
    acc = tl.dot(xb, mid, acc)
    return tl.dot(xb, hi, acc)


@triton.jit
def _fast_sweep(x_blk, phi_ptr, tt, tmask, k_len, K, W, gcol, gvalid, rcol, rvalid,
                ACC: tl.constexpr, PREC: tl.constexpr, BF16X3: tl.constexpr,
                BT: tl.constexpr, BK: tl.constexpr, R: tl.constexpr, GP: tl.constexpr):
    """Raw x @ phi [BT, GP] and [BT, R*R] and sum(x^2) [BT] over K columns [0, k_len) of x_blk
    (row stride K) and phi_ptr (row stride W): no rescaling."""
    acc_g = tl.zeros((BT, GP), ACC)
    acc_r = tl.zeros((BT, R * R), ACC)
    ss = tl.zeros((BT,), ACC)
    for k0 in range(0, k_len, BK):  # a constant lower bound: a runtime one cost ~80 registers
        k = k0 + tl.arange(0, BK)
        kmask = k < k_len
        xt = tl.load(x_blk + (tt[:, None] * K + k[None, :]), mask=tmask[:, None] & kmask[None, :], other=0.0)
        pg = tl.load(phi_ptr + k[:, None] * W + gcol[None, :], mask=kmask[:, None] & gvalid[None, :], other=0.0)
        pr = tl.load(phi_ptr + k[:, None] * W + rcol[None, :], mask=kmask[:, None] & rvalid[None, :], other=0.0)
        xf = xt.to(ACC)
        if BF16X3:
            acc_g = _dot_bf16x3(xt, pg.to(ACC), acc_g)
            acc_r = _dot_bf16x3(xt, pr.to(ACC), acc_r)
        else:
            acc_g += tl.dot(xf, pg.to(ACC), input_precision=PREC)
            acc_r += tl.dot(xf, pr.to(ACC), input_precision=PREC)
        ss += tl.sum(xf * xf, axis=1)
    return acc_g, acc_r, ss


@triton.jit
def _parts_sweep(x_blk, parts_ptr, tt, tmask, k_len, K,
                 BT: tl.constexpr, BK: tl.constexpr, R: tl.constexpr, GP: tl.constexpr):
    """bf16 x, R = 4: raw x @ phi and sum(x^2) over K columns [0, k_len), with phi's bf16 parts
    precomputed (`phi_parts` [K, 3*NP], NP = GP + R*R): ONE dot per K block,
    x [BT, BK] @ [hi | mid | lo | 0] [BK, 4*NP] (the zero group is a masked load: tl.dot wants
    a power-of-two width), and sum(x^2) as the diagonal of x @ x^T (bf16 products are exact in
    float32): x reaches only the tensor cores, never registers. (An H200 sweep with sum(x^2)
    taken elementwise from the same pipelined tile, under Triton 3.6, gave wrong results, 2-7%,
    for about half of the launch configurations: benchmarks/NOTES.md.) The three parts' sums
    are added once after the loop."""
    NP: tl.constexpr = GP + R * R
    acc = tl.zeros((BT, 4 * NP), tl.float32)
    sq = tl.zeros((BT, BT), tl.float32)
    cols = tl.arange(0, 4 * NP)
    for k0 in range(0, k_len, BK):  # a constant lower bound: a runtime one cost ~80 registers
        k = k0 + tl.arange(0, BK)
        kmask = k < k_len
        xt = tl.load(x_blk + (tt[:, None] * K + k[None, :]), mask=tmask[:, None] & kmask[None, :], other=0.0)
        pt = tl.load(parts_ptr + k[:, None] * (3 * NP) + cols[None, :],
                     mask=kmask[:, None] & (cols < 3 * NP)[None, :], other=0.0)
        if _NATIVE_BF16_DOT:
            acc = tl.dot(xt, pt, acc)
            sq = tl.dot(xt, tl.trans(xt), sq)
        else:
            xw = xt.to(tl.float32)
            acc = tl.dot(xw, pt.to(tl.float32), acc, input_precision="ieee")
            sq = tl.dot(xw, tl.trans(xw), sq, input_precision="ieee")
    diag = tl.arange(0, BT)[:, None] == tl.arange(0, BT)[None, :]
    ss = tl.sum(tl.where(diag, sq, 0.0), axis=1)
    both = tl.sum(tl.reshape(acc, (BT, 4, NP)), axis=1)                    # hi + mid + lo (+ 0)
    acc_g, acc_r = tl.split(tl.permute(tl.reshape(both, (BT, 2, GP)), (0, 2, 1)))  # GP == R*R here
    return acc_g, acc_r, ss


@triton.jit
def _scaled_sweep(x_blk, phi_ptr, tt, tmask, k_len, K, W, gcol, gvalid, rcol, rvalid, m_lo, m_hi,
                  ACC: tl.constexpr, PREC: tl.constexpr,
                  BT: tl.constexpr, BK: tl.constexpr, R: tl.constexpr, GP: tl.constexpr):
    """(x/m) @ phi, sum((x/m)^2) and m over K columns [0, k_len), with the running power-of-two
    scale m rescaling the sums whenever a tile raises it (coefficients.py docstring): float32's
    full range. Its variables are named apart from _fast_sweep's: the compile report's TTIR
    analysis goes by SSA names, which the two loops would otherwise share."""
    acc_g = tl.zeros((BT, GP), ACC)
    acc_r = tl.zeros((BT, R * R), ACC)
    ss = tl.zeros((BT,), ACC)
    m = tl.zeros((BT,), ACC) + m_lo
    for k0 in range(0, k_len, BK):  # a constant lower bound: a runtime one cost ~80 registers
        kv = k0 + tl.arange(0, BK)
        kvmask = kv < k_len
        xv = tl.load(x_blk + (tt[:, None] * K + kv[None, :]), mask=tmask[:, None] & kvmask[None, :], other=0.0).to(ACC)
        pg = tl.load(phi_ptr + kv[:, None] * W + gcol[None, :], mask=kvmask[:, None] & gvalid[None, :], other=0.0)
        pr = tl.load(phi_ptr + kv[:, None] * W + rcol[None, :], mask=kvmask[:, None] & rvalid[None, :], other=0.0)
        # m' = 2^floor(log2 max|x|) within [m_lo, m_hi], never decreasing
        amax = tl.maximum(tl.max(tl.abs(xv), axis=1), m_lo)
        m_new = tl.minimum(tl.maximum(m, _pow2_floor(amax)), m_hi)
        ratio = m / m_new                    # 1 unless this tile raised the max
        ss = ss * (ratio * ratio)
        acc_g = acc_g * ratio[:, None]
        acc_r = acc_r * ratio[:, None]
        m = m_new
        xs = xv * (1.0 / m)[:, None]         # |xs| < 2 (< 4 at the m_hi cap)
        ss += tl.sum(xs * xs, axis=1)
        acc_g += tl.dot(xs, pg.to(ACC), input_precision=PREC)
        acc_r += tl.dot(xs, pr.to(ACC), input_precision=PREC)
    return acc_g, acc_r, ss, m


@triton.jit
def _sweep(x_blk, phi_ptr, parts_ptr, tt, tmask, k_len, K, W, gcol, gvalid, rcol, rvalid,
           m_lo, m_hi, s_lo, s_eps, f_max,
           FAST: tl.constexpr, PARTS: tl.constexpr, ACC: tl.constexpr,
           PREC: tl.constexpr, BF16X3: tl.constexpr,
           BT: tl.constexpr, BK: tl.constexpr, R: tl.constexpr, GP: tl.constexpr):
    """(acc/m [BT, GP], acc/m [BT, R*R], ss/m^2 [BT], m [BT]) over K columns [0, k_len): the
    fast sweep (PARTS: on precomputed bf16 parts of phi), kept if every token is safe (module
    docstring), else the scaled sweep."""
    if FAST:
        if PARTS:
            acc_g, acc_r, ss = _parts_sweep(x_blk, parts_ptr, tt, tmask, k_len, K, BT, BK, R, GP)
        else:
            acc_g, acc_r, ss = _fast_sweep(x_blk, phi_ptr, tt, tmask, k_len, K, W, gcol, gvalid, rcol,
                                           rvalid, ACC, PREC, BF16X3, BT, BK, R, GP)
        total = tl.abs(ss + tl.sum(acc_g, axis=1) + tl.sum(acc_r, axis=1))  # inf / nan if any term is
        safe = (total <= f_max) & ((ss >= s_lo) | (ss <= s_eps))
        if tl.max(tl.where(tmask & ~safe, 1, 0), axis=0) > 0:
            acc_g, acc_r, ss, m = _scaled_sweep(x_blk, phi_ptr, tt, tmask, k_len, K, W, gcol, gvalid, rcol,
                                                rvalid, m_lo, m_hi, ACC, PREC, BT, BK, R, GP)
        else:
            # m = 2^floor(log2(ss)/2) in [m_lo, m_hi] (powers of two): max|x| <= sqrt(ss) < 2m
            m = tl.minimum(tl.maximum(_pow2_sqrt_floor(tl.maximum(ss, FLT_MIN)), m_lo), m_hi)
            inv_m = 1.0 / m
            acc_g = acc_g * inv_m[:, None]
            acc_r = acc_r * inv_m[:, None]
            ss = ss * inv_m * inv_m
    else:
        acc_g, acc_r, ss, m = _scaled_sweep(x_blk, phi_ptr, tt, tmask, k_len, K, W, gcol, gvalid, rcol,
                                            rvalid, m_lo, m_hi, ACC, PREC, BT, BK, R, GP)
    return acc_g, acc_r, ss, m


# ----------------------------------------------------------------------------------------
# The tail: RMS scale, gating (Eq. 8), Sinkhorn, stores
# ----------------------------------------------------------------------------------------
@triton.jit
def _coeff_tail(acc_g, acc_r, ss, m, t, tmask, bias_ptr, alpha_ptr, pre_ptr, post_ptr, res_ptr, z_ptr, rs_ptr,
                n, K, W, iters, rms_eps, pre_eps, sk_eps, post_scale,
                HC: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr,
                BT: tl.constexpr, R: tl.constexpr, GP: tl.constexpr):
    """From acc/m, ss/m^2 and m of tokens t [BT] (int64): z, rs, pre, post, res stored."""
    is_pre, gidx, gvalid, gcol = _gate_cols(n, R, GP)
    ri, ro, rvalid, rcol = _res_cols(n, R)
    inv_m = 1.0 / m
    rho = 1.0 / tl.sqrt(ss / K + (rms_eps * inv_m) * inv_m)  # Eq. 15: RMS applied after the matmul
    zg = acc_g * rho[:, None]                # = (x @ phi) * r with r = rho / m
    zr = acc_r * rho[:, None]
    ag, a2, bg, br = _gate_params(alpha_ptr, bias_ptr, is_pre, gcol, gvalid, rcol, rvalid, ACC)
    if HC:
        gate = bg[None, :] + ag[None, :] * _tanh(zg)
        res = br[None, :] + a2 * _tanh(zr)
    else:
        s = tl.sigmoid(ag[None, :] * zg + bg[None, :])
        gate = tl.where(is_pre[None, :], s + pre_eps, post_scale * s)
        valid3 = tl.reshape(rvalid, (1, R, R))
        logits = tl.reshape(a2 * zr + br[None, :], (BT, R, R))
        res = tl.reshape(sinkhorn_tile(logits, valid3, iters, sk_eps, LOG), (BT, R * R))

    tg = tmask[:, None] & gvalid[None, :]
    tl.store(pre_ptr + t[:, None] * n + gidx[None, :], gate, mask=tg & is_pre[None, :])
    tl.store(post_ptr + t[:, None] * n + gidx[None, :], gate, mask=tg & ~is_pre[None, :])
    tr = tmask[:, None] & rvalid[None, :]
    tl.store(res_ptr + t[:, None] * n * n + (ri * n + ro)[None, :], res, mask=tr)
    tl.store(z_ptr + t[:, None] * W + gcol[None, :], zg, mask=tg)
    tl.store(z_ptr + t[:, None] * W + rcol[None, :], zr, mask=tr)
    tl.store(rs_ptr + 2 * t, rho, mask=tmask)
    tl.store(rs_ptr + 2 * t + 1, inv_m, mask=tmask)


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------
@triton.jit
def _coeff_fwd_kernel(
    x_ptr, phi_ptr, parts_ptr, bias_ptr, alpha_ptr,       # x [T, K], phi [K, W], [K, 3*NP] bf16, bias [W], alpha [3]
    pre_ptr, post_ptr, res_ptr, z_ptr, rs_ptr,            # [T, n], [T, n], [T, n, n], [T, W], [T, 2]
    part_ptr,                                             # SPLIT: workspace [S, T, GP + R*R + 2]
    T, n, K, W, k_per_split, iters, rms_eps, pre_eps, sk_eps, post_scale,
    m_lo, m_hi, s_lo, s_eps, f_max,                       # scale bounds, fast-path bounds, float max
    HC: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    FAST: tl.constexpr, PARTS: tl.constexpr, BF16X3: tl.constexpr, SPLIT: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, R: tl.constexpr, GP: tl.constexpr,
):
    """Grid (token blocks, K splits). SPLIT = False (one split): the tail runs here."""
    t_first = tl.program_id(0).to(tl.int64) * BT  # int64: t * K passes 2^31
    split = tl.program_id(1)
    tt = tl.arange(0, BT)
    t = t_first + tt
    tmask = t < T
    x_blk = x_ptr + t_first * K              # int64 scalar base; int32 offsets within the block
    _i, _o, rvalid, rcol = _res_cols(n, R)
    _p, _g, gvalid, gcol = _gate_cols(n, R, GP)
    k_len = K
    if SPLIT:  # columns [k_lo, k_lo + k_len): the pointers move, the loops still start at 0
        k_lo = split * k_per_split
        k_len = tl.minimum(k_per_split, K - k_lo)
        x_blk += k_lo
        phi_ptr += k_lo * W
        parts_ptr += k_lo * (3 * (GP + R * R))
    acc_g, acc_r, ss, m = _sweep(x_blk, phi_ptr, parts_ptr, tt, tmask, k_len, K, W, gcol, gvalid, rcol, rvalid,
                                 m_lo, m_hi, s_lo, s_eps, f_max, FAST, PARTS, ACC, PREC, BF16X3,
                                 BT, BK, R, GP)
    if SPLIT:
        P: tl.constexpr = GP + R * R + 2
        row = part_ptr + (split.to(tl.int64) * T + t) * P
        tl.store(row[:, None] + tl.arange(0, GP)[None, :], acc_g, mask=tmask[:, None])
        tl.store(row[:, None] + GP + tl.arange(0, R * R)[None, :], acc_r, mask=tmask[:, None])
        tl.store(row + GP + R * R, ss, mask=tmask)
        tl.store(row + GP + R * R + 1, m, mask=tmask)
    else:
        _coeff_tail(acc_g, acc_r, ss, m, t, tmask, bias_ptr, alpha_ptr, pre_ptr, post_ptr, res_ptr, z_ptr, rs_ptr,
                    n, K, W, iters, rms_eps, pre_eps, sk_eps, post_scale, HC, LOG, ACC, BT, R, GP)


@triton.jit
def _coeff_merge_kernel(
    part_ptr, bias_ptr, alpha_ptr, pre_ptr, post_ptr, res_ptr, z_ptr, rs_ptr,
    T, n, K, W, S, iters, rms_eps, pre_eps, sk_eps, post_scale,
    HC: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr,
    BT: tl.constexpr, R: tl.constexpr, GP: tl.constexpr,
):
    """Split-K finish: merge the S partials (acc/m_s, ss/m_s^2, m_s) of each token to a
    common scale M = max m_s (powers of two), then the tail."""
    P: tl.constexpr = GP + R * R + 2
    t = tl.program_id(0).to(tl.int64) * BT + tl.arange(0, BT)
    tmask = t < T
    stride = T.to(tl.int64) * P              # one split's workspace
    row = part_ptr + t * P
    big_m = tl.zeros((BT,), ACC)
    for s in range(0, S):
        big_m = tl.maximum(big_m, tl.load(row + s * stride + GP + R * R + 1, mask=tmask, other=1.0))
    big_m = tl.where(tmask, big_m, 1.0)
    acc_g = tl.zeros((BT, GP), ACC)
    acc_r = tl.zeros((BT, R * R), ACC)
    ss = tl.zeros((BT,), ACC)
    for s in range(0, S):
        rs_ = row + s * stride
        w = tl.load(rs_ + GP + R * R + 1, mask=tmask, other=1.0) / big_m   # a power of two <= 1
        acc_g += tl.load(rs_[:, None] + tl.arange(0, GP)[None, :], mask=tmask[:, None], other=0.0) * w[:, None]
        acc_r += tl.load(rs_[:, None] + GP + tl.arange(0, R * R)[None, :], mask=tmask[:, None], other=0.0) * w[:, None]
        ss += tl.load(rs_ + GP + R * R, mask=tmask, other=0.0) * (w * w)
    _coeff_tail(acc_g, acc_r, ss, big_m, t, tmask, bias_ptr, alpha_ptr, pre_ptr, post_ptr, res_ptr, z_ptr, rs_ptr,
                n, K, W, iters, rms_eps, pre_eps, sk_eps, post_scale, HC, LOG, ACC, BT, R, GP)


@triton.jit
def _store_parts(p, dst, mask, NP: tl.constexpr):
    hi, mid, lo = _bf16_parts(p)
    tl.store(dst, hi, mask=mask)
    tl.store(dst + NP, mid, mask=mask)
    tl.store(dst + 2 * NP, lo, mask=mask)


@triton.jit
def _phi_parts_kernel(phi_ptr, parts_ptr, K, n, W, R: tl.constexpr, GP: tl.constexpr, BK: tl.constexpr):
    """phi [K, W] float32 -> parts [K, 3*NP] bf16 (NP = GP + R*R): row k holds hi | mid | lo,
    each laid out as the gate tile then the res tile (coefficient_tiles.py), padding zero."""
    NP: tl.constexpr = GP + R * R
    k = tl.program_id(0).to(tl.int64) * BK + tl.arange(0, BK)
    kmask = k < K
    _p, _g, gvalid, gcol = _gate_cols(n, R, GP)
    _i, _o, rvalid, rcol = _res_cols(n, R)
    pg = tl.load(phi_ptr + k[:, None] * W + gcol[None, :], mask=kmask[:, None] & gvalid[None, :], other=0.0)
    pr = tl.load(phi_ptr + k[:, None] * W + rcol[None, :], mask=kmask[:, None] & rvalid[None, :], other=0.0)
    row = parts_ptr + k[:, None] * (3 * NP)
    _store_parts(pg.to(tl.float32), row + tl.arange(0, GP)[None, :], kmask[:, None], NP)
    _store_parts(pr.to(tl.float32), row + GP + tl.arange(0, R * R)[None, :], kmask[:, None], NP)


PARTS_BK = 64  # rows of phi per program of _phi_parts_kernel


def uses_phi_parts(dtype: torch.dtype, n: int) -> bool:
    """Whether the forward's fast sweep runs on precomputed bf16 parts of phi: bf16 x with
    R = 4 (n <= 4), where the gate and res tiles are equally wide (GP = R*R = 16)."""
    return dtype == torch.bfloat16 and stream_pad(n) == 4


def phi_parts(phi: torch.Tensor, n: int) -> torch.Tensor:
    """phi [K, W] (any float dtype, any strides) -> [K, 3 * (GP + R*R)] bf16 parts of phi as
    float32 (`_phi_parts_kernel`)."""
    phi = phi.contiguous()  # the kernel reads rows of stride W
    K, W = phi.shape
    R, GP = stream_pad(n), gate_pad(n)
    parts = phi.new_empty((K, 3 * (GP + R * R)), dtype=torch.bfloat16)
    _phi_parts_kernel[(triton.cdiv(K, PARTS_BK),)](phi, parts, K, n, W, R=R, GP=GP, BK=PARTS_BK, num_warps=4)
    return parts


# ----------------------------------------------------------------------------------------
# Launch configuration and launcher
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class FwdConfig:
    """How the forward launches: token block, K block, warps, pipeline stages of the K loop,
    and K splits (1: one launch; > 1: split-K sweep + merge kernel)."""
    block_t: int
    block_k: int
    num_warps: int = 4
    num_stages: int = 3
    splits: int = 1

    def check(self) -> None:
        """ValueError unless every field is an int (not a bool or float) in its range."""
        for name in ("block_t", "block_k"):
            v = getattr(self, name)
            if type(v) is not int or v < 16 or v & (v - 1):
                raise ValueError(f"FwdConfig.{name} must be a power of two >= 16 (tl.dot's minimum), got {v!r}")
        if type(self.num_warps) is not int or self.num_warps not in (1, 2, 4, 8, 16):
            raise ValueError(f"FwdConfig.num_warps must be one of 1, 2, 4, 8, 16, got {self.num_warps!r}")
        for name in ("num_stages", "splits"):
            v = getattr(self, name)
            if type(v) is not int or v < 1:
                raise ValueError(f"FwdConfig.{name} must be an integer >= 1, got {v!r}")


def _fwd_blocks(n: int, dtype: torch.dtype = torch.float32) -> tuple[int, int]:
    """(token block, K block) of the forward, the largest that compile without spills on sm_80
    and sm_90a under Triton 3.6 and 3.9 (benchmarks/results/compile_report.md): 64 tokens x 32
    columns at n <= 4 (a K block of 64 spilled at bf16), 16 x 32 at n = 8 (the R*R = 64-wide
    res tile; 64 spilled for float32 x on sm_90a), 16 x 16 at n = 16 (32 spilled 8-88 B).
    Same for every x dtype."""
    R = stream_pad(n)
    return (64, 32) if R <= 4 else ((16, 32) if R == 8 else (16, 16))


def fwd_config(T: int, n: int, K: int, dtype: torch.dtype, device: torch.device, cc: int | None = None,
               sms: int | None = None) -> FwdConfig:
    """The forward's launch: one launch when the cdiv(T, BT) token blocks cover every SM,
    else split-K into enough splits for ~2 programs per SM, each split >= MIN_K_STEPS K blocks.
    bf16 x at n <= 4 (the phi-parts sweep): 64-token blocks, K blocks of 64 (sm_90) / 32, 4
    warps, 3 stages. Otherwise the K loop is pipelined 3 deep, except bf16 x before sm_90
    (A100): 2 deep, as 3 spilled 4 B there under Triton 3.6's ptxas (and 2 spilled 8 B for
    float32 x). cc and sms override the device's compute capability and SM count (the compile
    report's architectures)."""
    cc = capability(device) if cc is None else cc
    sms = sm_count(device) if sms is None else sms
    if uses_phi_parts(dtype, n):
        # H200 sweep (results/gpu_h200_20261128/run4_7c1e76e/sweep_coefficients_fwd.md): 64 x 64 blocks on
        # 4 warps, 3 stages, was the fastest at 16384 tokens for C = 4096 / 7168 (0.198 / 0.318 ms,
        # 65-70% of copy bandwidth) and within 1% of it at C = 1024; split-K 4 ways 0.110 ms at
        # 4096 tokens. sm_80: K block 32 (64 spilled 16 B there; compile_report.md)
        bt, bk = 64, (64 if cc >= 90 else 32)
        return FwdConfig(bt, bk, 4, 3, _splits(T, K, bt, bk, sms))
    bt, bk = _fwd_blocks(n, dtype)
    warps = 4 if stream_pad(n) <= 4 else 8   # n > 4: R*R-wide tiles need more threads' registers
    if stream_pad(n) <= 4 and cc >= 90 and 10 * triton.cdiv(max(T, 1), 2 * bt) >= 9 * sms:
        # H200, n = 4, bf16 x then (results/gpu_h200_20261128/run2_d6b83b8/sweep_coefficients_fwd.md;
        # since then only float32 / float16 x take this sweep, not measured for them): 128 x 32
        # blocks on 8 warps took 0.76 ms against 1.08 ms for 64 x 32 on 4 at C = 4096, 16384
        # tokens (0.20 against 0.28 at C = 1024), where its 128 blocks nearly fill the 132 SMs;
        # measured only there, so used only where the 128-token blocks fill >= 90% of the SMs
        return FwdConfig(2 * bt, bk, 8, 3, 1)
    return FwdConfig(bt, bk, warps, 2 if (cc < 90 and dtype == torch.bfloat16) else 3, _splits(T, K, bt, bk, sms))


def _splits(T: int, K: int, bt: int, bk: int, sms: int) -> int:
    """K splits: 1 when the cdiv(T, bt) token blocks cover every SM, else enough for ~2
    programs per SM, each split >= MIN_K_STEPS K blocks."""
    blocks = triton.cdiv(max(T, 1), bt)
    if blocks >= sms:
        return 1
    return max(1, min(triton.cdiv(2 * sms, blocks), K // (bk * MIN_K_STEPS)))


def _scale_bounds(f: torch.dtype, rms_eps: float) -> tuple[float, float]:
    """(m_lo, m_hi) of the power-of-two scale m: m_lo = 2^floor(log2 sqrt(eps)), so eps/m^2 < 4
    cannot overflow (the smallest normal when eps = 0, so 1/m is finite); m_hi = 2^(max
    exponent - 2), so 1/m is a normal float and |x|/m < 4."""
    fi = torch.finfo(f)
    m_hi = 2.0 ** (math.frexp(fi.max)[1] - 2)  # 2^126 for float32
    m_lo = 2.0 ** math.floor(math.log2(math.sqrt(rms_eps))) if rms_eps > 0 else fi.tiny
    return min(max(m_lo, fi.tiny), m_hi), m_hi


def _fast_bounds(rms_eps: float) -> tuple[float, float]:
    """(S_LO, S_EPS) of the fast path (module docstring): a token is safe if sum(x^2) >= S_LO
    or sum(x^2) <= S_EPS = 2^-30 * 2^(2 floor(log2 sqrt(eps))); S_EPS = -1 (never) when
    eps < 2^-100."""
    if rms_eps < 2.0 ** -100:
        return S_LO, -1.0
    return S_LO, 2.0 ** (2 * math.floor(math.log2(math.sqrt(rms_eps))) - 30)


def _kernel_consts(x: torch.Tensor, n: int) -> dict:
    """Constexprs shared by the forward kernels for x's dtype."""
    f64 = x.dtype == torch.float64
    return dict(ACC=tl.float64 if f64 else tl.float32, R=stream_pad(n), GP=gate_pad(n),
                # tf32x3: three tensor-core passes, ~float32 accuracy (plain tf32 would cost ~1e-3)
                PREC="ieee" if (INTERPRETED or f64) else "tf32x3")


def merge_warps(n: int) -> int:
    """Warps of the split-K merge kernel (R*R-wide tiles above n = 4 need more threads)."""
    return 4 if stream_pad(n) <= 4 else 8


def merge_consts(consts: dict) -> dict:
    """The forward's constexprs the merge kernel declares (it runs no dot: no PREC)."""
    return {k: v for k, v in consts.items() if k != "PREC"}


def coefficients_fwd(x, phi, bias, alpha, hc: bool, iters: int, rms_eps: float, pre_eps: float,
                     sk_eps: float, post_scale: float, config: FwdConfig | None = None):
    """x [T, n, C] -> pre [T, n], post [T, n], res [T, n, n], z [T, W], rs [T, 2]
    (rs = (rho, 1/m) with r = rho / m, see the module docstring); phi [n*C, W], bias [W],
    alpha [3], W = n*n + 2n (any strides: copied to contiguous where they are not). `config`
    overrides `fwd_config` (the GPU sweep passes candidates)."""
    if x.dim() != 3:
        raise ValueError(f"coefficients_fwd: x must be [T, n, C], got shape {tuple(x.shape)}")
    T, n, C = x.shape
    K, W = n * C, n * n + 2 * n
    for name, t, want in (("phi", phi, (K, W)), ("bias", bias, (W,)), ("alpha", alpha, (3,))):
        if t.shape != want:  # torch.Size compares equal to a tuple
            raise ValueError(f"coefficients_fwd: {name} must have shape {want} for x [T, n={n}, C={C}], "
                             f"got {tuple(t.shape)}")
    x = x.contiguous()  # the kernels index x as a dense [T, n*C] array
    f = torch.float64 if x.dtype == torch.float64 else torch.float32
    pre, post = x.new_empty((T, n), dtype=f), x.new_empty((T, n), dtype=f)
    res, z, rs = x.new_empty((T, n, n), dtype=f), x.new_empty((T, W), dtype=f), x.new_empty((T, 2), dtype=f)
    if config is not None:  # checked even when there is nothing to launch
        if not isinstance(config, FwdConfig):
            raise TypeError(f"coefficients_fwd: config must be a FwdConfig, got {type(config).__name__}")
        config.check()
    if not T:
        return pre, post, res, z, rs
    if config is None:
        config = fwd_config(T, n, K, x.dtype, x.device)
    consts = _kernel_consts(x, n)
    k_per_split = triton.cdiv(triton.cdiv(K, config.splits), config.block_k) * config.block_k
    splits = triton.cdiv(K, k_per_split)
    phi, bias, alpha = phi.contiguous(), bias.contiguous(), alpha.contiguous()
    part = x.new_empty((splits, T, consts["GP"] + consts["R"] ** 2 + 2), dtype=f) if splits > 1 else z
    scalars = (iters, rms_eps, pre_eps, sk_eps, post_scale)
    cfg = dict(HC=hc, LOG=sk_eps == 0.0, **consts)
    parts = uses_phi_parts(x.dtype, n)
    _coeff_fwd_kernel[(triton.cdiv(T, config.block_t), splits)](
        x, phi, phi_parts(phi, n) if parts else phi, bias, alpha, pre, post, res, z, rs, part,
        T, n, K, W, k_per_split, *scalars, *_scale_bounds(f, rms_eps), *_fast_bounds(rms_eps), torch.finfo(f).max,
        FAST=f != torch.float64, PARTS=parts,
        BF16X3=x.dtype == torch.bfloat16, SPLIT=splits > 1,
        BT=config.block_t, BK=config.block_k, num_warps=config.num_warps, num_stages=config.num_stages, **cfg)
    if splits > 1:
        _coeff_merge_kernel[(triton.cdiv(T, MERGE_BT),)](
            part, bias, alpha, pre, post, res, z, rs, T, n, K, W, splits, *scalars,
            BT=MERGE_BT, num_warps=merge_warps(n), **merge_consts(cfg))
    return pre, post, res, z, rs
