"""Shared pieces of the Triton kernel tests.

Without CUDA the kernels run in the Triton interpreter, which Triton reads when a kernel is
decorated: TRITON_INTERPRET=1 must be set before mhc_core_torch is first imported
(mhc_core_torch.triton_gate reads it once, and the kernels are decorated then). tests/
conftest.py does it for the whole suite; it is repeated here so this directory also runs
alone. Shapes stay tiny (the interpreter is slow); the realistic-shape and bf16 versions
are marked `gpu`.

Helpers are fixtures (not imports) so these tests collect under any pytest import mode.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

try:
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")
except ImportError:  # pragma: no cover - torch is required below anyway
    torch = None

pytest.importorskip("triton")
pytest.importorskip("mhc_core_torch")

import mhc_core  # noqa: E402

# TRITON_INTERPRET=1 set by the caller (gpu_check's SMOKE mode) means the interpreter even
# where a GPU is present: the kernels were decorated for it and refuse CUDA tensors.
DEVICE = "cpu" if os.environ.get("TRITON_INTERPRET") == "1" or not torch.cuda.is_available() else "cuda"

# Error bound per dtype, scaled by max(1, max|reference|) (DESIGN §3).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}


@pytest.fixture
def device():
    """The one device every test in tests/triton runs on: "cuda" where a GPU is present
    (compiled kernels) unless TRITON_INTERPRET=1, else "cpu" (the Triton interpreter). Tests build their tensors on it
    and never assume the interpreter; float64-only checks (gradcheck) skip on "cuda"."""
    return DEVICE


def _mixing_params(n: int, c: int, variant: str = "mhc", seed: int = 0) -> dict[str, np.ndarray]:
    """float64 numpy phi, bias, alpha far from the init so every coefficient matters:
    phi ~ N(0, 1/sqrt(nC)) (z = O(1)), bias = init + N(0, 0.5), alpha ~ U(0.5, 1.5)."""
    rng = np.random.default_rng(seed)
    p = mhc_core.init_params(n, c, variant=variant, phi_std=1.0 / np.sqrt(n * c), seed=seed, dtype=np.float64)
    return {"phi": p["phi"], "bias": p["bias"] + rng.normal(0.0, 0.5, p["bias"].shape),
            "alpha": rng.uniform(0.5, 1.5, 3)}


@pytest.fixture
def mixing_params():
    return _mixing_params


def _rounded(a: np.ndarray, dtype: torch.dtype, requires_grad: bool = False) -> torch.Tensor:
    """numpy float64 -> torch `dtype` on the test device (bf16 rounds once from the exact value)."""
    t = torch.from_numpy(np.asarray(a, np.float64)).to(device=DEVICE, dtype=dtype)
    return t.requires_grad_(requires_grad)


@pytest.fixture
def rounded():
    return _rounded


def _oracle_grads(fn, inputs: list[torch.Tensor], cotangents: list[torch.Tensor]):
    """Outputs and gradients of sum_k <fn(*inputs)[k], cotangent_k> through mhc_core in
    float64 on the CPU (torch autograd through the reference math; mhc_core itself is
    validated against finite differences in tests/conformance)."""
    xs = [t.detach().double().cpu().requires_grad_(True) for t in inputs]
    outs = fn(*xs)
    outs = outs if isinstance(outs, tuple) else (outs,)
    loss = sum((o * g.double().cpu()).sum() for o, g in zip(outs, cotangents))
    return [o.detach() for o in outs], torch.autograd.grad(loss, xs)


@pytest.fixture
def oracle_grads():
    return _oracle_grads


# Launch options Triton takes beside a kernel's own parameters.
_LAUNCH_OPTIONS = {"num_warps", "num_stages", "num_ctas", "maxnreg", "enable_fp_fusion", "launch_cooperative_grid",
                   "launch_pdl", "debug", "sanitize_overflow"}


@pytest.fixture(autouse=True)
def _launches_name_only_kernel_parameters(monkeypatch):
    """The interpreter ignores a keyword a kernel does not declare; compiled Triton raises
    KeyError at launch. Every launch in these tests is checked as the GPU would check it."""
    if os.environ.get("TRITON_INTERPRET") != "1":
        yield
        return
    from triton.runtime.interpreter import InterpretedFunction

    run = InterpretedFunction.run

    def checked_run(self, *args, grid, warmup, **kwargs):
        unknown = set(kwargs) - set(self.arg_names) - _LAUNCH_OPTIONS
        if unknown:
            raise KeyError(f"Keyword argument(s) {sorted(unknown)} passed to {self.fn.__name__} "
                           "which does not declare them (compiled Triton refuses this launch)")
        return run(self, *args, grid=grid, warmup=warmup, **kwargs)

    monkeypatch.setattr(InterpretedFunction, "run", checked_run)
    yield
