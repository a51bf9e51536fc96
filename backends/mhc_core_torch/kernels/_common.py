"""What every kernel file shares: padded sizes, accumulation dtype, bf16 stores, and the
error for a gradient of a gradient.

Where the kernels run, on which dtypes and for how many streams is decided in
`mhc_core_torch.triton_gate` (`check_kernel_inputs` is every launcher's check).

Host cost: every launcher is registered as a torch.library op, so that torch.compile calls
it as one opaque op; in eager mode that op's dispatch (autograd key, redispatch, the
dynamo-disable wrapper around the body) costs more than the launch itself at small T.
`call_launcher` therefore calls the launcher directly when nothing needs the op
(`direct_launch`), and the op otherwise: same launcher, same numbers.
"""
from __future__ import annotations

import functools

import torch
import torch.autograd.forward_ad as _forward_ad
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


def refuse_batched_grads(op: str, *grads) -> None:
    """RuntimeError where a backward receives gradients batched by
    autograd.grad(is_grads_batched=True) (jacobian / hessian with vectorize=True): legacy-vmap
    tensors have no storage for the kernels to read. Not checked while torch.compile traces."""
    if torch.compiler.is_compiling():
        return
    if any(g is not None and torch._C._functorch.is_legacy_batchedtensor(g) for g in grads):
        raise RuntimeError(
            f"batched gradients (autograd.grad(is_grads_batched=True), jacobian / hessian with vectorize=True) "
            f"cannot run through the Triton kernels ({op}). Use vectorize=False, or impl='reference' "
            "(MHC(..., impl='reference')), whose backward takes them.")


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


@functools.lru_cache(maxsize=None)
def sm_count(device: torch.device) -> int:
    """Streaming multiprocessors of a CUDA device (asked once per device); 1 elsewhere."""
    if device.type != "cuda":
        return 1
    return torch.cuda.get_device_properties(device).multi_processor_count


@functools.lru_cache(maxsize=None)
def capability(device: torch.device) -> int:
    """10 * major + minor of a CUDA device (asked once per device); 90 elsewhere (the
    interpreter: block sizes only)."""
    if device.type != "cuda":
        return 90
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def num_programs_hint(device: torch.device) -> int:
    """About how many programs fill the device (4 per SM on CUDA; 2 in the interpreter)."""
    return 4 * sm_count(device) if device.type == "cuda" else 2


# False: every launch goes through its torch.library op, as under torch.compile (the tests
# compare both routes).
DIRECT_EAGER_LAUNCH = True


def _transformed() -> bool:
    """Whether a forward-mode AD level (torch.autograd.forward_ad.dual_level) or a torch.func
    transform (jvp, vmap, grad) is active. A launcher called directly there would return
    outputs without tangents (or read a wrapped tensor's storage); the autograd.Function
    route refuses such transforms with torch's error instead."""
    return _forward_ad._current_level >= 0 or torch._C._functorch.peek_interpreter_stack() is not None


def direct_launch(x: torch.Tensor) -> bool:
    """Whether a launcher may be called directly instead of through its torch.library op:
    eager mode (torch.compile traces the op), grad mode off (a backward under
    create_graph=True needs the op's autograd formula, which refuses a second derivative;
    an autograd.Function's forward always runs with grad off), x a plain tensor (fake
    tensors, DTensor and other subclasses dispatch through the op), and no forward-mode AD
    or torch.func transform active (`_transformed`)."""
    return (DIRECT_EAGER_LAUNCH and not torch.compiler.is_compiling() and not torch.is_grad_enabled()
            and type(x) is torch.Tensor and not _transformed())


def untracked(*tensors: torch.Tensor) -> bool:
    """Whether an eager forward on these tensors records no autograd graph (grad mode off,
    or none of them requires grad), so the launcher can run without its autograd.Function.
    False under torch.compile, for tensor subclasses and under forward-mode AD or a torch.func
    transform (`direct_launch`'s rules)."""
    if (not DIRECT_EAGER_LAUNCH or torch.compiler.is_compiling() or type(tensors[0]) is not torch.Tensor
            or _transformed()):
        return False
    return not torch.is_grad_enabled() or not any(t.requires_grad for t in tensors)


def call_launcher(op, launcher, *args):
    """launcher(*args) where `direct_launch(args[0])`, else the torch.library op(*args)
    registered around that same launcher."""
    return launcher(*args) if direct_launch(args[0]) else op(*args)


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
