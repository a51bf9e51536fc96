"""What every kernel file shares: where Triton can run, dtypes, padded sizes, validation.

Where Triton runs:
- CUDA tensors, with kernels compiled for the GPU (the normal case);
- CPU tensors when the kernels were decorated under `TRITON_INTERPRET=1` (Triton reads the
  variable when `@triton.jit` runs, i.e. when this package is first imported). That is how
  CI checks the kernels without a GPU.
Anything else is a clear error naming what to do, never a silent fallback.

dtypes: float32 / bfloat16 / float16 inputs compute in float32. float64 belongs to the
reference path (Triton's float64 on a GPU is slow and partly supported); the interpreter
runs numpy, where float64 is exact, so there the kernels accept float64 and compute in it:
that is what lets `torch.autograd.gradcheck` run in float64 on the kernels themselves.
"""
from __future__ import annotations

import os

import torch
import triton
import triton.language as tl

from mhc_core import checks, namespace

# Triton decorates kernels in interpreter mode iff this was "1" at import time.
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def stream_pad(n: int) -> int:
    """R: padded stream count, a power of two >= 4 so that an R x R tile (R*R >= 16) and a
    [.., R*R] dot operand meet tl.dot's minimum of 16 along every axis."""
    return max(4, next_pow2(n))


def gate_pad(n: int) -> int:
    """GP: width of the gate tile, pre in columns [0, R), post in [R, 2R), at least 16."""
    return max(16, 2 * stream_pad(n))


def acc_dtype(dtype: torch.dtype):
    """Triton accumulation dtype for a torch input dtype."""
    return tl.float64 if dtype == torch.float64 else tl.float32


def torch_acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def check_runnable(op: str, *tensors: torch.Tensor) -> None:
    """Raise a clear error unless the Triton kernels can run on these tensors here."""
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        raise ValueError(f"{op}: all inputs must be on one device, got {sorted(map(str, devices))}")
    device = devices.pop()
    for t in tensors:
        if t.dtype == torch.float64 and not (INTERPRETED and device.type == "cpu"):
            raise TypeError(
                f"{op}: the Triton kernels take float32, bfloat16 or float16, got float64; "
                "float64 runs on the reference path (impl='reference')"
            )
        if t.dtype not in KERNEL_DTYPES + (torch.float64,):
            raise TypeError(f"{op}: expected a floating tensor (float32/bfloat16/float16), got {t.dtype}")
    if device.type == "cuda":
        if INTERPRETED:
            raise RuntimeError(
                f"{op}: the kernels were imported with TRITON_INTERPRET=1 (CPU interpreter) "
                "but the inputs are CUDA tensors; unset TRITON_INTERPRET before importing mhc_core_torch"
            )
        return
    if device.type == "cpu" and INTERPRETED:
        return
    raise RuntimeError(
        f"{op}: Triton kernels need CUDA tensors (got {device}); to run them on the CPU set "
        "TRITON_INTERPRET=1 before importing mhc_core_torch (slow, for tests), or use impl='reference'"
    )


def coefficient_inputs(x, phi, bias, alpha, variant, iters, rms_eps, pre_eps, sinkhorn_eps, post_scale):
    """Validate like mhc_core.coefficients (same messages); returns (n, C)."""
    ops = namespace(x, phi, bias, alpha)
    n, c = checks.stream_input(ops, x)
    if checks.variant(variant) == "mhc-lite":
        raise ValueError("variant 'mhc-lite' has no Triton kernel; use impl='reference' (mhc_core.coefficients)")
    checks.mixing_params(ops, phi, bias, alpha, n, c)
    if variant == "residual":
        raise ValueError("variant 'residual' has no coefficients; use residual_step")
    checks.iters(iters)
    for value, name in ((rms_eps, "rms_eps"), (pre_eps, "pre_eps"), (sinkhorn_eps, "sinkhorn_eps"),
                        (post_scale, "post_scale")):
        checks.non_negative(value, name)
    if n > 16:
        raise ValueError(f"the Triton kernels support n <= 16 streams, got n={n}; use impl='reference'")
    check_runnable("coefficients", x, phi, bias, alpha)
    return n, c


def stream_op_inputs(op: str, x, others: dict):
    """Validate x [..., n, C] and the per-token operands of pre_aggregate / post_residual.

    `others` maps name -> (tensor, trailing shape as a function of (n, C), what it is).
    """
    ops = namespace(x, *[t for t, _, _ in others.values()])
    n, c = checks.stream_input(ops, x)
    lead = checks.shape_of(x)[:-2]
    for name, (t, trailing, what) in others.items():
        checks.float_array(ops, t, name)
        checks.expect_trailing(t, trailing(n, c), lead, name, what)
    if n > 16:
        raise ValueError(f"the Triton kernels support n <= 16 streams, got n={n}; use impl='reference'")
    check_runnable(op, x, *[t for t, _, _ in others.values()])
    return n, c, lead


def num_programs_hint(device: torch.device) -> int:
    """About how many programs fill the device (4 per SM on CUDA; 2 in the interpreter)."""
    if device.type == "cuda":
        return 4 * torch.cuda.get_device_properties(device).multi_processor_count
    return 2


# The interpreter converts float32 -> bfloat16 by truncation; the GPU rounds to nearest
# even. `cast_for_store` rounds explicitly when interpreting, so the CPU tests see the
# GPU's numerics (truncation doubled the bf16 error of h and out: 1 ulp instead of 0.5).
_FIX_BF16 = tl.constexpr(INTERPRETED)


@triton.jit
def cast_for_store(v, ptr):
    """v converted to the element type of `ptr`, rounded to nearest even."""
    if _FIX_BF16:
        if ptr.dtype.element_ty == tl.bfloat16:
            b = v.to(tl.float32).to(tl.uint32, bitcast=True)
            b = (b + 0x7FFF + ((b >> 16) & 1)) & 0xFFFF0000
            v = b.to(tl.float32, bitcast=True)
    return v.to(ptr.dtype.element_ty)
