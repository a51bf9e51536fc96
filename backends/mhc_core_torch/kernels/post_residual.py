"""Post + residual: out[o] = sum_i res[i, o] x[i] + post[o] y (paper Eq. 3, H_res x + H_post^T y).

Reference: `mhc_core.post_residual` (DESIGN §1 step 4), tested against it. x [T, n, C],
y [T, C], post [T, n], res [T, n, n] (res[i, o]: stream i -> o) -> out [T, n, C] in x's
dtype, float32 accumulation.

Forward: grid (tokens, C blocks); reads x and y once, writes out once, one input stream
at a time (C block ~4096 / n wide at any n).
Backward: grid (token blocks, C chunks). n <= 4: a program is one C block with every load
issued up front (no loop, so many programs' loads are in flight; 16-byte accesses along C);
n >= 5: a pipelined loop over C blocks. Each program writes its dx and dy columns and its
chunk's partial sums of the coefficient gradients, which the launcher adds
([chunks, T, n^2 + n] floats: 0.6% of the traffic at n = 4, C = 4096, 2% at n = 16):
    dx[i] = sum_o res[i, o] dout[o]      dy = sum_o post[o] dout[o]
    dres[i, o] = <x[i], dout[o]>         dpost[o] = <y, dout[o]>
n <= 4: one output stream o at a time on an [NP, BC] tile; n >= 5: as dots (see the kernel).
The launch configuration is `bwd_config(n, C)` unless the caller passes one
(benchmarks/sweep_post_residual_bwd.py times the alternatives on a GPU).
Ideal traffic per token: forward (2n + 1) C elements, backward (3n + 2) C.
"""
from __future__ import annotations

from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ._checked import post_residual_args
from ._common import (call_launcher, cast_for_store, first_order_only, next_pow2, refuse_batched_grads, torch_acc_dtype,
                      untracked)


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------
@triton.jit
def _post_fwd_kernel(x_ptr, y_ptr, post_ptr, res_ptr, out_ptr, n, C,
                     ACC: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)  # int64: t * n * C passes 2^31 at long T
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    o = tl.arange(0, NP)
    cmask, omask = c < C, o < n
    m2 = omask[:, None] & cmask[None, :]
    x_tok = x_ptr + t * n * C                # int64 token base; int32 offsets below
    y = tl.load(y_ptr + t * C + c, mask=cmask, other=0.0).to(ACC)                       # [BC]
    w = tl.load(post_ptr + t * n + o, mask=omask, other=0.0).to(ACC)                    # [NP(o)]
    out = w[:, None] * y[None, :]                                                       # [NP(o), BC]
    # one input stream at a time: the live tile is [NP, BC], not [NP, NP, BC], so the C
    # block stays ~4096 / NP wide at n = 16 (256 columns, was 16)
    for i in tl.static_range(NP):
        if i < n:
            xi = tl.load(x_tok + i * C + c, mask=cmask, other=0.0).to(ACC)              # [BC]
            ri = tl.load(res_ptr + t * n * n + i * n + o, mask=omask, other=0.0).to(ACC)  # res[i, :] [NP(o)]
            out += ri[:, None] * xi[None, :]
    tl.store(out_ptr + t * n * C + o[:, None] * C + c[None, :], cast_for_store(out, out_ptr), mask=m2)


@triton.jit
def _bwd_block(x_tok, g_tok, dx_tok, y_tok, dy_tok, res_tok, dres_tok, w, res, dres, dpost, c, C, C_t, i, n, n_t,
               DOT: tl.constexpr, ACC: tl.constexpr, NP: tl.constexpr, STORE_DRES: tl.constexpr):
    """One token's C block c [BC]: writes dx [n, BC] and dy [BC], returns (dres, dpost) plus
    this block's sums. STORE_DRES (product form): each dres column is stored at once instead."""
    cm = c < C_t
    im = i < n_t
    m2 = im[:, None] & cm[None, :]
    offs = i[:, None] * C + c[None, :]                                 # int32 within one token
    x = tl.load(x_tok + offs, mask=m2, other=0.0).to(ACC)                # [NP(i), BC]
    y = tl.load(y_tok + c, mask=cm, other=0.0).to(ACC)                   # [BC]
    if DOT:
        g = tl.load(g_tok + offs, mask=m2, other=0.0).to(ACC)            # [NP(o), BC]
        dx = tl.dot(res, g, input_precision="ieee")                      # [NP(i), BC]
        dres += tl.dot(x, tl.trans(g), input_precision="ieee")           # [NP(i), NP(o)]
        dy = tl.sum(w[:, None] * g, axis=0)                              # [BC]
        dpost += tl.sum(g * y[None, :], axis=1)
    else:
        dx = tl.zeros(x.shape, ACC)
        dy = tl.zeros(y.shape, ACC)
        for o in tl.static_range(NP):
            on = i < tl.where(o < n_t, n, 0)                             # stream o exists (and the token)
            g = tl.load(g_tok + o * C + c, mask=c < tl.where(o < n_t, C_t, 0), other=0.0).to(ACC)  # dout[o]
            r = tl.load(res_tok + i * n + o, mask=on, other=0.0).to(ACC)  # res[:, o] [NP(i)]
            dx += r[:, None] * g[None, :]
            dy += tl.sum(tl.where(i == o, w, 0.0), axis=0) * g
            col = tl.sum(x * g[None, :], axis=1)                         # dres[:, o] [NP(i)]
            if STORE_DRES:
                tl.store(dres_tok + i * n + o, col, mask=on)
            else:
                dres += tl.where(i[None, :] == o, col[:, None], 0.0)
            dpost = tl.where(i == o, dpost + tl.sum(g * y, axis=0), dpost)
    tl.store(dx_tok + offs, cast_for_store(dx, dx_tok), mask=m2)
    tl.store(dy_tok + c, cast_for_store(dy, dy_tok), mask=cm)
    return dres, dpost


