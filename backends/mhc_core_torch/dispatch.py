"""Which implementation runs one mHC step: the mhc_core reference ops or Triton kernels.

DESIGN §2: on CUDA the Triton path is the default, elsewhere the reference path; an
explicit request for a path that cannot run here is a clear error, never a silent
fallback; only `impl="auto"` falls back.

    impl        CUDA tensor + kernels present     anything else
    "auto"      triton                            reference
    "reference" reference                         reference
    "triton"    triton                            RuntimeError (says why)

The reference path is mhc_core's math as three autograd nodes (autograd.py); on the CPU
it is also the fastest exact path (benchmarks/results/cpu_ratios.md), so "auto" takes it.

The Triton kernels live in `mhc_core_torch.kernels` (issue 3). Adding them takes no change
here beyond what that package provides: a function
`mhc_step_triton(x, layer, phi, bias, alpha, *, variant, cfg, layer_kwargs)` with the
same contract as `_reference_step`, and optionally `supports(x, variant) -> str | None`
(None when the kernels handle this input, else the reason they do not).
"""
from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from typing import Callable

import torch


from .autograd import step as _coefficient_node_step

IMPLS = ("auto", "reference", "triton")
_KERNELS = "mhc_core_torch.kernels"


def check_impl(impl) -> str:
    """Validate an `impl` name (ValueError naming the choices)."""
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return impl


def _triton_installed() -> bool:
    return importlib.util.find_spec("triton") is not None


def _kernels():
    """The Triton kernels package, or None while it is not part of this build."""
    kernels = sys.modules.get(_KERNELS)  # once imported, no importlib call: torch.compile cannot trace it
    if kernels is None:
        if importlib.util.find_spec(_KERNELS) is None:
            return None
        kernels = importlib.import_module(_KERNELS)  # a broken package raises: no silent fallback
    return kernels if hasattr(kernels, "mhc_step_triton") else None


# Where the kernels can run, import them now: a compiled model must never trace an import.
if _triton_installed() and (torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET") == "1"):
    _kernels()


def triton_unavailable_reason(x: torch.Tensor, variant: str = "mhc") -> str | None:
    """None when the Triton path can run `x` here, else a sentence saying why not."""
    if variant == "residual":
        return "variant 'residual' is a plain x + f(x): there is no Triton kernel for it"
    if not _triton_installed():
        return "triton is not installed (pip install 'mhc-core[torch]' on Linux)"
    if not x.is_cuda and os.environ.get("TRITON_INTERPRET") != "1":
        return (f"x is on {x.device}; the Triton kernels need a CUDA tensor "
                "(or TRITON_INTERPRET=1 to run them in the Triton interpreter)")
    kernels = _kernels()
    if kernels is None:
        return f"the Triton kernels ({_KERNELS}.mhc_step_triton) are not part of this build"
    supports = getattr(kernels, "supports", None)
    return supports(x, variant) if supports is not None else None


def _triton_available(x: torch.Tensor, variant: str) -> bool:
    """What `impl="auto"` asks: Triton only for CUDA tensors, and only where it can run."""
    return x.is_cuda and triton_unavailable_reason(x, variant) is None


def resolve_impl(impl: str, x: torch.Tensor, *, variant: str = "mhc") -> str:
    """'reference' or 'triton' for this input (see the table in the module docstring)."""
    check_impl(impl)
    if impl == "reference":
        return "reference"
    if impl == "auto":
        return "triton" if _triton_available(x, variant) else "reference"
    reason = triton_unavailable_reason(x, variant)
    if reason is not None:
        raise RuntimeError(f"impl='triton' was requested but cannot run: {reason}. "
                           "Use impl='auto' to fall back to the reference path.")
    return "triton"


def _reference_step(x, layer: Callable, phi, bias, alpha, *, variant: str, cfg: dict, layer_kwargs: dict):
    """mhc_core.step on torch tensors, the coefficients recorded as one autograd node
    (mhc_core's explicit backward, autograd.py); autograd handles the two matmuls.

    Under torch.autocast the mixing (coefficients, Sinkhorn, pre/post matmuls) runs with
    autocast off, in float32 as mhc_core intends (paper Eq. 10-19; autocast would run its
    matmuls in bf16), while the layer keeps the caller's autocast.
    """
    f = (lambda h: layer(h, **layer_kwargs)) if layer_kwargs else layer
    dev = x.device.type
    if not torch.is_autocast_enabled(dev):
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
    layer_kwargs = layer_kwargs or {}
    if resolve_impl(impl, x, variant=variant) == "triton":
        return _kernels().mhc_step_triton(x, layer, phi, bias, alpha, variant=variant, cfg=cfg,
                                          layer_kwargs=layer_kwargs)
    return _reference_step(x, layer, phi, bias, alpha, variant=variant, cfg=cfg, layer_kwargs=layer_kwargs)
