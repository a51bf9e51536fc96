"""The whole mHC step on the kernels, with one dx buffer in backward.

    out = post_residual(x, f(pre_aggregate(x, pre)), post, res),  (pre, post, res) = coefficients(x)

x feeds three kernels, so composed from the three autograd Functions its gradient would
be three [T, n, C] tensors summed by torch (two extra passes over the largest tensor).
Here x enters a single Function, `StepInFunction` (coefficients + pre_aggregate), which
also returns x itself (a view) for post_residual. Autograd then hands StepInFunction's
backward the post_residual term dx_post as one more incoming gradient, and its x-backward
kernel writes

    dx = dx_post + pre[i] * dh + (coefficient term)      (coefficients.py, _x_bwd_kernel)

in the pass that reads x once more for dphi: no torch elementwise op over [T, n, C].
Backward kernels, in order: post_residual (dx_post, dy, dpost, dres); the layer; dpre =
<x[i], dh> (pre_aggregate.py, no dx written); the gate backward; the x backward above.
"""
from __future__ import annotations

from typing import Optional

import torch

from mhc_core import checks
from mhc_core.config import MHCConfig

from ._checked import coefficient_args
from ._common import call_launcher, first_order_only, refuse_batched_grads, untracked
from .coefficients import _fwd_op as _coefficients_fwd_op
from .coefficients import coefficients_bwd, coefficients_fwd
from .post_residual import post_residual
from .pre_aggregate import _fwd_op as _pre_aggregate_fwd_op
from .pre_aggregate import pre_aggregate_dpre, pre_aggregate_fwd

_DEFAULT = MHCConfig()


def _step_in_bwd(x, phi, bias, alpha, z, rs, pre, dh, dpost, dres, dx_in, hc, iters, sk_eps, post_scale):
    """(dx [T, n, C], dphi, dbias, dalpha): dx = dx_in + pre[i] dh + the coefficients' term."""
    dpre = torch.zeros_like(pre) if dh is None else pre_aggregate_dpre(x, dh)
    return coefficients_bwd(x, phi, bias, alpha, z, rs, dpre, dpost, dres, hc, iters, sk_eps, post_scale,
                            dx_in=dx_in, pre=pre, dh=dh)


@torch.library.custom_op("mhc_triton::step_in_bwd", mutates_args=())
def _step_in_bwd_op(x: torch.Tensor, phi: torch.Tensor, bias: torch.Tensor, alpha: torch.Tensor,
                    z: torch.Tensor, rs: torch.Tensor, pre: torch.Tensor, dh: Optional[torch.Tensor],
                    dpost: torch.Tensor, dres: torch.Tensor, dx_in: Optional[torch.Tensor], hc: bool,
                    iters: int, sk_eps: float, post_scale: float
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`_step_in_bwd` as one op for torch.compile."""
    return _step_in_bwd(x, phi, bias, alpha, z, rs, pre, dh, dpost, dres, dx_in, hc, iters, sk_eps, post_scale)


@_step_in_bwd_op.register_fake
def _(x, phi, bias, alpha, z, rs, pre, dh, dpost, dres, dx_in, hc, iters, sk_eps, post_scale):
    return torch.empty_like(x), phi.new_empty(phi.shape, dtype=z.dtype), \
        bias.new_empty(bias.shape, dtype=z.dtype), alpha.new_empty(alpha.shape, dtype=z.dtype)


_step_in_bwd_op.register_autograd(first_order_only("step"))


class StepInFunction(torch.autograd.Function):
    """(x [T, n, C], phi, bias, alpha) -> (h [T, C], post [T, n], res [T, n, n], x as a view).

    The returned view of x is what post_residual reads, so post_residual's dx arrives here
    as the gradient of that output and is added inside the x-backward kernel."""

    @staticmethod
    def forward(ctx, x, phi, bias, alpha, hc, iters, rms_eps, pre_eps, sk_eps, post_scale):
        pre, post, res, z, rs = call_launcher(_coefficients_fwd_op, coefficients_fwd, x, phi, bias, alpha, hc, iters,
                                              rms_eps, pre_eps, sk_eps, post_scale)
        h = call_launcher(_pre_aggregate_fwd_op, pre_aggregate_fwd, x, pre)
        ctx.save_for_backward(x, phi, bias, alpha, z, rs, pre)
        ctx.cfg = (hc, iters, sk_eps, post_scale)
        ctx.set_materialize_grads(False)  # unused outputs arrive as None: no zero [T, n, C] tensor
        return h, post, res, x.view_as(x)

    @staticmethod
    def backward(ctx, dh, dpost, dres, dx_in):
        refuse_batched_grads("step", dh, dpost, dres, dx_in)
        x, phi, bias, alpha, z, rs, pre = ctx.saved_tensors
        T, n, _ = x.shape
        dpost = z.new_zeros((T, n)) if dpost is None else dpost.contiguous()
        dres = z.new_zeros((T, n, n)) if dres is None else dres.contiguous()
        dh = None if dh is None else dh.contiguous()
        dx_in = None if dx_in is None else dx_in.contiguous()
        dx, dphi, dbias, dalpha = call_launcher(_step_in_bwd_op, _step_in_bwd, x, phi, bias, alpha, z, rs, pre, dh,
                                                dpost, dres, dx_in, *ctx.cfg)
        return dx, dphi.to(phi.dtype), dbias.to(bias.dtype), dalpha.to(alpha.dtype), *([None] * 6)


def step(x, f, phi=None, bias=None, alpha=None, *, variant="mhc", iters=_DEFAULT.iters,
         rms_eps=_DEFAULT.rms_eps, pre_eps=_DEFAULT.pre_eps, sinkhorn_eps=_DEFAULT.sinkhorn_eps,
         post_scale=_DEFAULT.post_scale):
    """`mhc_core.step` on the kernels ('mhc' / 'hc'): x [..., n, C] -> [..., n, C], with f
    mapping h [..., C] -> y [..., C]. Same numbers as composing ops.coefficients,
    pre_aggregate and post_residual; backward writes dx once (module docstring)."""
    # mhc_core's checks + triton_gate's, remembered per signature
    n, c, variant, cfg = coefficient_args("step", x, phi, bias, alpha, variant, iters, rms_eps, pre_eps, sinkhorn_eps,
                                          post_scale)
    checks.layer(f)  # before any launch: a non-callable f is a TypeError naming f, as in mhc_core.step
    lead = tuple(x.shape[:-2])
    settings = (variant == "hc", *(cfg[k] for k in checks.CONFIG_FIELDS))
    args = (x.reshape(-1, n, c).contiguous(), phi, bias, alpha, *settings)
    if untracked(*args[:4]):  # no graph to record (inference): the launchers without the Function
        pre, post, res, _, _ = coefficients_fwd(*args)
        h, x_again = pre_aggregate_fwd(args[0], pre), args[0]
    else:
        h, post, res, x_again = StepInFunction.apply(*args)
    y = f(h.reshape(lead + (c,)))
    checks.layer_output(x, y)
    return post_residual(x_again.reshape(lead + (n, c)), y, post.reshape(lead + (n,)), res.reshape(lead + (n, n)))
