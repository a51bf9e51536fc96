"""The Triton-backed mhc_core functions, same names and signatures as mhc_core's.

    coefficients, pre_aggregate, post_residual, sinkhorn   (one fused kernel file each)
    step(x, f, phi, bias, alpha, *, variant, **cfg)         the whole mHC step (step.py: one dx buffer)

Each takes torch tensors on CUDA (or on the CPU with TRITON_INTERPRET=1) and is
differentiable (autograd.Function around torch.library custom ops, so torch.compile calls
the kernels as opaque ops without a graph break).
"""
from __future__ import annotations

from mhc_core import checks, residual_step
from mhc_core.config import MHCConfig

from .coefficients import coefficients
from .post_residual import post_residual
from .pre_aggregate import pre_aggregate
from .sinkhorn import sinkhorn
from .step import step as _fused_step

_DEFAULT = MHCConfig()

__all__ = ["coefficients", "post_residual", "pre_aggregate", "sinkhorn", "step"]


def step(x, f, phi=None, bias=None, alpha=None, *, variant="mhc", iters=_DEFAULT.iters,
         rms_eps=_DEFAULT.rms_eps, pre_eps=_DEFAULT.pre_eps, sinkhorn_eps=_DEFAULT.sinkhorn_eps,
         post_scale=_DEFAULT.post_scale):
    """`mhc_core.step` on the kernels: x [..., n, C] -> [..., n, C]. 'residual' (n = 1) has
    nothing to fuse and runs mhc_core.residual_step; 'mhc' / 'hc' run step.py, whose
    backward accumulates dx in one buffer inside the kernels."""
    if checks.variant(variant) == "residual":
        return residual_step(x, f)
    return _fused_step(x, f, phi, bias, alpha, variant=variant, iters=iters, rms_eps=rms_eps, pre_eps=pre_eps,
                       sinkhorn_eps=sinkhorn_eps, post_scale=post_scale)
