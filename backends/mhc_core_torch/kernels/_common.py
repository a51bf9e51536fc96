"""What every kernel file shares: padded sizes, accumulation dtype, bf16 stores, and the
error for a gradient of a gradient.

Where the kernels run, on which dtypes and for how many streams is decided in
`mhc_core_torch.triton_gate` (`check_kernel_inputs` is every launcher's check).
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..triton_gate import INTERPRETED


def next_pow2(v: int) -> int:
    return 1 << max(0, int(v) - 1).bit_length()


def stream_pad(n: int) -> int:
    """R: padded stream count, a power of two >= 4 so that an R x R tile (R*R >= 16) and a
    [.., R*R] dot operand meet tl.dot's minimum of 16 along every axis."""
    return max(4, next_pow2(n))


def gate_pad(n: int) -> int:
    """GP: width of the gate tile, pre in columns [0, R), post in [R, 2R), at least 16."""
    return max(16, 2 * stream_pad(n))


def torch_acc_dtype(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype == torch.float64 else torch.float32


def first_order_only(op: str):
    """An autograd formula for a backward custom op that raises a clear error: the backward
    kernels have no derivative of their own, so a gradient of a gradient (double backward,
    create_graph=True followed by another backward) cannot run on the kernels."""

    def backward(ctx, *grads):
        raise RuntimeError(
            f"double backward through the Triton kernels ({op}) is not supported: the kernels "
            "compute first derivatives only. Use impl='reference' (MHC(..., impl='reference')) "
            "for higher-order gradients.")

    return backward


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
