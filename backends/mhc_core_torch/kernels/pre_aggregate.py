"""Pre-aggregate: h = sum_i pre[i] x[i] (paper Eq. 3, H_pre x), forward and backward.

Reference: `mhc_core.pre_aggregate` (DESIGN §1 step 2), tested against it. x [T, n, C],
pre [T, n] -> h [T, C] in x's dtype, float32 accumulation.

Forward: grid (tokens, C blocks); each program reads its [n, BC] slab of x once.
Backward: grid over tokens; one sweep over C reads x and dh once, writes dx once, and
accumulates dpre[i] = sum_c x[i, c] dh[c] in registers:
    dx[i, c] = pre[i] dh[c]          dpre[i] = <x[i], dh>
Ideal traffic per token: forward (n + 1) C elements, backward (2n + 1) C.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ._checked import pre_aggregate_args
from ._common import (call_launcher, cast_for_store, first_order_only, next_pow2, refuse_batched_grads, torch_acc_dtype,
                      untracked)


# ----------------------------------------------------------------------------------------
# Kernels
# ----------------------------------------------------------------------------------------
@triton.jit
def _pre_fwd_kernel(x_ptr, pre_ptr, h_ptr, n, C, ACC: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)  # int64: t * n * C passes 2^31 at long T
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    i = tl.arange(0, NP)
    cmask, imask = c < C, i < n
    x = tl.load(x_ptr + t * n * C + i[:, None] * C + c[None, :], mask=imask[:, None] & cmask[None, :], other=0.0)
    w = tl.load(pre_ptr + t * n + i, mask=imask, other=0.0).to(ACC)
    h = tl.sum(w[:, None] * x.to(ACC), axis=0)
    tl.store(h_ptr + t * C + c, cast_for_store(h, h_ptr), mask=cmask)


@triton.jit
def _pre_bwd_kernel(x_ptr, pre_ptr, dh_ptr, dx_ptr, dpre_ptr, n, C,
                    WRITE_DX: tl.constexpr, ACC: tl.constexpr, NP: tl.constexpr, BC: tl.constexpr):
    t = tl.program_id(0).to(tl.int64)  # int64: t * n * C passes 2^31 at long T
    i = tl.arange(0, NP)
    imask = i < n
    if WRITE_DX:
        w = tl.load(pre_ptr + t * n + i, mask=imask, other=0.0).to(ACC)
    dw = tl.zeros((NP, BC), ACC)  # elementwise partial products, reduced once after the loop
    for c0 in range(0, C, BC):
        c = c0 + tl.arange(0, BC)
        cmask = c < C
        m2 = imask[:, None] & cmask[None, :]
        offs = t * n * C + i[:, None] * C + c[None, :]
        x = tl.load(x_ptr + offs, mask=m2, other=0.0).to(ACC)
        dh = tl.load(dh_ptr + t * C + c, mask=cmask, other=0.0).to(ACC)
        if WRITE_DX:  # else the caller adds pre[i] dh into its own dx buffer (ops.step)
            tl.store(dx_ptr + offs, cast_for_store(w[:, None] * dh[None, :], dx_ptr), mask=m2)
        dw += x * dh[None, :]
    tl.store(dpre_ptr + t * n + i, tl.sum(dw, axis=1), mask=imask)


# ----------------------------------------------------------------------------------------
# Launchers
# ----------------------------------------------------------------------------------------
def _block_c(n: int, C: int) -> int:
    # about 4096 elements of x per tile; at least 16 wide
    return max(16, min(next_pow2(C), 4096 // next_pow2(n)))


def pre_aggregate_fwd(x: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """x [T, n, C], pre [T, n] (contiguous) -> h [T, C] in x's dtype."""
    T, n, C = x.shape
    h = x.new_empty((T, C))
    if T:
        acc = tl.float64 if x.dtype == torch.float64 else tl.float32
        BC = _block_c(n, C)
        _pre_fwd_kernel[(T, triton.cdiv(C, BC))](x, pre, h, n, C, ACC=acc, NP=next_pow2(n), BC=BC)
    return h


def pre_aggregate_bwd(x, pre, dh):
    """(dx [T, n, C] in x's dtype, dpre [T, n] in the accumulation dtype)."""
    T, n, C = x.shape
    dx = torch.empty_like(x)
    dpre = x.new_empty((T, n), dtype=torch_acc_dtype(x.dtype))
    if T:
        acc = tl.float64 if x.dtype == torch.float64 else tl.float32
        _pre_bwd_kernel[(T,)](x, pre, dh.contiguous(), dx, dpre, n, C, WRITE_DX=True, ACC=acc,
                              NP=next_pow2(n), BC=_block_c(n, C))
    return dx, dpre


def pre_aggregate_dpre(x, dh):
    """dpre [T, n] = <x[t, i], dh[t]> alone (accumulation dtype): reads x and dh, writes no dx."""
    T, n, C = x.shape
    dpre = x.new_empty((T, n), dtype=torch_acc_dtype(x.dtype))
    if T:
        acc = tl.float64 if x.dtype == torch.float64 else tl.float32
        _pre_bwd_kernel[(T,)](x, x, dh.contiguous(), x, dpre, n, C, WRITE_DX=False, ACC=acc,
                              NP=next_pow2(n), BC=_block_c(n, C))
    return dpre


# ----------------------------------------------------------------------------------------
# torch.library ops + autograd.Function
# ----------------------------------------------------------------------------------------
@torch.library.custom_op("mhc_triton::pre_aggregate_fwd", mutates_args=())
def _fwd_op(x: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    return pre_aggregate_fwd(x, pre)


@_fwd_op.register_fake
def _(x, pre):
    return x.new_empty((x.shape[0], x.shape[2]))


@torch.library.custom_op("mhc_triton::pre_aggregate_bwd", mutates_args=())
def _bwd_op(x: torch.Tensor, pre: torch.Tensor, dh: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    return pre_aggregate_bwd(x, pre, dh)


@_bwd_op.register_fake
def _(x, pre, dh):
    return torch.empty_like(x), x.new_empty(pre.shape, dtype=torch_acc_dtype(x.dtype))


_bwd_op.register_autograd(first_order_only("pre_aggregate"))


class PreAggregateFunction(torch.autograd.Function):
    """(x [T, n, C], pre [T, n]) -> h [T, C]."""

    @staticmethod
    def forward(ctx, x, pre):
        ctx.save_for_backward(x, pre)
        return call_launcher(_fwd_op, pre_aggregate_fwd, x, pre)

    @staticmethod
    def backward(ctx, dh):
        refuse_batched_grads("pre_aggregate", dh)
        x, pre = ctx.saved_tensors
        dx, dpre = call_launcher(_bwd_op, pre_aggregate_bwd, x, pre, dh)
        return dx, dpre.to(pre.dtype)


def pre_aggregate(x: torch.Tensor, pre: torch.Tensor) -> torch.Tensor:
    """Triton `mhc_core.pre_aggregate`: x [..., n, C], pre [..., n] -> h [..., C] (x's dtype)."""
    n, c, lead = pre_aggregate_args(x, pre)  # mhc_core's checks + triton_gate's, remembered
    x, pre = x.reshape(-1, n, c).contiguous(), pre.reshape(-1, n).contiguous()
    h = pre_aggregate_fwd(x, pre) if untracked(x, pre) else PreAggregateFunction.apply(x, pre)
    return h.reshape(lead + (c,))
