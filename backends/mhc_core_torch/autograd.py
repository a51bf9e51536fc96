"""Autograd glue: mhc_core's coefficients as one `torch.autograd.Function` node.

    pre [..., n], post [..., n], res [..., n, n] = Coefficients.apply(x [..., n, C], phi, bias, alpha, ...)

Forward and backward are `mhc_core.coefficients_forward` / `coefficients_backward` (the
math and its derivative, written once on the array API); this file only registers them,
so autograd records one node instead of the ~150 small ops of the projection, the gates
and 20 Sinkhorn rounds.

Where the arrays run. The coefficient math is dozens of ops on tiny [..., n, n] tensors,
so on the CPU its cost is per-op dispatch, which numpy's is several times smaller than
eager torch's. Eager CPU calls therefore run the same mhc_core functions on numpy views
of the tensors (zero-copy; float32 or float64, the compute dtype), unless x is large
(then torch's multi-threaded kernels win). Under `torch.compile` (and on any other
device) they run on torch tensors, so the graph is traced and fused as usual.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch.autograd.function import once_differentiable

import mhc_core
from mhc_core import checks
from mhc_core.coefficients import coefficients_backward, coefficients_forward

# Eager CPU inputs with at most this many elements run their coefficient math on numpy.
NUMPY_MAX_ELEMENTS = 1 << 20
_NUMPY_OPS = mhc_core.namespace(np.zeros(1))


def _runs_on_numpy(x: torch.Tensor) -> bool:
    return x.device.type == "cpu" and x.numel() <= NUMPY_MAX_ELEMENTS and not torch.compiler.is_compiling()


def _np(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    return t.detach().to(dtype).numpy()


class Coefficients(torch.autograd.Function):
    """(pre, post, res) of `mhc_core.coefficients`, with `mhc_core.coefficients_backward`
    as the backward. `cfg`: iters, rms_eps, pre_eps, sinkhorn_eps, post_scale."""

    @staticmethod
    def forward(ctx, x, phi, bias, alpha, variant: str, cfg: dict):
        ctx.variant, ctx.eps, ctx.post_scale = variant, cfg["sinkhorn_eps"], cfg["post_scale"]
        ctx.dtypes = (x.dtype, phi.dtype, bias.dtype, alpha.dtype)
        ctx.on_numpy = _runs_on_numpy(x)
        if ctx.on_numpy:
            cdt = torch.float64 if x.dtype == torch.float64 else torch.float32
            ctx.cdt = cdt
            outs, saved = coefficients_forward(_NUMPY_OPS, *(_np(t, cdt) for t in (x, phi, bias, alpha)),
                                               variant=variant, **cfg)
            ctx.saved_numpy = saved
            return tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in outs)
        outs, saved = coefficients_forward(mhc_core.namespace(x), x, phi, bias, alpha, variant=variant, **cfg)
        ctx.save_for_backward(*saved)
        return outs

    @staticmethod
    @once_differentiable
    def backward(ctx, dpre, dpost, dres):
        kw = {"variant": ctx.variant, "sinkhorn_eps": ctx.eps, "post_scale": ctx.post_scale}
        if ctx.on_numpy:
            cots = (_np(g, ctx.cdt) for g in (dpre, dpost, dres))
            grads = [torch.from_numpy(np.ascontiguousarray(g))
                     for g in coefficients_backward(_NUMPY_OPS, ctx.saved_numpy, *cots, **kw)]
        else:
            grads = coefficients_backward(mhc_core.namespace(dpre), ctx.saved_tensors, dpre, dpost, dres, **kw)
        return (*(g.to(dt) for g, dt in zip(grads, ctx.dtypes)), None, None)


def coefficients(x, phi, bias, alpha, *, variant: str = "mhc", **cfg):
    """`mhc_core.coefficients` (same checks, same numbers) recorded as one autograd node."""
    ops = mhc_core.namespace(x, phi, bias, alpha)
    n, c = checks.stream_input(ops, x)
    checks.mixing_params(ops, phi, bias, alpha, n, c)
    variant = checks.variant(variant)
    if variant == "residual":
        raise ValueError("variant 'residual' has no coefficients; use residual_step")
    full = {**mhc_core.MHCConfig().as_dict(), **cfg}
    mhc_core.MHCConfig(**full)  # validates iters and the eps / scale values
    return Coefficients.apply(x, phi, bias, alpha, variant, full)


def step(x, f: Callable, phi=None, bias=None, alpha=None, *, variant: str = "mhc", **cfg):
    """`mhc_core.step` with the coefficients as one autograd node (see `Coefficients`);
    pre-aggregate and post + residual are mhc_core's (two matmuls autograd handles).
    x [..., n, C] -> [..., n, C]."""
    if checks.variant(variant) == "residual":
        return mhc_core.residual_step(x, f)
    checks.layer(f)
    pre, post, res = coefficients(x, phi, bias, alpha, variant=variant, **cfg)
    y = f(mhc_core.pre_aggregate(x, pre))
    return mhc_core.post_residual(x, y, post, res)
