"""Can the Triton kernels run here, and on this input? The one place that decides.

Where they run:
- CUDA tensors, with kernels compiled for the GPU (the normal case);
- CPU tensors when the kernels were decorated under `TRITON_INTERPRET=1`. Triton reads the
  variable when `@triton.jit` runs, i.e. when `mhc_core_torch` is first imported, so it is
  read once, here (`INTERPRETED`), and later changes to it have no effect. That is how CI
  checks the kernels without a GPU.

What they take: x [..., n, C] with n <= MAX_STREAMS (the kernels keep one token's padded
n x n matrix on chip) in a KERNEL_DTYPES dtype, computed in float32. float64 belongs to the
reference path (a GPU's float64 is slow and partly supported in Triton); the interpreter
runs numpy, where float64 is exact, so there the kernels also accept float64 and compute
in it, which lets `torch.autograd.gradcheck` run on the kernels themselves.

    runnable()                    Triton imports and CUDA or the interpreter is there
                                  (the 'torch-triton' registry probe)
    unavailable_reason(x, variant, params)  None, or why MHC(impl='triton') cannot run x with its
                                  mixing parameters params = (phi, bias, alpha) (dispatch.py)
    check_kernel_inputs(op, n, *t, names=...)  the raising check of every kernel launcher
    passed_checks(check)          `check` remembering the calls it passed (below)

Checks are re-run on every call unless remembered: `passed_checks(check)` runs `check` on
the first call with a given signature (each tensor's type, shape, dtype and device, each
other argument's type and value) and returns its result for later calls with that same
signature; a call that fails is never remembered, so bad input always meets the check.

This module imports no Triton itself; `triton_imports()` tries it once, when first asked.
"""
from __future__ import annotations

import functools
import os

import torch

MAX_STREAMS = 16
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"

_TRITON_IMPORT_ERROR: list[str | None] = []  # filled by the first triton_imports() call


def triton_imports() -> bool:
    """Whether `import triton` works here (tried once; a stale folder does not count)."""
    if not _TRITON_IMPORT_ERROR:
        try:
            import triton  # noqa: F401
        except Exception as err:  # noqa: BLE001 - any import failure means "no Triton here"
            _TRITON_IMPORT_ERROR.append(f"{type(err).__name__}: {err}")
        else:
            _TRITON_IMPORT_ERROR.append(None)
    return _TRITON_IMPORT_ERROR[0] is None


def runnable() -> bool:
    """True when Triton imports and there is a CUDA device or TRITON_INTERPRET=1 was set."""
    return triton_imports() and (INTERPRETED or torch.cuda.is_available())


def _device_reason(device: torch.device) -> str | None:
    """None when the kernels run on tensors of `device` here, else why not."""
    if device.type == "cuda":
        if INTERPRETED:
            return ("the kernels were imported with TRITON_INTERPRET=1 (CPU interpreter) but x is a "
                    "CUDA tensor; unset TRITON_INTERPRET before importing mhc_core_torch")
        return None
    if device.type == "cpu" and INTERPRETED:
        return None
    return (f"x is on {device}; the Triton kernels need a CUDA tensor (or TRITON_INTERPRET=1 set "
            "before mhc_core_torch is first imported, to run them in the Triton interpreter)")


def _dtype_reason(dtype: torch.dtype, device: torch.device, name: str = "x") -> str | None:
    """None when the kernels take a tensor `name` of `dtype` on `device` here, else why not."""
    if dtype in KERNEL_DTYPES or (dtype == torch.float64 and INTERPRETED and device.type == "cpu"):
        return None
    return (f"the Triton kernels take float32, bfloat16 or float16, got {name} of dtype {dtype}"
            + ("; float64 runs on impl='reference'" if dtype == torch.float64 else ""))


MIXING_NAMES = ("phi", "bias", "alpha")


def _params_reason(x: torch.Tensor, params) -> str | None:
    """None when the mixing parameters (phi, bias, alpha; None entries skipped) can go to
    the kernels beside x, else why not: a kernel dtype each (float64 refused, as for x)
    and x's device."""
    for name, p in zip(MIXING_NAMES, params):
        if p is None:
            continue
        if p.dtype not in KERNEL_DTYPES:
            return _dtype_reason(p.dtype, torch.device("cuda"), name)
        if p.device != x.device:
            return f"{name} is on {p.device} but x is on {x.device}; move the module to x's device"
    return None