@triton.jit
def _post_bwd_kernel(x_ptr, y_ptr, post_ptr, res_ptr, dout_ptr, dx_ptr, dy_ptr, dpost_ptr, dres_ptr,
                     T, n, C, DOT: tl.constexpr, ACC: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr,
                     TOKENS: tl.constexpr, STEPS: tl.constexpr, STAGES: tl.constexpr):
    """Program (token block, C chunk): TOKENS tokens x STEPS * BC columns, in STEPS steps of
    BC columns (STEPS = 1: no loop, every load issued up front; else a loop pipelined over
    STAGES stages). dx and dy are final; dpost [S, T, n] and dres [S, T, n, n] are this
    chunk's partial sums (S = C chunks; the launcher adds them, or S = 1 and they are final).
    DOT = False (n <= 4): one output stream o at a time, dx += res[:, o] dout[o] on an
    [NP, BC] tile and dres[:, o] = sum_c x * dout[o] reduced over the block.
    DOT = True (n >= 5, NP >= 16): [NP, NP] x [NP, BC] dots (exact float32 FMAs, input
    precision ieee), so the live tiles are [NP, BC]."""
    chunk = tl.program_id(1)
    i = tl.arange(0, NP)
    part = chunk.to(tl.int64) * T              # row of this C chunk in the partial sums
    for tt in tl.static_range(TOKENS):
        t = tl.program_id(0).to(tl.int64) * TOKENS + tt  # int64: t * n * C passes 2^31 at long T
        n_t = tl.where(t < T, n, 0)            # a token past T masks everything (0 streams, 0 columns)
        C_t = tl.where(t < T, C, 0)
        im = i < n_t
        mres = im[:, None] & (i < n)[None, :]
        x_tok, g_tok, dx_tok = x_ptr + t * n * C, dout_ptr + t * n * C, dx_ptr + t * n * C
        dres_tok = dres_ptr + (part + t) * n * n
        w = tl.load(post_ptr + t * n + i, mask=im, other=0.0).to(ACC)               # post [NP(o)]
        res = tl.zeros((NP, NP), ACC)
        if DOT:
            res = tl.load(res_ptr + t * n * n + i[:, None] * n + i[None, :], mask=mres, other=0.0).to(ACC)
        dres = tl.zeros((NP, NP), ACC)
        dpost = tl.zeros((NP,), ACC)
        if STEPS == 1:
            c = chunk * BC + tl.arange(0, BC)
            dres, dpost = _bwd_block(x_tok, g_tok, dx_tok, y_ptr + t * C, dy_ptr + t * C, res_ptr + t * n * n,
                                     dres_tok, w, res, dres, dpost, c, C, C_t, i, n, n_t, DOT, ACC, NP, not DOT)
        else:
            for s in tl.range(0, STEPS, num_stages=STAGES):
                c = (chunk * STEPS + s) * BC + tl.arange(0, BC)
                dres, dpost = _bwd_block(x_tok, g_tok, dx_tok, y_ptr + t * C, dy_ptr + t * C, res_ptr + t * n * n,
                                         dres_tok, w, res, dres, dpost, c, C, C_t, i, n, n_t, DOT, ACC, NP, False)
        tl.store(dpost_ptr + (part + t) * n + i, dpost, mask=im)
        if DOT or STEPS > 1:
            tl.store(dres_tok + i[:, None] * n + i[None, :], dres, mask=mres)


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------
class BwdConfig(NamedTuple):
    """Launch configuration of the backward: C block (columns per step), warps, tokens per
    program, the dot form (n >= 5; the stream tile is then padded to >= 16), C blocks per
    program (steps of a loop; 1: no loop) and the loop's pipeline stages."""
    block_c: int
    num_warps: int
    tokens: int
    dot: bool
    steps: int = 1
    stages: int = 1


