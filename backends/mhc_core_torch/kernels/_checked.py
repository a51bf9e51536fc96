"""The argument checks of the kernel entry points (ops.py's functions), each remembered
per call signature (`triton_gate.passed_checks`): mhc_core's array checks, then whether
the kernels run on these tensors here (`triton_gate.check_kernel_inputs`).

    coefficient_args(op, x, phi, bias, alpha, variant, iters, rms_eps, pre_eps, sinkhorn_eps,
                     post_scale) -> (n, C, variant, settings)     x [..., n, C]
    pre_aggregate_args(x, pre)                -> (n, C, lead)     pre [..., n]
    post_residual_args(x, y, post, res)       -> (n, C, lead)     y [..., C], res [..., n, n]

A repeated call with the same shapes, dtypes, devices and settings costs one dict lookup
instead of ~20 us of Python; anything new (or wrong) runs the full checks.
"""
from __future__ import annotations

from mhc_core import checks, namespace

from ..triton_gate import check_kernel_inputs, passed_checks


@passed_checks
def coefficient_args(op, x, phi, bias, alpha, variant, iters, rms_eps, pre_eps, sinkhorn_eps, post_scale):
    """(n, C, variant, settings dict) for a coefficients-computing kernel entry `op`
    ('coefficients' or 'step'); 'mhc-lite' (no kernel) is a ValueError."""
    n, c, variant, cfg = checks.coefficient_inputs(namespace(x, phi, bias, alpha), x, phi, bias, alpha, variant, dict(
        iters=iters, rms_eps=rms_eps, pre_eps=pre_eps, sinkhorn_eps=sinkhorn_eps, post_scale=post_scale))
    if variant == "mhc-lite":
        raise ValueError(f"{op}: variant 'mhc-lite' has no Triton kernel; use impl='reference'"
                         + (" (mhc_core.coefficients)" if op == "coefficients" else ""))
    check_kernel_inputs(op, n, x, phi, bias, alpha, names=("x", "phi", "bias", "alpha"))
    return n, c, variant, cfg


@passed_checks
def pre_aggregate_args(x, pre):
    n, c, lead = checks.pre_aggregate_inputs(namespace(x, pre), x, pre)
    check_kernel_inputs("pre_aggregate", n, x, pre, names=("x", "pre"))
    return n, c, lead


@passed_checks
def post_residual_args(x, y, post, res):
    n, c, lead = checks.post_residual_inputs(namespace(x, y, post, res), x, y, post, res)
    check_kernel_inputs("post_residual", n, x, y, post, res, names=("x", "y", "post", "res"))
    return n, c, lead