def unavailable_reason(x: torch.Tensor, variant: str = "mhc", params=()) -> str | None:
    """None when the Triton path can run one step of `variant` on x [..., n, C] here, with
    the mixing parameters params = (phi, bias, alpha) when given, else a sentence saying why
    not. float64 (x or a parameter, e.g. after module.double()) is refused even in the
    interpreter: MHC's float64 is the reference path's."""
    if variant == "residual":
        return "variant 'residual' is a plain x + f(x): there is no Triton kernel for it"
    if variant == "mhc-lite":
        return ("variant 'mhc-lite' (a convex combination of permutation matrices) has no Triton kernel; "
                "it runs on impl='reference'")
    if not triton_imports():
        return f"triton does not import ({_TRITON_IMPORT_ERROR[0]}; pip install 'mhc-core[torch]' on Linux)"
    if x.dtype not in KERNEL_DTYPES:
        return _dtype_reason(x.dtype, torch.device("cuda"))
    if x.dim() >= 2 and x.shape[-2] > MAX_STREAMS:
        return f"the Triton kernels support n <= {MAX_STREAMS} streams, got n={x.shape[-2]}"
    return _device_reason(x.device) or _params_reason(x, params)


def check_kernel_inputs(op: str, n: int, *tensors: torch.Tensor, names: tuple[str, ...] = ()) -> None:
    """Raise a clear error unless kernel `op` can run on these tensors (n streams) here:
    one device the kernels run on, a kernel dtype, n <= MAX_STREAMS. `names` (one per
    tensor; default x, then arg1, arg2, ...) are what the errors call them."""
    if n > MAX_STREAMS:
        raise ValueError(f"{op}: the Triton kernels support n <= {MAX_STREAMS} streams, got n={n}; "
                         "use impl='reference'")
    names = tuple(names) + tuple(("x" if i == 0 else f"arg{i}") for i in range(len(names), len(tensors)))
    devices = {t.device for t in tensors}
    if len(devices) != 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in zip(names, tensors))
        raise ValueError(f"{op}: all inputs must be on one device, got {where}")
    device = devices.pop()
    for name, t in zip(names, tensors):
        reason = _dtype_reason(t.dtype, device, name)
        if reason is not None:
            raise TypeError(f"{op}: {reason}")
    reason = _device_reason(device)
    if reason is not None:
        raise RuntimeError(f"{op}: {reason}; or use impl='reference'")


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)
_PLAIN_VALUES = (str, int, float, bool, type(None))
MAX_REMEMBERED = 256  # signatures per check; then the memory starts over


def _signature(args) -> tuple | None:
    """A hashable signature of a call's arguments, or None where one is not plainly
    comparable (a tensor subclass, an array or other object as a setting, torch.compile
    tracing: it traces the check itself; a 0-d tensor, which the checks read as a number:
    keyed by shape it would pass any value). Tensors: (type, shape, dtype, device); values:
    (type, value), so 20 and 20.0 (an iters count refused as a float) differ. The gate's
    own state (interpreter flag, Triton's import error) is part of it: the checks read it."""
    if torch.compiler.is_compiling():
        return None
    key = [INTERPRETED, tuple(_TRITON_IMPORT_ERROR)]
    for a in args:
        kind = type(a)
        if kind in _PLAIN_TENSORS:
            if a.dim() == 0:  # a number passed as a 0-d tensor (iters, an eps): its value matters
                return None
            key.append((kind, a.shape, a.dtype, a.device))
        elif kind in _PLAIN_VALUES:
            key.append((kind, a))
        else:
            return None
    return tuple(key)


def passed_checks(check):
    """`check(*args)` (positional arguments only) that returns its result at once for a
    signature (`_signature`) it already passed. The result is shared between calls: checks
    return numbers, tuples and settings that callers only read."""
    passed: dict = {}

    @functools.wraps(check)
    def remembered(*args):
        key = _signature(args)
        if key is not None:
            hit = passed.get(key)
            if hit is not None:
                return hit[0]
        result = check(*args)
        if key is not None:
            if len(passed) >= MAX_REMEMBERED:
                passed.clear()
            passed[key] = (result,)
        return result

    remembered.passed = passed  # for tests
    return remembered
