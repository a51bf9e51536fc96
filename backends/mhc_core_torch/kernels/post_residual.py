"""Post + residual: out[o] = sum_i res[i, o] x[i] + post[o] y (paper Eq. 3, H_res x + H_post^T y).

Reference: `mhc_core.post_residual` (DESIGN §1 step 4), tested against it. x [T, n, C],
y [T, C], post [T, n], res [T, n, n] (res[i, o]: stream i -> o) -> out [T, n, C] in x's
dtype, float32 accumulation.

Forward: grid (tokens, C blocks); reads x and y once, writes out once, one input stream
at a time (C block ~4096 / n wide at any n).
Backward: grid over tokens; one sweep over C reads x, y and dout once, writes dx and dy
once, and accumulates the coefficient gradients in registers (n >= 5: as dots, so the C
block stays wide at n = 16):
    dx[i] = sum_o res[i, o] dout[o]      dy = sum_o post[o] dout[o]
    dres[i, o] = <x[i], dout[o]>         dpost[o] = <y, dout[o]>
Ideal traffic per token: forward (2n + 1) C elements, backward (3n + 2) C.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checked import post_residual_args
from ._common import call_launcher, cast_for_store, first_order_only, next_pow2, torch_acc_dtype, untracked


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
def _post_bwd_kernel(x_ptr, y_ptr, post_ptr, res_ptr, dout_ptr, dx_ptr, dy_ptr, dpost_ptr, dres_ptr,
                     n, C, DOT: tl.constexpr, ACC: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr):
    """DOT = False (n <= 4): the stream sums as [NP, NP, BC] products, reduced once after the
    loop. DOT = True (n >= 5, NP >= 16): as [NP, NP] x [NP, BC] dots (exact float32 FMAs,
    input_precision ieee), so the live tiles are [NP, BC] and BC stays 4096 / NP wide."""
    t = tl.program_id(0).to(tl.int64)  # int64: t * n * C passes 2^31 at long T
    i = tl.arange(0, NP)
    imask = i < n
    mres = imask[:, None] & imask[None, :]
    w = tl.load(post_ptr + t * n + i, mask=imask, other=0.0).to(ACC)
    res = tl.load(res_ptr + t * n * n + i[:, None] * n + i[None, :], mask=mres, other=0.0).to(ACC)
    dw = tl.zeros((NP, BC), ACC)        # elementwise partial products, reduced once after the loop
    if DOT:
        dres = tl.zeros((NP, NP), ACC)
    else:
        dres = tl.zeros((NP, NP, BC), ACC)
    x_tok, g_tok, dx_tok = x_ptr + t * n * C, dout_ptr + t * n * C, dx_ptr + t * n * C  # int64 bases
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cmask = c < C
        m2 = imask[:, None] & cmask[None, :]
        offs = i[:, None] * C + c[None, :]
        x = tl.load(x_tok + offs, mask=m2, other=0.0).to(ACC)            # [NP(i), BC]
        g = tl.load(g_tok + offs, mask=m2, other=0.0).to(ACC)            # [NP(o), BC]
        y = tl.load(y_ptr + t * C + c, mask=cmask, other=0.0).to(ACC)    # [BC]
        if DOT:
            dx = tl.dot(res, g, input_precision="ieee")                  # [NP(i), BC]
            dres += tl.dot(x, tl.trans(g), input_precision="ieee")       # [NP(i), NP(o)]
        else:
            dx = tl.sum(res[:, :, None] * g[None, :, :], axis=1)         # [NP(i), BC]
            dres += x[:, None, :] * g[None, :, :]
        dy = tl.sum(w[:, None] * g, axis=0)                              # [BC]
        tl.store(dx_tok + offs, cast_for_store(dx, dx_ptr), mask=m2)
        tl.store(dy_ptr + t * C + c, cast_for_store(dy, dy_ptr), mask=cmask)
        dw += g * y[None, :]
    tl.store(dpost_ptr + t * n + i, tl.sum(dw, axis=1), mask=imask)
    if DOT:
        dres_out = dres
    else:
        dres_out = tl.sum(dres, axis=2)
    tl.store(dres_ptr + t * n * n + i[:, None] * n + i[None, :], dres_out, mask=mres)


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------
def _bwd_layout(n: int, C: int) -> tuple[bool, int, int]:
    """(DOT, NP, BC) of the backward. n <= 4: [NP, NP, BC] products, BC = 4096 / NP^2
    (256 at n = 4). n >= 5: dots over a stream tile padded to NP >= 16 (tl.dot's minimum),
    BC = 1024 / NP (64 at n = 16, where the product form had BC = 16; ~145 registers,
    3 CTAs/SM, no spill on sm_80 / sm_90: benchmarks/results/compile_report.md)."""
    np_ = next_pow2(n)
    if np_ <= 4:
        return False, np_, max(16, min(next_pow2(C), 4096 // (np_ * np_)))
    np_ = max(16, np_)
    return True, np_, max(16, min(next_pow2(C), 1024 // np_))


def _block_c_fwd(n: int, C: int) -> int:
    # the forward's live tile is [NP, BC] (one input stream at a time): ~4096 values
    return max(16, min(next_pow2(C), 4096 // next_pow2(n)))


def post_residual_fwd(x, y, post, res):
    """x [T, n, C], y [T, C], post [T, n], res [T, n, n] (contiguous) -> out [T, n, C], x's dtype."""
    T, n, C = x.shape
    out = torch.empty_like(x)
    if T:
        acc = tl.float64 if x.dtype == torch.float64 else tl.float32
        BC = _block_c_fwd(n, C)
        _post_fwd_kernel[(T, triton.cdiv(C, BC))](x, y, post, res, out, n, C, ACC=acc, NP=next_pow2(n), BC=BC)
    return out


def post_residual_bwd(x, y, post, res, dout):
    """(dx in x's dtype, dy in y's dtype, dpost [T, n], dres [T, n, n] in the accumulation dtype)."""
    T, n, C = x.shape
    f = torch_acc_dtype(x.dtype)
    dx, dy = torch.empty_like(x), torch.empty_like(y)
    dpost, dres = x.new_empty((T, n), dtype=f), x.new_empty((T, n, n), dtype=f)
    if T:
        acc = tl.float64 if x.dtype == torch.float64 else tl.float32
        dot, np_, bc = _bwd_layout(n, C)
        _post_bwd_kernel[(T,)](x, y, post, res, dout.contiguous(), dx, dy, dpost, dres, n, C,
                               DOT=dot, ACC=acc, NP=np_, BC=bc)
    return dx, dy, dpost, dres


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
