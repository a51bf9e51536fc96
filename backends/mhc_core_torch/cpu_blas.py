"""Compiled CPU graphs: matrix products with a narrow operand on numpy's BLAS.

The phi projection and its two backward products are matrix products with one narrow
side: z = u @ phi ([T, n*C] @ [n*C, m], m = n*n + 2n), dphi = u^T @ w ([n*C, T] @ [T, m])
and du = w @ phi^T ([T, m] @ [m, n*C]). Under torch.compile on the CPU they are extern
GEMM calls that inductor cannot fuse, and torch's CPU GEMM runs these shapes at about half
the speed of the BLAS numpy ships (OpenBLAS, Accelerate): on the 2-core benchmark machine
u @ phi at [2048, 2048] @ [2048, 24] takes 4.0 ms in torch and 2.0 ms in numpy, u^T @ w
3.9 vs 2.4 ms, w @ phi^T 3.2 vs 2.6 ms (single-threaded; `benchmarks/bench_cpu_ratios.py`
times the compiled coefficients both ways in its bandwidth section). The eager CPU path
already runs these products on numpy (autograd.py).

`blas_matmul` is a torch custom op (opaque to inductor, with a shape-only fake kernel for
tracing and its own backward), registered with mhc_core's shim, which calls it for 2-D
float32 / float64 CPU products whose right operand has at most `_TorchOps.NARROW` rows or
columns while torch.compile traces (mhc_core.xp). numpy reads the tensors through DLPack
and writes the result into a torch-allocated tensor through the array interface (a DLPack
import is read-only before numpy 2.2.5): no copy, and the result lives in torch memory, so
a parameter's gradient made by it stays resizable (FSDP) and `.numpy()` (which pins a
storage's size) is never called on a parameter.

Set `ENABLED = False` before compiling to keep these products on torch (e.g. for
AOTInductor, whose C++ runtime cannot call a Python op); graphs traced earlier keep
what they were traced with.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.autograd.forward_ad as _forward_ad

from mhc_core import xp as _xp

ENABLED = True
_NUMPY_DTYPES = {torch.float32: np.dtype(np.float32), torch.float64: np.dtype(np.float64)}
_BLAS_DTYPES = tuple(_NUMPY_DTYPES)
_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)  # not subclasses (DLPack export differs)


def _blasable(a: torch.Tensor, b: torch.Tensor) -> bool:
    return (a.ndim == 2 and b.ndim == 2 and a.device.type == "cpu" and b.device.type == "cpu"
            and a.dtype == b.dtype and a.dtype in _BLAS_DTYPES and type(a) in _PLAIN_TENSORS
            and type(b) in _PLAIN_TENSORS)


class _WritableView:
    """numpy's writable view of a contiguous float32 / float64 torch tensor, through the
    array interface (`np.asarray(_WritableView(t))`); it keeps t alive."""

    def __init__(self, t: torch.Tensor):
        self._tensor = t
        self.__array_interface__ = {"data": (t.data_ptr(), False), "shape": tuple(t.shape), "version": 3,
                                    "typestr": _NUMPY_DTYPES[t.dtype].str}


def _check_operands(a: torch.Tensor, b: torch.Tensor) -> None:
    """The op's contract, the same for the real and the fake kernel: a [M, K] and b [K, N]
    of one dtype and device."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"blas_matmul expects a [M, K] and b [K, N], got {tuple(a.shape)} and {tuple(b.shape)}")
    if a.dtype != b.dtype or a.device != b.device:
        raise TypeError(f"blas_matmul expects a and b of one dtype and device, got {a.dtype} on {a.device} "
                        f"and {b.dtype} on {b.device}")


@torch.library.custom_op("mhc_core::blas_matmul", mutates_args=())
def blas_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """a [M, K] @ b [K, N] -> [M, N] on numpy's BLAS (float32 / float64 CPU tensors; any
    other dtype or device runs torch.matmul). The result is a new torch-allocated tensor."""
    _check_operands(a, b)
    if not _blasable(a, b):
        return torch.matmul(a, b)
    out = torch.empty((a.shape[0], b.shape[1]), dtype=a.dtype)
    np.matmul(np.from_dlpack(a.detach()), np.from_dlpack(b.detach()), out=np.asarray(_WritableView(out)))
    return out


@blas_matmul.register_fake
def _(a, b):
    _check_operands(a, b)
    return a.new_empty((a.shape[0], b.shape[1]))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, g):
    a, b = ctx.saved_tensors
    ga = blas_matmul(g, b.mT) if ctx.needs_input_grad[0] else None
    gb = blas_matmul(a.mT, g) if ctx.needs_input_grad[1] else None
    return ga, gb


blas_matmul.register_autograd(_backward, setup_context=_setup_context)


@torch.compiler.assume_constant_result
def _transformed() -> bool:
    """Whether a torch.func transform (jvp, vmap, grad, ...) or a forward-mode AD level is
    active, also while dynamo traces one: the op has a backward but no forward-mode rule, so
    under jvp its tangent would be silently wrong. Evaluated in Python at trace time (dynamo
    would otherwise trace the interpreter-stack query symbolically, and read it as active)."""
    return torch._C._functorch.peek_interpreter_stack() is not None or _forward_ad._current_level >= 0


def narrow_matmul(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """The shim's compiled-CPU product for a matrix b with a narrow side: a [..., K] @ b
    [K, N] -> [..., N], on numpy's BLAS where ENABLED and the dtypes allow, else (and
    under a torch.func transform or forward-mode AD) torch.matmul."""
    if not ENABLED or a.dtype != b.dtype or a.dtype not in _BLAS_DTYPES or _transformed():
        return torch.matmul(a, b)
    a2 = a if a.ndim == 2 else a.reshape(-1, a.shape[-1])
    return blas_matmul(a2, b).reshape(a.shape[:-1] + b.shape[-1:])


_xp.register_compiled_cpu_matmul(narrow_matmul)
