"""The implementations the benchmark compares, behind one small interface.

`build(op, impl, n, c, tokens, dtype, device)` -> `Bench` or raises `Unavailable`.

    op    coefficients | pre_aggregate | post_residual | step (the whole mHC step around
          an identity layer)
    impl  ours-triton        mhc_core_torch.kernels (Triton; CUDA)
          reference          mhc_core on torch tensors, eager (what impl='reference' runs)
          reference+compile  the same under torch.compile
          liger              liger-kernel's mHC ops (liger_mhc_coeffs / _pre / _post_res,
                             LigerMHC for the step), phi in the activation dtype as its
                             docs recommend for tensor cores
          hyper-connections  lucidrains' mHC module (step only; streams folded into the
                             batch axis, its layout)

Every implementation gets the same shapes and dtypes: x [tokens, n, C] in `dtype`, the
mixing parameters and coefficients float32. Weights are random but equivalent in cost;
the numbers are not compared across libraries (their parametrisations differ), only our
Triton path against our reference (bench_mhc.py checks that before timing).
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

import mhc_core

OPS = ("coefficients", "pre_aggregate", "post_residual", "step")
IMPLS = ("ours-triton", "reference", "reference+compile", "liger", "hyper-connections")
CFG = mhc_core.MHCConfig().as_dict()  # DeepSeek-V4 defaults: iters=20, ...


class Unavailable(Exception):
    """This implementation does not exist for this op / device / installation."""


@dataclass
class Bench:
    make_inputs: Callable[[], tuple]          # one fresh input set (leaf tensors)
    fn: Callable[..., object]                 # fn(*inputs) -> tensor or tuple of tensors
    params: tuple = ()                        # module parameters (shared by all input sets)


def _rand(shape, dtype, device, std=1.0):
    return (torch.randn(shape, device=device, dtype=torch.float32) * std).to(dtype)


def _mixing(n, c, device):
    p = mhc_core.init_params(n, c, phi_std=0.02, seed=0)
    return tuple(torch.from_numpy(p[k]).to(device) for k in ("phi", "bias", "alpha"))


def _op_inputs(op, n, c, t, dtype, device):
    """Inputs of one op in mhc_core's signature order."""
    if op == "coefficients":
        return (_rand((t, n, c), dtype, device),) + _mixing(n, c, device)
    if op == "pre_aggregate":
        return _rand((t, n, c), dtype, device), torch.rand(t, n, device=device)
    if op == "post_residual":
        res = torch.softmax(torch.randn(t, n, n, device=device), -1)
        return (_rand((t, n, c), dtype, device), _rand((t, c), dtype, device),
                2 * torch.rand(t, n, device=device), res)
    raise ValueError(op)


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def _ours(op, n, c, t, dtype, device):
    if device.type != "cuda" and not _interpreting():
        raise Unavailable("Triton kernels are timed on CUDA only (the interpreter is not a speed)")
    from mhc_core_torch import MHC
    from mhc_core_torch.kernels import ops

    if op == "step":
        return _mhc_step_bench(MHC(nn.Identity(), n, c, impl="triton"), n, c, t, dtype, device)
    return Bench(lambda: _op_inputs(op, n, c, t, dtype, device), getattr(ops, op))


def _reference(op, n, c, t, dtype, device, compile_=False):
    from mhc_core_torch import MHC

    if op == "step":
        module = MHC(nn.Identity(), n, c, impl="reference").to(device)
        return _mhc_step_bench(torch.compile(module) if compile_ else module, n, c, t, dtype, device)
    fn = getattr(mhc_core, op)
    if op == "coefficients":
        fn = functools.partial(fn, **CFG)
    return Bench(lambda: _op_inputs(op, n, c, t, dtype, device), torch.compile(fn) if compile_ else fn)


def _mhc_step_bench(module, n, c, t, dtype, device):
    module = module.to(device)
    return Bench(lambda: (_rand((t, n, c), dtype, device),), module, tuple(module.parameters()))


