"""Fused Triton kernels for mHC (issue 3), each forward and backward, tested against mhc_core:

    coefficients.py   projection + RMS + gating + Sinkhorn in one pass over x (Eq. 7-8, 14-15)
    pre_aggregate.py  h = sum_i pre[i] x[i]
    post_residual.py  out[o] = sum_i res[i, o] x[i] + post[o] y
    sinkhorn.py       the on-chip Sinkhorn (also a standalone op)
    ops.py            the four as mhc_core-compatible functions, plus `step`

`runnable()` is the registry probe; `supports()` and `mhc_step_triton()` are what
`mhc_core_torch.dispatch` calls for MHC(impl='triton' | 'auto'). Where the kernels can run
(Triton installed, and CUDA or TRITON_INTERPRET=1) importing this package loads them
(and Triton), so torch.compile never traces an import; elsewhere it imports no Triton.
"""
from __future__ import annotations

import importlib.util
import os
import sys


def _interpreting() -> bool:
    """Whether the kernels are (or, once imported, will be) decorated for the interpreter."""
    common = sys.modules.get(__name__ + "._common")
    if common is not None:
        return common.INTERPRETED
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def runnable() -> bool:
    """True when Triton is installed and there is a CUDA device or TRITON_INTERPRET=1."""
    if importlib.util.find_spec("triton") is None or importlib.util.find_spec("torch") is None:
        return False
    if _interpreting():
        return True
    import torch

    return torch.cuda.is_available()


def supports(x, variant: str = "mhc") -> str | None:
    """None when the kernels can run this step on `x` here, else the reason they cannot."""
    import torch

    if variant == "residual":
        return "variant 'residual' is a plain x + f(x): there is no Triton kernel for it"
    if variant == "mhc-lite":
        return ("variant 'mhc-lite' (a convex combination of permutation matrices) has no Triton kernel; "
                "it runs on impl='reference'")
    if x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return (f"the Triton kernels take float32, bfloat16 or float16 x, got {x.dtype}"
                + ("; float64 runs on impl='reference'" if x.dtype == torch.float64 else ""))
    if x.dim() >= 2 and x.shape[-2] > 16:
        return f"the Triton kernels support n <= 16 streams, got n={x.shape[-2]}"
    interpreting = _interpreting()
    if x.device.type == "cuda" and interpreting:
        return ("the kernels were imported with TRITON_INTERPRET=1 (CPU interpreter) but x is a "
                "CUDA tensor; unset TRITON_INTERPRET before importing mhc_core_torch")
    if x.device.type == "cuda" or (x.device.type == "cpu" and interpreting):
        return None
    return (f"x is on {x.device}; the kernels need a CUDA tensor, or a CPU tensor with "
            "TRITON_INTERPRET=1 set before mhc_core_torch is first imported")


def mhc_step_triton(x, layer, phi, bias, alpha, *, variant: str, cfg: dict, layer_kwargs: dict):
    """One mHC / HC step on the kernels (the contract of dispatch._reference_step)."""
    from . import ops

    f = (lambda h: layer(h, **layer_kwargs)) if layer_kwargs else layer
    return ops.step(x, f, phi, bias, alpha, variant=variant, **cfg)


if runnable():  # load the kernels now (see the module docstring)
    from . import ops  # noqa: E402,F401
