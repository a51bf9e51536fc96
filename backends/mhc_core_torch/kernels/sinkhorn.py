"""Sinkhorn-Knopp on-chip: one token's n x n matrix in registers, forward and exact backward.

Reference: `mhc_core.sinkhorn` (DESIGN §1; paper Eq. 8-9), which this file is tested against:

    M = softmax(L, -1) + eps;  M = M / (M.sum(-2) + eps)
    repeat iters - 1 times:    M = M / (M.sum(-1) + eps);  M = M / (M.sum(-2) + eps)

eps = 0 runs in the log domain, as the reference does, so underflowing entries never make
0/0. The `@triton.jit` helpers here are used by the coefficients kernel too; the standalone
`sinkhorn` op below exists so the Sinkhorn backward can be tested (and gradchecked) alone.

Tiles are [BT, R, R] (tokens, input stream i, output stream o) with R = max(4, next_pow2(n));
entries with i >= n or o >= n are held at 0 (log domain: a large negative number).

Backward: exact gradient of the unrolled iteration. Each step `M' = M / d`,
`d = M.sum(axis) + eps`, has `dM = (dM' - sum_axis(dM' * M')) / d`; the linear-domain
backward carries `H = dM * M` instead, `H = H' - sum_axis(H') * M'`, which needs only that
step's output (no division: dM' / d overflowed float32 for huge cotangents). Rather
than store 2*iters iterates per token (O(iters n^2) memory traffic, or registers Triton
cannot index at run time), the backward recomputes the
iterates from the logits for each round it unwinds: O(iters^2) half-steps on n^2 values
per token, bitwise the forward's iterates, no memory. At n = 4, iters = 20 that is about
50 kflop per token, small beside the 4*n*C*(n^2 + 2n) flops of the coefficient matmuls'
backward and the n*C elements each token streams; it runs in its own small kernel over
[T, n*n + 2n] floats (see coefficients.py), so it never stalls the pass over x.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from mhc_core import checks, namespace

from ..triton_gate import check_kernel_inputs
from ._common import call_launcher, cast_for_store, first_order_only, refuse_batched_grads, stream_pad

NEG = tl.constexpr(-1.0e30)  # "log 0" for padded entries: finite, so masked arithmetic never makes NaN


# ----------------------------------------------------------------------------------------
# On-chip helpers (tiles [BT, R, R]; `valid` is [1, R, R])
# ----------------------------------------------------------------------------------------
@triton.jit
def _softmax_rows(L, valid):
    """P = softmax over o (axis 2); padded entries 0, all-padded rows 0 (not 0/0)."""
    lm = tl.where(valid, L, NEG)
    e = tl.where(valid, tl.exp(lm - tl.max(lm, axis=2, keep_dims=True)), 0.0)
    s = tl.sum(e, axis=2, keep_dims=True)
    return e / tl.where(s > 0, s, 1.0)


@triton.jit
def _div_sum(M, eps, AXIS: tl.constexpr):
    """M / (M.sum(AXIS) + eps). eps > 0 here, so no 0/0."""
    return M / (tl.sum(M, axis=AXIS, keep_dims=True) + eps)


@triton.jit
def _h_bwd(H, M_out, valid, AXIS: tl.constexpr):
    """Through M_out = M / (M.sum(AXIS) + eps) for H = dL/dM_out * M_out: returns
    dL/dM * M = H - sum_AXIS(H) * M_out (no division by the denominator)."""
    H = H - tl.sum(H, axis=AXIS, keep_dims=True) * M_out
    return tl.where(valid, H, 0.0)


@triton.jit
def _log_norm(lg, valid, AXIS: tl.constexpr):
    """lg - logsumexp(lg, AXIS) over valid entries (padded entries stay NEG)."""
    lm = tl.where(valid, lg, NEG)
    mx = tl.max(lm, axis=AXIS, keep_dims=True)
    s = tl.sum(tl.where(valid, tl.exp(lm - mx), 0.0), axis=AXIS, keep_dims=True)
    return tl.where(valid, lm - mx - tl.log(tl.where(s > 0, s, 1.0)), NEG)


@triton.jit
def _log_norm_bwd(G, lg_out, valid, AXIS: tl.constexpr):
    """Gradient through lg_out = lg - logsumexp(lg, AXIS): G - softmax * sum(G)."""
    G = G - tl.where(valid, tl.exp(lg_out), 0.0) * tl.sum(G, axis=AXIS, keep_dims=True)
    return tl.where(valid, G, 0.0)


@triton.jit
def _lin_first(L, valid, eps):
    """Round 0 (linear): softmax rows + eps, then columns. Returns (P, M0, X0)."""
    P = _softmax_rows(L, valid)
    M0 = tl.where(valid, P + eps, 0.0)
    return P, M0, _div_sum(M0, eps, 1)


@triton.jit
def _lin_rounds(X, eps, rounds):
    """`rounds` more rounds of rows-then-columns normalisation."""
    for _ in range(rounds):
        X = _div_sum(_div_sum(X, eps, 2), eps, 1)
    return X


@triton.jit
def _log_first(L, valid):
    return _log_norm(_log_norm(L, valid, 2), valid, 1)


@triton.jit
def _log_rounds(X, valid, rounds):
    for _ in range(rounds):
        X = _log_norm(_log_norm(X, valid, 2), valid, 1)
    return X


@triton.jit
def sinkhorn_tile(L, valid, iters, eps, LOG: tl.constexpr):
    """Forward: logits tile [BT, R, R] -> doubly-stochastic tile (padded entries 0)."""
    if LOG:
        X = _log_rounds(_log_first(L, valid), valid, iters - 1)
        return tl.where(valid, tl.exp(X), 0.0)
    else:
        _P, _M0, X = _lin_first(L, valid, eps)
        return _lin_rounds(X, eps, iters - 1)


@triton.jit
def sinkhorn_tile_bwd(L, G, valid, iters, eps, LOG: tl.constexpr):
    """Backward: dLoss/dL for dLoss/dM = G, recomputing the iterates (see module doc)."""
    G = tl.where(valid, G, 0.0)
    if LOG:
        X0 = _log_first(L, valid)
        G = G * tl.where(valid, tl.exp(_log_rounds(X0, valid, iters - 1)), 0.0)  # M = exp(X)
        for rr in range(0, iters - 1):  # unwind round r = iters-1 .. 1
            Xr = _log_rounds(X0, valid, iters - 2 - rr)
            Y = _log_norm(Xr, valid, 2)
            Z = _log_norm(Y, valid, 1)
            G = _log_norm_bwd(G, Z, valid, 1)
            G = _log_norm_bwd(G, Y, valid, 2)
        Y = _log_norm(L, valid, 2)
        G = _log_norm_bwd(G, X0, valid, 1)
        G = _log_norm_bwd(G, Y, valid, 2)
        return G
    else:
        # carries H = G * M (G: the gradient w.r.t. a step's output M) instead of G, as
        # mhc_core.sinkhorn_backward does: through M' = M / d it is H = H' - sum(H') M', with
        # no division by d, which overflowed float32 where dres is huge (|x| ~ 3e37) and d small
        P, M0, X0 = _lin_first(L, valid, eps)
        H = G * _lin_rounds(X0, eps, iters - 1)
        for rr in range(0, iters - 1):
            Xr = _lin_rounds(X0, eps, iters - 2 - rr)
            Y = _div_sum(Xr, eps, 2)
            Z = _div_sum(Y, eps, 1)
            H = _h_bwd(H, Z, valid, 1)
            H = _h_bwd(H, Y, valid, 2)
        H = _h_bwd(H, X0, valid, 1)  # first column step: now H = dL/dM0 * M0, M0 = P + eps
        # through the softmax: P (g - sum(g P)) with g = H / M0, written with q = P / M0 in [0, 1]
        QH = tl.where(valid, P / tl.where(valid, M0, 1.0), 0.0) * H
        return QH - P * tl.sum(QH, axis=2, keep_dims=True)


# ----------------------------------------------------------------------------------------
# Standalone op: kernels -> launchers -> autograd.Function
# ----------------------------------------------------------------------------------------
@triton.jit
def _tile_offsets(pid, T, n, BT: tl.constexpr, R: tl.constexpr):
    t = pid.to(tl.int64) * BT + tl.arange(0, BT)[:, None, None]  # int64: t * n * n offsets
    i = tl.arange(0, R)[None, :, None]
    o = tl.arange(0, R)[None, None, :]
    valid = (i < n) & (o < n)
    return t * n * n + i * n + o, (t < T) & valid, valid


@triton.jit
def _sinkhorn_fwd_kernel(L_ptr, M_ptr, T, n, iters, eps, LOG: tl.constexpr,
                         ACC: tl.constexpr, BT: tl.constexpr, R: tl.constexpr):
    offs, mask, valid = _tile_offsets(tl.program_id(0), T, n, BT, R)
    L = tl.load(L_ptr + offs, mask=mask, other=0.0).to(ACC)
    tl.store(M_ptr + offs, cast_for_store(sinkhorn_tile(L, valid, iters, eps, LOG), M_ptr), mask=mask)


@triton.jit
def _sinkhorn_bwd_kernel(L_ptr, G_ptr, dL_ptr, T, n, iters, eps, LOG: tl.constexpr,
                         ACC: tl.constexpr, BT: tl.constexpr, R: tl.constexpr):
    offs, mask, valid = _tile_offsets(tl.program_id(0), T, n, BT, R)
    L = tl.load(L_ptr + offs, mask=mask, other=0.0).to(ACC)
    G = tl.load(G_ptr + offs, mask=mask, other=0.0).to(ACC)
    dL = sinkhorn_tile_bwd(L, G, valid, iters, eps, LOG)
    tl.store(dL_ptr + offs, cast_for_store(dL, dL_ptr), mask=mask)


def _launch(kernel, T, n, *args):
    R = stream_pad(n)
    BT = max(1, min(16, 256 // (R * R)))  # about 256 values per program
    kernel[(triton.cdiv(T, BT),)](*args, BT=BT, R=R)


def sinkhorn_fwd(logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    """logits [T, n, n] contiguous -> M [T, n, n], same dtype, computed in float32 (f64: f64)."""
    T, n = logits.shape[0], logits.shape[-1]
    out = torch.empty_like(logits)
    acc = tl.float64 if logits.dtype == torch.float64 else tl.float32
    if T:
        _launch(_sinkhorn_fwd_kernel, T, n, logits, out, T, n, iters, eps, eps == 0.0, acc)
    return out


def sinkhorn_bwd(logits, grad, iters: int, eps: float) -> torch.Tensor:
    T, n = logits.shape[0], logits.shape[-1]
    d_logits = torch.empty_like(logits)
    acc = tl.float64 if logits.dtype == torch.float64 else tl.float32
    if T:
        _launch(_sinkhorn_bwd_kernel, T, n, logits, grad.contiguous(), d_logits, T, n, iters, eps,
                eps == 0.0, acc)
    return d_logits


@torch.library.custom_op("mhc_triton::sinkhorn_fwd", mutates_args=())
def _sinkhorn_fwd_op(logits: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    return sinkhorn_fwd(logits, iters, eps)


@_sinkhorn_fwd_op.register_fake
def _(logits, iters, eps):
    return torch.empty_like(logits)


@torch.library.custom_op("mhc_triton::sinkhorn_bwd", mutates_args=())
def _sinkhorn_bwd_op(logits: torch.Tensor, grad: torch.Tensor, iters: int, eps: float) -> torch.Tensor:
    return sinkhorn_bwd(logits, grad, iters, eps)


@_sinkhorn_bwd_op.register_fake
def _(logits, grad, iters, eps):
    return torch.empty_like(logits)


_sinkhorn_bwd_op.register_autograd(first_order_only("sinkhorn"))


class SinkhornFunction(torch.autograd.Function):
    """logits [T, n, n] -> doubly-stochastic [T, n, n]; gradient by on-chip recompute."""

    @staticmethod
    def forward(ctx, logits, iters, eps):
        ctx.save_for_backward(logits)
        ctx.iters, ctx.eps = iters, eps
        return call_launcher(_sinkhorn_fwd_op, sinkhorn_fwd, logits, iters, eps)

    @staticmethod
    def backward(ctx, grad):
        refuse_batched_grads("sinkhorn", grad)
        (logits,) = ctx.saved_tensors
        return call_launcher(_sinkhorn_bwd_op, sinkhorn_bwd, logits, grad, ctx.iters, ctx.eps), None, None


def sinkhorn(logits: torch.Tensor, *, iters: int = 20, eps: float = 1e-6) -> torch.Tensor:
    """Triton `mhc_core.sinkhorn`: logits [..., n, n] -> [..., n, n] (n <= MAX_STREAMS)."""
    shape, iters, eps = checks.sinkhorn_inputs(namespace(logits), logits, iters, eps)
    check_kernel_inputs("sinkhorn", shape[-1], logits, names=("logits",))
    flat = logits.reshape(-1, shape[-1], shape[-1]).contiguous()
    return SinkhornFunction.apply(flat, iters, eps).reshape(shape)