def _liger(op, n, c, t, dtype, device):
    if device.type != "cuda" and not _interpreting():
        raise Unavailable("liger-kernel's mHC ops are Triton kernels (CUDA)")
    try:
        from liger_kernel.transformers.functional import liger_mhc_coeffs, liger_mhc_post_res, liger_mhc_pre
        from liger_kernel.transformers.mhc import LigerMHC
    except ImportError as err:
        raise Unavailable(f"liger-kernel with mHC ops is not installed: {err}") from None
    w = n * n + 2 * n
    if op == "step":
        module = LigerMHC(nn.Identity(), hc=n, c=c, tmax=CFG["iters"], phi_dtype=dtype).to(device)
        return Bench(lambda: (_rand((t, n, c), dtype, device),), module, tuple(module.parameters()))
    if op == "coefficients":
        def make():
            scalars = tuple(torch.tensor(0.01, device=device) for _ in range(3))
            return (_rand((t, n, c), dtype, device), _rand((n * c, w), dtype, device, 0.02),
                    torch.zeros(w, device=device)) + scalars
        return Bench(make, functools.partial(liger_mhc_coeffs, tmax=CFG["iters"]))
    if op == "pre_aggregate":
        return Bench(lambda: _op_inputs(op, n, c, t, dtype, device), liger_mhc_pre)
    return Bench(lambda: _op_inputs(op, n, c, t, dtype, device), liger_mhc_post_res)


def _hyper_connections(op, n, c, t, dtype, device):
    if op != "step":
        raise Unavailable("hyper-connections has no separate kernels; its whole step is timed")
    try:
        from hyper_connections import mHC
    except ImportError as err:
        raise Unavailable(f"hyper-connections is not installed: {err}") from None
    module = mHC(n, dim=c, branch=nn.Identity(), sinkhorn_iters=CFG["iters"]).to(device)
    # its layout: streams folded into the batch axis, '(b s) t d' with b = 1
    return Bench(lambda: (_rand((n, t, c), dtype, device),), module, tuple(module.parameters()))


def build(op: str, impl: str, n: int, c: int, tokens: int, dtype: torch.dtype, device: torch.device) -> Bench:
    builders = {"ours-triton": _ours, "reference": _reference,
                "reference+compile": functools.partial(_reference, compile_=True),
                "liger": _liger, "hyper-connections": _hyper_connections}
    if impl not in builders:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    return builders[impl](op, n, c, tokens, dtype, device)


def differentiable(bench: Bench, inputs: tuple) -> list[torch.Tensor]:
    """Floating leaves to take gradients of: the inputs (made requires_grad) and the params."""
    leaves = [a for a in inputs if isinstance(a, torch.Tensor) and a.is_floating_point()]
    for a in leaves:
        a.requires_grad_(True)
    return leaves + [p for p in bench.params if p.requires_grad]


def outputs_tuple(out) -> tuple[torch.Tensor, ...]:
    return tuple(out) if isinstance(out, (tuple, list)) else (out,)


def check_against_reference(op, n, c, dtype, device, tokens: int = 64) -> float:
    """Worst |ours - reference| / max(1, |reference|) on one small input."""
    torch.manual_seed(0)
    ins = _op_inputs(op if op != "step" else "coefficients", n, c, tokens, dtype, device)
    from mhc_core_torch import MHC
    from mhc_core_torch.kernels import ops

    if op == "step":
        init = {k: v for k, v in zip(("phi", "bias", "alpha"), ins[1:])}
        got = MHC(nn.Identity(), n, c, impl="triton", init=init).to(device)(ins[0])
        want = MHC(nn.Identity(), n, c, impl="reference", init=init).to(device)(ins[0])
    else:
        got, want = getattr(ops, op)(*ins), _reference(op, n, c, tokens, dtype, device).fn(*ins)
    err = 0.0
    for g, w in zip(outputs_tuple(got), outputs_tuple(want)):
        err = max(err, float((g.float() - w.float()).abs().max()) / max(1.0, float(w.float().abs().max())))
    return err if np.isfinite(err) else float("inf")
