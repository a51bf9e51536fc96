"""Which implementation runs one mHC step: the mhc_core reference ops or the Triton kernels.

DESIGN §2: on CUDA the Triton path is the default, elsewhere the reference path; an
explicit request for a path that cannot run here is a clear error, never a silent
fallback; only `impl="auto"` falls back.

    impl        CUDA tensor the kernels take      anything else
    "auto"      triton                            reference
    "reference" reference                         reference
    "triton"    triton                            RuntimeError (says why)

Under forward-mode AD, a torch.func transform (grad, vmap, jvp, ...) or torch.jit.trace the
kernels cannot run (their autograd Functions have no rules for them; tracing hands the
launchers traced sizes): "auto" takes the reference path there, "triton" is a RuntimeError.

Whether the kernels can run, and on what, is `triton_gate`'s answer. The kernels
(`mhc_core_torch.kernels`, which imports Triton) are imported here where they can run, so a
compiled model never traces an import.

The reference path is mhc_core's math as three autograd nodes (autograd.py); on the CPU
it is also the fastest exact path (benchmarks/results/cpu_ratios.md), so "auto" takes it.
"""
from __future__ import annotations

from typing import Callable

import torch

from . import triton_gate
from .autograd import _transformed
from .autograd import step as _coefficient_node_step

if triton_gate.runnable():
    from .kernels import ops as triton_ops
else:
    triton_ops = None

IMPLS = ("auto", "reference", "triton")


def check_impl(impl) -> str:
    """Validate an `impl` name (ValueError naming the choices)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def resolve_impl(impl: str, x: torch.Tensor, *, variant: str = "mhc", params=()) -> str:
    """'reference' or 'triton' for this input (see the table in the module docstring).
    params: the step's (phi, bias, alpha), whose dtypes and device count too (a module cast
    with .double() runs on the reference path under 'auto', and is a clear error under
    'triton', whatever x's dtype)."""
    check_impl(impl)
    if impl == "reference":
        return "reference"
    if impl == "auto":
        return "triton" if x.is_cuda and triton_gate.unavailable_reason(x, variant, params) is None else "reference"
    reason = triton_gate.unavailable_reason(x, variant, params)
    if reason is not None:
        raise RuntimeError(f"impl='triton' was requested but cannot run: {reason}. "
                           "Use impl='auto' to fall back to the reference path.")
    return "triton"


# resolve_impl remembered per (impl, x's and the parameters' type / shape / dtype / device,
# variant, the gate's state): the answer depends on nothing else
_resolved_impl = triton_gate.passed_checks(
    lambda impl, x, variant, phi, bias, alpha: resolve_impl(impl, x, variant=variant, params=(phi, bias, alpha)))


def _reference_step(x, f: Callable, phi, bias, alpha, *, variant: str, cfg: dict):
    """mhc_core's step on torch tensors as three autograd nodes (coefficients, pre-aggregate,
    post + residual; mhc_core's explicit backward, autograd.py) around f [..., C] -> [..., C].

    Under torch.autocast the mixing (coefficients, Sinkhorn, pre/post matmuls) runs with
    autocast off, in float32 as mhc_core intends (paper Eq. 10-19; autocast would run its
    matmuls in bf16), while the layer keeps the caller's autocast.
    """
    dev = x.device.type
    if not (torch.amp.is_autocast_available(dev) and torch.is_autocast_enabled(dev)):  # meta: no autocast
        return _coefficient_node_step(x, f, phi, bias, alpha, variant=variant, **cfg)
    dtype = torch.get_autocast_dtype(dev)

    def f_autocast(h):
        with torch.autocast(dev, dtype=dtype):
            return f(h)

    with torch.autocast(dev, enabled=False):
        return _coefficient_node_step(x, f_autocast, phi, bias, alpha, variant=variant, **cfg)


def mhc_step(x, layer: Callable, phi, bias, alpha, *, variant: str, cfg: dict, impl: str = "auto",
             layer_kwargs: dict | None = None):
    """One step x [..., n, C] -> [..., n, C] around `layer`, on the path `impl` resolves to.

    cfg: iters, rms_eps, pre_eps, sinkhorn_eps, post_scale (`MHCConfig.as_dict()`).
    layer_kwargs: extra keyword arguments passed to every `layer(h, ...)` call.
    """
    f = (lambda h: layer(h, **layer_kwargs)) if layer_kwargs else layer
    if _resolved_impl(impl, x, variant, phi, bias, alpha) == "triton":
        if not (_transformed() or torch.jit.is_tracing()):
            return triton_ops.step(x, f, phi, bias, alpha, variant=variant, **cfg)
        if impl == "triton":  # no jvp / vmap rules; traced sizes the launchers cannot take
            raise RuntimeError(
                "impl='triton' cannot run under forward-mode AD, a torch.func transform (grad, vmap, jvp, "
                "jacrev, ...) or torch.jit.trace: the Triton kernels have no rules for them. Use "
                "impl='reference' (or impl='auto', which runs the reference path there).")
    return _reference_step(x, f, phi, bias, alpha, variant=variant, cfg=cfg)
