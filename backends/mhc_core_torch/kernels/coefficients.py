"""Fused coefficients: projection + RMS + gating + Sinkhorn in one pass over x; exact backward.

Reference: `mhc_core.coefficients` (DESIGN §1, paper Eq. 7-8), tested against it:

    v = flatten(x) [T, K=n*C];  z = rmsnorm(v) @ phi [T, W=n*n+2n] = [pre | post | res]
    mhc: pre = sigmoid(a0 z_pre + b_pre) + pre_eps;  post = post_scale * sigmoid(a1 z_post + b_post)
         res = sinkhorn(a2 z_res + b_res)  [T, n, n]
    hc:  pre, post, res = b + a * tanh(z)  (same kernels, HC=True: no Sinkhorn)

Forward (coefficients_fwd.py; grid over token blocks, split-K for small T): paper Eq. 14-15
— the RMS scale is applied after the matmul, `z = (v @ phi) * r`, `r = rsqrt(sum(v^2)/K + eps)`,
so the sum of squares and the product accumulate in the same sweep over x; the gating and the
Sinkhorn iterations then run on-chip (sinkhorn.py), one token's n x n matrix in registers. It
also writes z [T, W] and rs [T, 2] (W + 2 floats per token) for the backward. Its sweep runs
on raw x and falls back, per token block, to the scaled sweep below when a token is out of
the raw sweep's safe range (bounds proved in coefficients_fwd.py).

Online rescaling (the forward's fallback sweep; same math as mhc_core's max|v|-scaled RMS,
no extra pass over x): float32 sum(v^2) is inf once |v| > 1.8e19, so each token keeps a
running power-of-two scale m > max|v| / 2 and accumulates v/m instead of v; when a tile
raises m to m', the sums so far are multiplied by m/m' (squared for sum((v/m)^2)), as online
softmax does with its running max. Then r = (1/m) * rho, rho = rsqrt(sum((v/m)^2)/K +
eps/m^2), and z = (v/m) @ phi * rho. m is floored at ~sqrt(eps) (eps/m^2 < 4, the role of
`s = max|v| + sqrt(eps)` in mhc_core) and capped at 2^126 (1/m stays a normal float32).
Scaling by powers of two is exact, so at ordinary magnitudes the results are those of the
unscaled formula up to rounding. The fast sweep ends with a power of two m, too, with
max|v| < 2m (from sum(v^2)), so rs = (rho, 1/m) serves the backward whichever sweep ran:
the backward works with v/m and rho (all O(1)) rather than r, because r itself is subnormal
for |v| > ~1e38 and r^2 (in c below) underflows to 0 once |v| > ~1e19.

Backward (two kernels):
1. `_gate_bwd_kernel` (token blocks, reads only the [T, W] arrays): through Sinkhorn (on-chip
   recompute, sinkhorn.py), the sigmoids / tanh, alpha and bias; writes u = rho * dL/dz / m
   and c = rho^2/K * sum_w (dL/dz_w / m) z_w, plus per-program partial sums for dbias and
   dalpha. dL/dz is divided by m first: it grows with |x| (through the pre-aggregate), and
   rho * dL/dz or its product with z overflowed float32 from |x| ~ 3e37 where dx is O(1).
2. `_x_bwd_kernel` (grid over K blocks x token splits, one pass over x): through RMS and
   the matmul, Eq. 14-15 differentiated:
       dx  = u @ phi^T - c * v/m        (z = p r, dr/dv = -r^3 v / K, r = rho/m)
       dphi = (v/m)^T @ (m u)           (accumulated per program, partial sums over splits)
   m is a power of two, so these are the unscaled formulas' numbers bit for bit wherever
   no intermediate overflows or goes subnormal.

Padding: streams to R = max(4, next_pow2(n)); the [pre | post] columns form a gate tile of
GP = max(16, 2R) columns (pre in [0, R), post in [R, 2R)), the res columns an R*R tile, so
every tl.dot operand is >= 16 wide; masked loads gather phi's columns into that layout.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mhc_core import checks

from ..triton_gate import INTERPRETED
from ._checked import coefficient_args
from ._common import (call_launcher, capability, cast_for_store, first_order_only, gate_pad, num_programs_hint,
                      refuse_batched_grads, stream_pad, untracked)
from .coefficient_tiles import _gate_cols, _gate_params, _res_cols, _tanh
from .coefficients_fwd import coefficients_fwd
from .sinkhorn import sinkhorn_tile_bwd


# ----------------------------------------------------------------------------------------
# Backward 1: gating and Sinkhorn (on the [T, W] arrays only)
# ----------------------------------------------------------------------------------------
@triton.jit
def _gate_bwd_kernel(
    z_ptr, rs_ptr, bias_ptr, alpha_ptr, dpre_ptr, dpost_ptr, dres_ptr,
    u_ptr, c_ptr, dbias_part_ptr, dalpha_part_ptr,        # u [T, W], c [T], [P, W], [P, 3]
    T, n, K, W, iters, sk_eps, post_scale,
    HC: tl.constexpr, LOG: tl.constexpr, ACC: tl.constexpr,
    BT: tl.constexpr, R: tl.constexpr, GP: tl.constexpr,
):
    pid = tl.program_id(0).to(tl.int64)  # int64 offsets: t * W, pid * W past 2^31 at long T
    t = pid * BT + tl.arange(0, BT)
    tmask = t < T
    is_pre, gidx, gvalid, gcol = _gate_cols(n, R, GP)
    ri, ro, rvalid, rcol = _res_cols(n, R)
    tg = tmask[:, None] & gvalid[None, :]
    tr = tmask[:, None] & rvalid[None, :]
    # masked tokens load zeros everywhere, so they contribute exactly 0 below
    zg = tl.load(z_ptr + t[:, None] * W + gcol[None, :], mask=tg, other=0.0)
    zr = tl.load(z_ptr + t[:, None] * W + rcol[None, :], mask=tr, other=0.0)
    rho = tl.load(rs_ptr + 2 * t, mask=tmask, other=0.0)  # r = rho / m
    inv_m = tl.load(rs_ptr + 2 * t + 1, mask=tmask, other=0.0)
    dg = tl.load(dpre_ptr + t[:, None] * n + gidx[None, :], mask=tg & is_pre[None, :], other=0.0).to(ACC)
    dg += tl.load(dpost_ptr + t[:, None] * n + gidx[None, :], mask=tg & ~is_pre[None, :], other=0.0).to(ACC)
    dr = tl.load(dres_ptr + t[:, None] * n * n + (ri * n + ro)[None, :], mask=tr, other=0.0).to(ACC)
    ag, a2, bg, br = _gate_params(alpha_ptr, bias_ptr, is_pre, gcol, gvalid, rcol, rvalid, ACC)

    if HC:  # gate = b + a * tanh(z)
        thg = _tanh(zg)
        thr = _tanh(zr)
        dlog_g = dg  # d/d(b) of the gate; the "logit" here is b + a tanh(z)
        dzg = dg * ag[None, :] * (1.0 - thg * thg)
        dlog_r = dr
        dzr = dr * a2 * (1.0 - thr * thr)
        da_g = dg * thg
        da_r = tl.sum(tl.sum(dr * thr, axis=1), axis=0)
    else:
        s = tl.sigmoid(ag[None, :] * zg + bg[None, :])
        dlog_g = dg * tl.where(is_pre, 1.0, post_scale)[None, :] * s * (1.0 - s)
        dzg = dlog_g * ag[None, :]
        da_g = dlog_g * zg
        valid3 = tl.reshape(rvalid, (1, R, R))
        logits = tl.reshape(a2 * zr + br[None, :], (BT, R, R))
        dl3 = sinkhorn_tile_bwd(logits, tl.reshape(dr, (BT, R, R)), valid3, iters, sk_eps, LOG)
        dlog_r = tl.where(tr, tl.reshape(dl3, (BT, R * R)), 0.0)
        dzr = dlog_r * a2
        da_r = tl.sum(tl.sum(dlog_r * zr, axis=1), axis=0)

    dzg = dzg * inv_m[:, None]  # dL/dz / m before anything else multiplies it (module doc)
    dzr = dzr * inv_m[:, None]
    tl.store(u_ptr + t[:, None] * W + gcol[None, :], dzg * rho[:, None], mask=tg)
    tl.store(u_ptr + t[:, None] * W + rcol[None, :], dzr * rho[:, None], mask=tr)
    c = rho * rho / K * (tl.sum(dzg * zg, axis=1) + tl.sum(dzr * zr, axis=1))
    tl.store(c_ptr + t, c, mask=tmask)
    tl.store(dbias_part_ptr + pid * W + gcol, tl.sum(dlog_g, axis=0), mask=gvalid)
    tl.store(dbias_part_ptr + pid * W + rcol, tl.sum(dlog_r, axis=0), mask=rvalid)
    da_pre = tl.sum(tl.sum(tl.where(is_pre[None, :], da_g, 0.0), axis=1), axis=0)
    da_post = tl.sum(tl.sum(tl.where(is_pre[None, :], 0.0, da_g), axis=1), axis=0)
    tl.store(dalpha_part_ptr + pid * 3, da_pre)
    tl.store(dalpha_part_ptr + pid * 3 + 1, da_post)
    tl.store(dalpha_part_ptr + pid * 3 + 2, da_r)


# ----------------------------------------------------------------------------------------
# Backward 2: RMS + matmul (Eq. 14-15 differentiated), one pass over x
# ----------------------------------------------------------------------------------------
@triton.jit
def _res_chunk(phi_ptr, k, kmask, n, W, R: tl.constexpr, J: tl.constexpr, RC: tl.constexpr, ACC: tl.constexpr):
    """Chunk J of the res tile columns, q in [J*RC, (J+1)*RC): validity, column of phi / u,
    and phi^T for this K block [RC, BK]."""
    q = J * RC + tl.arange(0, RC)
    i = q // R
    o = q % R
    valid, col = (i < n) & (o < n), 2 * n + i * n + o
    prT = tl.load(phi_ptr + k[None, :] * W + col[:, None], mask=valid[:, None] & kmask[None, :], other=0.0).to(ACC)
    return valid, col, prT


@triton.jit
def _res_chunk_step(u_blk, tmask, valid, col, prT, xT, m, dx, dphi, PREC: tl.constexpr):
    """One token block through res chunk: dx += u_chunk @ phi_chunk^T, dphi += (x/m)^T @ (m u_chunk)."""
    ur = tl.load(u_blk + col[None, :], mask=tmask[:, None] & valid[None, :], other=0.0)
    return dx + tl.dot(ur, prT, input_precision=PREC), dphi + tl.dot(xT, ur * m[:, None], input_precision=PREC)


@triton.jit
def _x_bwd_kernel(
    x_ptr, phi_ptr, rs_ptr, u_ptr, c_ptr, dx_ptr, dphi_part_ptr,  # rs [T, 2], dphi_part [S, K, W]
    dx_in_ptr, pre_ptr, dh_ptr,       # the step's other dx terms: dx_in [T, K], pre [T, n], dh [T, C]
    T, n, C, K, W, tokens_per_split,
    ADD_DX_IN: tl.constexpr, ADD_PRE: tl.constexpr, ACC: tl.constexpr, PREC: tl.constexpr,
    BT: tl.constexpr, BK: tl.constexpr, R: tl.constexpr, GP: tl.constexpr, STAGES: tl.constexpr,
    RES_CHUNKS: tl.constexpr,
):
    """Program (K block, token split). The R*R res columns are handled as RES_CHUNKS (1, 2 or
    4) separate tiles of RC = R*R / RES_CHUNKS columns: each dot then reduces over RC, not
    R*R, so its operands (converted for the tensor cores, split in three for tf32x3) stay
    within the registers at R = 16."""
    RC: tl.constexpr = R * R // RES_CHUNKS
    split = tl.program_id(1)
    k = tl.program_id(0) * BK + tl.arange(0, BK)
    kmask = k < K
    is_pre, gidx, gvalid, gcol = _gate_cols(n, R, GP)
    stream = k // C                          # x column k = stream * C + channel
    channel = k - stream * C
    # phi^T tiles for this K block stay in registers for the whole token loop
    pgT = tl.load(phi_ptr + k[None, :] * W + gcol[:, None], mask=gvalid[:, None] & kmask[None, :], other=0.0).to(ACC)
    dphi_g = tl.zeros((BK, GP), ACC)
    v0, q0, prT0 = _res_chunk(phi_ptr, k, kmask, n, W, R, 0, RC, ACC)
    dphi0 = tl.zeros((BK, RC), ACC)
    if RES_CHUNKS > 1:
        v1, q1, prT1 = _res_chunk(phi_ptr, k, kmask, n, W, R, 1, RC, ACC)
        dphi1 = tl.zeros((BK, RC), ACC)
    if RES_CHUNKS > 2:
        v2, q2, prT2 = _res_chunk(phi_ptr, k, kmask, n, W, R, 2, RC, ACC)
        v3, q3, prT3 = _res_chunk(phi_ptr, k, kmask, n, W, R, 3, RC, ACC)
        dphi2 = tl.zeros((BK, RC), ACC)
        dphi3 = tl.zeros((BK, RC), ACC)
    t_start = split.to(tl.int64) * tokens_per_split  # int64 token index: t * K passes 2^31
    t_end = tl.minimum(t_start + tokens_per_split, T)
    # addresses = (int64 scalar base of the token block) + (int32 offsets within it, < BT * K),
    # so the per-element offset tiles stay 32-bit and loop-invariant
    tt = tl.arange(0, BT)
    x_off = tt[:, None] * K + k[None, :]
    # STAGES = 2: every load of the next token block is issued asynchronously (cp.async) while
    # this one computes; the default pipeliner made only the u loads asynchronous here
    # (PTX: 32 cp.async instead of 8 on sm_80, 77 instead of 26 on sm_90, fewer registers)
    for t0 in tl.range(t_start, t_end, BT, num_stages=STAGES):
        tmask = tt < t_end - t0
        xmask = tmask[:, None] & kmask[None, :]
        xt = tl.load(x_ptr + t0 * K + x_off, mask=xmask, other=0.0).to(ACC)
        u_blk = u_ptr + t0 * W + tt[:, None] * W
        ug = tl.load(u_blk + gcol[None, :], mask=tmask[:, None] & gvalid[None, :], other=0.0)
        c = tl.load(c_ptr + t0 + tt, mask=tmask, other=0.0)
        inv_m = tl.load(rs_ptr + 2 * t0 + 2 * tt + 1, mask=tmask, other=1.0)
        m = 1.0 / inv_m                      # a power of two: exact
        xs = xt * inv_m[:, None]             # x/m as in the forward: O(1) at any |x|
        if RES_CHUNKS == 1:  # (this order compiles to fewer registers at n <= 8)
            ur = tl.load(u_blk + q0[None, :], mask=tmask[:, None] & v0[None, :], other=0.0)
            dx = tl.dot(ug, pgT, input_precision=PREC) + tl.dot(ur, prT0, input_precision=PREC) - c[:, None] * xs
        else:
            xT = tl.trans(xs)
            dx = tl.dot(ug, pgT, input_precision=PREC) - c[:, None] * xs
            dx, dphi0 = _res_chunk_step(u_blk, tmask, v0, q0, prT0, xT, m, dx, dphi0, PREC)
            dx, dphi1 = _res_chunk_step(u_blk, tmask, v1, q1, prT1, xT, m, dx, dphi1, PREC)
        if RES_CHUNKS > 2:
            dx, dphi2 = _res_chunk_step(u_blk, tmask, v2, q2, prT2, xT, m, dx, dphi2, PREC)
            dx, dphi3 = _res_chunk_step(u_blk, tmask, v3, q3, prT3, xT, m, dx, dphi3, PREC)
        if ADD_DX_IN:  # the post_residual term, accumulated here instead of by a torch add
            dx += tl.load(dx_in_ptr + t0 * K + x_off, mask=xmask, other=0.0).to(ACC)
        if ADD_PRE:    # the pre_aggregate term pre[stream] * dh[channel]
            w = tl.load(pre_ptr + t0 * n + (tt[:, None] * n + stream[None, :]), mask=xmask, other=0.0).to(ACC)
            g = tl.load(dh_ptr + t0 * C + (tt[:, None] * C + channel[None, :]), mask=xmask, other=0.0).to(ACC)
            dx += w * g
        tl.store(dx_ptr + t0 * K + x_off, cast_for_store(dx, dx_ptr), mask=xmask)
        if RES_CHUNKS == 1:
            xT = tl.trans(xs)
            dphi_g += tl.dot(xT, ug * m[:, None], input_precision=PREC)
            dphi0 += tl.dot(xT, ur * m[:, None], input_precision=PREC)
        else:
            dphi_g += tl.dot(xT, ug * m[:, None], input_precision=PREC)
    base = dphi_part_ptr + split.to(tl.int64) * K * W + k[:, None] * W
    tl.store(base + gcol[None, :], dphi_g, mask=kmask[:, None] & gvalid[None, :])
    tl.store(base + q0[None, :], dphi0, mask=kmask[:, None] & v0[None, :])
    if RES_CHUNKS > 1:
        tl.store(base + q1[None, :], dphi1, mask=kmask[:, None] & v1[None, :])
    if RES_CHUNKS > 2:
        tl.store(base + q2[None, :], dphi2, mask=kmask[:, None] & v2[None, :])
        tl.store(base + q3[None, :], dphi3, mask=kmask[:, None] & v3[None, :])


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------
# Block sizes (tl.dot needs >= 16 on every axis). Not autotuned: unmeasured on a GPU so
# far (benchmarks/NOTES.md). Each forward program reads all of phi (n*C x 32 floats) from
# L2, so its token block is large (64: phi traffic ~0.75x the x traffic at n = 4); each
# x-stream backward program re-reads u [T, W] per K block, so its K block is large (128).
_BT = 16                     # token block of the gate backward and of the x-stream backward
_X_BWD_STAGES = 2            # software-pipelined token loop of the x-stream backward


def _x_bwd_config(n: int, cc: int) -> tuple[int, int, int, int]:
    """(K block, warps, pipeline stages, res chunks) of the x-stream backward on compute
    capability cc (80 = A100, 90 = H100), the largest K block ptxas compiles without
    spilling and within sm_80's shared memory (benchmarks/results/compile_report.md): the
    phi^T tiles and dphi accumulators [(GP + R*R), BK] live in registers for the whole token
    loop. At n = 16 (R*R = 256 res columns) the res tile is split in 4 chunks of 64 columns
    and the token loop is not pipelined: with one 256-wide chunk, or 2 stages, ptxas spills."""
    R = stream_pad(n)
    if R <= 4:
        return (64 if cc >= 90 else 32), 4, _X_BWD_STAGES, 1
    return (32, 8, _X_BWD_STAGES, 1) if R == 8 else (16, 8, 1, 4)


def _consts(x: torch.Tensor, n: int):
    acc = tl.float64 if x.dtype == torch.float64 else tl.float32
    # tf32x3: three tensor-core passes, ~float32 accuracy (plain tf32 would cost ~1e-3)
    prec = "ieee" if (INTERPRETED or x.dtype == torch.float64) else "tf32x3"
    R = stream_pad(n)
    # n > 4: R*R-wide tiles (up to 256 columns at n = 16) need more threads' registers
    return dict(ACC=acc, R=R, GP=gate_pad(n), num_warps=4 if R <= 4 else 8), prec


def coefficients_bwd(x, phi, bias, alpha, z, rs, dpre, dpost, dres, hc: bool, iters: int,
                     sk_eps: float, post_scale: float, dx_in=None, pre=None, dh=None):
    """Gradients (dx [T, n, C] in x.dtype, dphi, dbias, dalpha in the accumulation dtype).

    Given dx_in [T, n, C] and/or (pre [T, n], dh [T, C]), dx also holds dx_in + pre[i] dh
    (the post_residual and pre_aggregate terms of the whole step's dx), added in the same
    kernel pass that writes dx: one dx buffer, no elementwise torch op over [T, n, C]."""
    T, n, C = x.shape
    K, W = n * C, n * n + 2 * n
    f = z.dtype
    if T == 0:  # empty batch: nothing to launch (and no token split to size)
        return torch.empty_like(x), phi.new_zeros(phi.shape, dtype=f), bias.new_zeros(bias.shape, dtype=f), \
            alpha.new_zeros(alpha.shape, dtype=f)
    consts, prec = _consts(x, n)
    n_tb = triton.cdiv(T, _BT)
    u, c = torch.empty_like(z), z.new_empty((T,))
    dbias_part = x.new_empty((n_tb, W), dtype=f)
    dalpha_part = x.new_empty((n_tb, 3), dtype=f)
    _gate_bwd_kernel[(n_tb,)](
        z, rs, bias.contiguous(), alpha.contiguous(), dpre.contiguous(), dpost.contiguous(), dres.contiguous(),
        u, c, dbias_part, dalpha_part, T, n, K, W, iters, sk_eps, post_scale,
        HC=hc, LOG=sk_eps == 0.0, BT=_BT, **consts)

    # token splits so that (K blocks x splits) about fills the device
    bk, warps, stages, res_chunks = _x_bwd_config(n, capability(x.device))
    consts["num_warps"] = warps
    n_kb = triton.cdiv(K, bk)
    splits = max(1, min(n_tb, triton.cdiv(num_programs_hint(x.device), n_kb)))
    tokens_per_split = triton.cdiv(n_tb, splits) * _BT
    splits = triton.cdiv(T, tokens_per_split)
    dx = torch.empty_like(x)
    dphi_part = x.new_empty((splits, K, W), dtype=f)
    add_pre = pre is not None and dh is not None
    _x_bwd_kernel[(n_kb, splits)](
        x, phi.contiguous(), rs, u, c, dx, dphi_part,
        x if dx_in is None else dx_in.contiguous(), pre if add_pre else x, dh.contiguous() if add_pre else x,
        T, n, C, K, W, tokens_per_split, ADD_DX_IN=dx_in is not None, ADD_PRE=add_pre,
        PREC=prec, BT=_BT, BK=bk, STAGES=stages, RES_CHUNKS=res_chunks, **consts)
    # one partial (small T): the sum is that partial itself, without a reduction launch
    total = lambda part: part[0] if part.shape[0] == 1 else part.sum(0)  # noqa: E731
    return dx, total(dphi_part), total(dbias_part), total(dalpha_part)


# ----------------------------------------------------------------------------------------
# torch.library ops (so torch.compile calls the kernels without a graph break) + Function
# ----------------------------------------------------------------------------------------
@torch.library.custom_op("mhc_triton::coefficients_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, phi: torch.Tensor, bias: torch.Tensor, alpha: torch.Tensor, hc: bool,
            iters: int, rms_eps: float, pre_eps: float, sk_eps: float, post_scale: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return coefficients_fwd(x, phi, bias, alpha, hc, iters, rms_eps, pre_eps, sk_eps, post_scale)


@_fwd_op.register_fake
def _(x, phi, bias, alpha, hc, iters, rms_eps, pre_eps, sk_eps, post_scale):
    T, n, _ = x.shape
    f = torch.float64 if x.dtype == torch.float64 else torch.float32
    e = lambda *s: x.new_empty(s, dtype=f)  # noqa: E731
    return e(T, n), e(T, n), e(T, n, n), e(T, n * n + 2 * n), e(T, 2)


@torch.library.custom_op("mhc_triton::coefficients_bwd", mutates_args=())
def _bwd_op(x: torch.Tensor, phi: torch.Tensor, bias: torch.Tensor, alpha: torch.Tensor, z: torch.Tensor,
            rs: torch.Tensor, dpre: torch.Tensor, dpost: torch.Tensor, dres: torch.Tensor, hc: bool,
            iters: int, sk_eps: float, post_scale: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return coefficients_bwd(x, phi, bias, alpha, z, rs, dpre, dpost, dres, hc, iters, sk_eps, post_scale)


@_bwd_op.register_fake
def _(x, phi, bias, alpha, z, rs, dpre, dpost, dres, hc, iters, sk_eps, post_scale):
    return torch.empty_like(x), phi.new_empty(phi.shape, dtype=z.dtype), \
        bias.new_empty(bias.shape, dtype=z.dtype), alpha.new_empty(alpha.shape, dtype=z.dtype)


_bwd_op.register_autograd(first_order_only("coefficients"))


class CoefficientsFunction(torch.autograd.Function):
    """(x [T, n, C], phi, bias, alpha) -> (pre [T, n], post [T, n], res [T, n, n])."""

    @staticmethod
    def forward(ctx, x, phi, bias, alpha, hc, iters, rms_eps, pre_eps, sk_eps, post_scale):
        pre, post, res, z, rs = call_launcher(_fwd_op, coefficients_fwd, x, phi, bias, alpha, hc, iters, rms_eps,
                                              pre_eps, sk_eps, post_scale)
        ctx.save_for_backward(x, phi, bias, alpha, z, rs)
        ctx.cfg = (hc, iters, sk_eps, post_scale)
        return pre, post, res

    @staticmethod
    def backward(ctx, dpre, dpost, dres):
        refuse_batched_grads("coefficients", dpre, dpost, dres)
        x, phi, bias, alpha, z, rs = ctx.saved_tensors
        T, n, _ = x.shape
        zeros = lambda *s: z.new_zeros(s)  # noqa: E731  (an output that did not reach the loss)
        dpre = zeros(T, n) if dpre is None else dpre
        dpost = zeros(T, n) if dpost is None else dpost
        dres = zeros(T, n, n) if dres is None else dres
        dx, dphi, dbias, dalpha = call_launcher(_bwd_op, coefficients_bwd, x, phi, bias, alpha, z, rs, dpre, dpost,
                                                dres, *ctx.cfg)
        return dx, dphi.to(phi.dtype), dbias.to(bias.dtype), dalpha.to(alpha.dtype), *([None] * 6)


def coefficients(x, phi, bias, alpha, *, variant="mhc", iters=20, rms_eps=1e-6, pre_eps=1e-6,
                 sinkhorn_eps=1e-6, post_scale=2.0):
    """Triton `mhc_core.coefficients`: x [..., n, C] -> (pre [..., n], post [..., n], res [..., n, n]),
    float32 whatever x's dtype (float64 only in the interpreter)."""
    # mhc_core's checks + triton_gate's, remembered per signature
    n, c, variant, cfg = coefficient_args("coefficients", x, phi, bias, alpha, variant, iters, rms_eps, pre_eps,
                                          sinkhorn_eps, post_scale)
    lead = tuple(x.shape[:-2])
    settings = (variant == "hc", *(cfg[k] for k in checks.CONFIG_FIELDS))
    args = (x.reshape(-1, n, c).contiguous(), phi, bias, alpha, *settings)
    if untracked(*args[:4]):
        pre, post, res = coefficients_fwd(*args)[:3]
    else:
        pre, post, res = CoefficientsFunction.apply(*args)
    return pre.reshape(lead + (n,)), post.reshape(lead + (n,)), res.reshape(lead + (n, n))