def bwd_config(n: int, C: int) -> BwdConfig:
    """The backward's launch configuration for n streams of width C (what the launcher uses
    unless given one; benchmarks/sweep_post_residual_bwd.py times the alternatives).
    n = 3, 4 at C >= 4096: 512 columns on 2 warps, 4 steps of a 3-stage loop per program;
    other n <= 4: C blocks of 1024 / NP columns (256 at n = 4) on one warp, 2 tokens per
    program, no loop. n >= 5: dots over a 16-padded stream tile, C block
    1024 / NP (64 at n = 16) looped over up to 1024 columns per program, so the partial sums
    stay small ([n^2 + n] floats per 1024 columns). Registers, spills and CTAs per SM:
    benchmarks/results/compile_report.md."""
    np_ = next_pow2(n)
    if np_ == 4 and C >= 4096:  # H200 sweep (results/gpu_h200_20261128/run4_7c1e76e/sweep_post_residual_bwd.md),
        # n = 4, C = 4096: 512 columns on 2 warps, looped 4 times, 3 stages: 0.591 ms at 16384 tokens
        # (0.641 for the no-loop default below), 0.162 at 4096 (0.172)
        return BwdConfig(512, 2, 1, False, steps=4, stages=3)
    if np_ <= 4:  # the same sweeps (run2, run4): one warp on a 1024-element tile without a loop was the
        # fastest at C = 1024, 2 tokens per program in run4 (4 in run2, within 1-2%)
        return BwdConfig(max(16, min(next_pow2(C), 1024 // np_)), 1, 2, False)
    bc = max(16, min(next_pow2(C), 1024 // max(16, np_)))
    return BwdConfig(bc, 4, 1, True, steps=max(1, min(triton.cdiv(C, bc), 1024 // bc)), stages=2)


MAX_WARPS = 32  # 1024 threads, CUDA's limit per block


def _power_of_two(v) -> bool:
    """v is an int (not a bool or float) and a power of two >= 1."""
    return type(v) is int and v >= 1 and not v & (v - 1)


def check_bwd_config(cfg: BwdConfig, n: int) -> BwdConfig:
    """cfg, or a ValueError naming what a backward configuration must be."""
    if not isinstance(cfg, BwdConfig):
        raise TypeError(f"config must be a post_residual.BwdConfig, got {type(cfg).__name__}")
    for name in ("block_c", "num_warps"):
        v = getattr(cfg, name)
        if not _power_of_two(v) or (name == "num_warps" and v > MAX_WARPS):
            raise ValueError(f"BwdConfig.{name} must be a positive power of two"
                             + (f" <= {MAX_WARPS}" if name == "num_warps" else "") + f", got {v!r}")
    for name, hi in (("tokens", 16), ("steps", 1 << 20), ("stages", 4)):
        v = getattr(cfg, name)
        if type(v) is not int or not 1 <= v <= hi:
            raise ValueError(f"BwdConfig.{name} must be an int in [1, {hi}], got {v!r}")
    if not isinstance(cfg.dot, bool):
        raise ValueError(f"BwdConfig.dot must be True or False, got {cfg.dot!r}")
    if cfg.block_c < 16:
        raise ValueError(f"BwdConfig.block_c must be >= 16 (tl.dot / tile minimum), got {cfg.block_c}")
    if not cfg.dot and next_pow2(n) > 4:
        raise ValueError(f"BwdConfig.dot must be True for n > 4 streams (got n = {n}, dot = False)")
    return cfg


def _block_c_fwd(n: int, C: int) -> int:
    # the forward's live tile is [NP, BC] (one input stream at a time): ~4096 values
    return max(16, min(next_pow2(C), 4096 // next_pow2(n)))


def post_residual_fwd(x, y, post, res, block_c: int | None = None, num_warps: int = 4):
    """x [T, n, C], y [T, C], post [T, n], res [T, n, n] (contiguous) -> out [T, n, C], x's dtype.
    block_c / num_warps: the launch (default `_block_c_fwd(n, C)` columns, 4 warps)."""
    T, n, C = x.shape
    BC = _block_c_fwd(n, C) if block_c is None else block_c
    for name, v in (("block_c", BC), ("num_warps", num_warps)):
        if not _power_of_two(v) or (name == "block_c" and v < 16) or (name == "num_warps" and v > MAX_WARPS):
            raise ValueError(f"post_residual_fwd {name} must be a power of two (block_c >= 16, "
                             f"num_warps <= {MAX_WARPS}), got {v!r}")
    out = torch.empty_like(x)
    if T:
        acc = tl.float64 if x.dtype == torch.float64 else tl.float32
        _post_fwd_kernel[(T, triton.cdiv(C, BC))](x, y, post, res, out, n, C, ACC=acc, NP=next_pow2(n), BC=BC,
                                                  num_warps=num_warps)
    return out


def post_residual_bwd(x, y, post, res, dout, config: BwdConfig | None = None):
    """x, dout [T, n, C], y [T, C], post [T, n], res [T, n, n] (contiguous) -> (dx in x's
    dtype, dy in y's dtype, dpost [T, n], dres [T, n, n] in the accumulation dtype).
    config: the launch configuration (default `bwd_config(n, C)`)."""
    T, n, C = x.shape
    cfg = bwd_config(n, C) if config is None else check_bwd_config(config, n)
    f = torch_acc_dtype(x.dtype)
    dx, dy = torch.empty_like(x), torch.empty_like(y)
    blocks = triton.cdiv(C, cfg.block_c * cfg.steps) if T else 1
    # per C chunk partial sums [S, T, ...], added below (S = 1: already the result)
    dpost, dres = x.new_empty((blocks, T, n), dtype=f), x.new_empty((blocks, T, n, n), dtype=f)
    if T:
        acc = tl.float64 if x.dtype == torch.float64 else tl.float32
        np_ = max(16, next_pow2(n)) if cfg.dot else next_pow2(n)
        _post_bwd_kernel[(triton.cdiv(T, cfg.tokens), blocks)](
            x, y, post, res, dout.contiguous(), dx, dy, dpost, dres, T, n, C,
            DOT=cfg.dot, ACC=acc, NP=np_, BC=cfg.block_c, TOKENS=cfg.tokens, STEPS=cfg.steps,
            STAGES=cfg.stages, num_warps=cfg.num_warps)
    if blocks == 1:
        return dx, dy, dpost[0], dres[0]
    return dx, dy, dpost.sum(0), dres.sum(0)


# ----------------------------------------------------------------------------------------
# torch.library ops + autograd.Function
# ----------------------------------------------------------------------------------------
@torch.library.custom_op("mhc_triton::post_residual_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, y: torch.Tensor, post: torch.Tensor, res: torch.Tensor) -> torch.Tensor:
    return post_residual_fwd(x, y, post, res)


@_fwd_op.register_fake
def _(x, y, post, res):
    return torch.empty_like(x)


@torch.library.custom_op("mhc_triton::post_residual_bwd", mutates_args=())
def _bwd_op(x: torch.Tensor, y: torch.Tensor, post: torch.Tensor, res: torch.Tensor, dout: torch.Tensor
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    return post_residual_bwd(x, y, post, res, dout)


@_bwd_op.register_fake
def _(x, y, post, res, dout):
    f = torch_acc_dtype(x.dtype)
    return torch.empty_like(x), torch.empty_like(y), post.new_empty(post.shape, dtype=f), \
        res.new_empty(res.shape, dtype=f)


_bwd_op.register_autograd(first_order_only("post_residual"))


class PostResidualFunction(torch.autograd.Function):
    """(x [T, n, C], y [T, C], post [T, n], res [T, n, n]) -> out [T, n, C]."""

    @staticmethod
    def forward(ctx, x, y, post, res):
        ctx.save_for_backward(x, y, post, res)
        return call_launcher(_fwd_op, post_residual_fwd, x, y, post, res)

    @staticmethod
    def backward(ctx, dout):
        refuse_batched_grads("post_residual", dout)
        x, y, post, res = ctx.saved_tensors
        dx, dy, dpost, dres = call_launcher(_bwd_op, post_residual_bwd, x, y, post, res, dout)
        return dx, dy, dpost.to(post.dtype), dres.to(res.dtype)


def post_residual(x, y, post, res):
    """Triton `mhc_core.post_residual`: -> out [..., n, C] in x's dtype."""
    n, c, lead = post_residual_args(x, y, post, res)  # mhc_core's checks + triton_gate's, remembered
    flat = lambda a, *s: a.reshape(-1, *s).contiguous()  # noqa: E731
    args = flat(x, n, c), flat(y, c), flat(post, n), flat(res, n, n)
    out = post_residual_fwd(*args) if untracked(*args) else PostResidualFunction.apply(*args)
    return out.reshape(lead + (n, c))
