"""Autodiff glue: mhc_core's coefficients as one `mx.custom_function` with its explicit vjp.

    pre [..., n], post [..., n], res [..., n, n] = coefficients(x [..., n, C], phi, bias, alpha, ...)

Forward and vjp are `mhc_core.coefficients_forward` / `coefficients_backward` (written once
on the array API); MLX's vjp receives only the primals, cotangents and outputs, so the
values the backward needs (projection scale, gate activations, Sinkhorn iterates) are
returned as extra outputs of the custom function and dropped by the wrapper.

Higher derivatives. MLX differentiates a vjp like any function of its inputs, but the
saved values reach the vjp as outputs of the custom function, whose vjp takes no
cotangent for them: a gradient of the gradient would miss every term through the saved
values. The vjp therefore reads them through `saved_of`, an identity on the saved values
whose own vjp pulls their cotangents back to the inputs by MLX's autodiff of
`coefficients_forward` (run only when a derivative of the gradient is taken).
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import mlx.core as mx

import mhc_core
from mhc_core import checks
from mhc_core.coefficients import coefficients_backward, coefficients_forward


@lru_cache(maxsize=None)
def _custom(variant: str, cfg: tuple) -> Callable:
    """The custom function for one variant and config (a sorted items tuple)."""
    kw = dict(cfg)

    @mx.custom_function
    def coefficients_node(x, phi, bias, alpha):
        outs, saved = coefficients_forward(mhc_core.namespace(x), x, phi, bias, alpha, variant=variant, **kw)
        return tuple(outs) + tuple(saved)

    def saved_values(x, phi, bias, alpha):
        return tuple(coefficients_forward(mhc_core.namespace(x), x, phi, bias, alpha, variant=variant, **kw)[1])

    @mx.custom_function
    def saved_of(primals, saved):
        """The saved values themselves, as a function of the primals."""
        return tuple(saved)

    @saved_of.vjp
    def saved_of_vjp(inputs, cotangents, outputs):
        primals, saved = inputs

        def paired(*p):  # <saved values, cotangents>: one scalar output. mx.vjp of the saved
            # values themselves misaligns cotangents when one of them (s) does not depend on
            # the primals (mlx 0.32 drops such an output)
            return sum((a * c).sum() for a, c in zip(saved_values(*p), cotangents))

        dprimals = mx.grad(paired, argnums=tuple(range(len(primals))))(*primals)
        return tuple(dprimals), tuple(mx.zeros_like(a) for a in saved)

    @coefficients_node.vjp
    def coefficients_vjp(primals, cotangents, outputs):
        dpre, dpost, dres = cotangents[:3]
        saved = saved_of(tuple(primals), tuple(outputs[3:]))
        grads = coefficients_backward(mhc_core.namespace(dpre), tuple(saved), dpre, dpost, dres,
                                      variant=variant, sinkhorn_eps=kw["sinkhorn_eps"],
                                      post_scale=kw["post_scale"])
        return tuple(g.astype(p.dtype) for g, p in zip(grads, primals))

    return coefficients_node


def coefficients(x, phi, bias, alpha, *, variant: str = "mhc", **cfg):
    """`mhc_core.coefficients` (same checks, same numbers) with mhc_core's explicit vjp.
    'mhc-lite' has no explicit vjp: MLX's autodiff differentiates mhc_core's ops."""
    variant, full = checks.coefficient_call(mhc_core.namespace(x, phi, bias, alpha), x, phi, bias, alpha,
                                            variant, cfg)
    if variant == "mhc-lite":
        return mhc_core.coefficients(x, phi, bias, alpha, variant=variant, **full)
    return _custom(variant, tuple(sorted(full.items())))(x, phi, bias, alpha)[:3]


def step(x, f: Callable, phi=None, bias=None, alpha=None, *, variant: str = "mhc", **cfg):
    """`mhc_core.step` with the coefficients' explicit vjp: x [..., n, C] -> [..., n, C]."""
    if checks.variant(variant) == "residual":
        return mhc_core.residual_step(x, f)
    checks.layer(f)
    pre, post, res = coefficients(x, phi, bias, alpha, variant=variant, **cfg)
    y = f(mhc_core.pre_aggregate(x, pre))
    checks.layer_output(x, y)
    return mhc_core.post_residual(x, y, post, res)
