"""The backends under test (einops style): one small frozen record each, imported lazily.

This package lives with the tests, not in the installed library. Each record names the
modules a backend needs, the installed package that holds its modules (`MHC`,
`StreamHead`, `save_state`, ...), the adapter module here that gives the conformance
suite one uniform face onto it (`BackendAdapter` below), and an optional probe saying
whether it can run on this machine (Triton needs CUDA or TRITON_INTERPRET=1).

Tests and scripts take the backend list from `available()`, never from a hand-kept list.
`MHC_REQUIRE_BACKENDS=torch,mlx` names backends that must be available: `missing_required()`
lists those that are not, with the reason, and the suite fails on them (tests/conftest.py).
Whether a backend is installed is decided by importing its modules (a stale folder left in
site-packages by an uninstall does not count); nothing imports a framework before
`available()` or `adapter()` is called.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Callable, Protocol

import numpy as np


@lru_cache(maxsize=None)
def _import_error(module: str) -> str | None:
    """None when `module` imports here, else the error (type and message)."""
    try:
        importlib.import_module(module)
    except Exception as err:  # noqa: BLE001 - any import failure means "not installed here"
        return f"import {module} failed: {type(err).__name__}: {err}"
    return None


@dataclass(frozen=True)
class Backend:
    """name: id used in test ids and tables; requires: modules that must import;
    package: the installed package holding the backend's modules; adapter_module: module
    (in this package) holding `Adapter`; probe: optional 'module:function' returning
    whether the backend can run on this machine; fused: the backend runs its own fused
    kernels instead of the mhc_core math; trains: it has a TinyLM and training utilities
    (`lm`, `training.checkpoint`), so the depth sweep and the resume tests run on it."""

    name: str
    requires: tuple[str, ...]
    package: str
    adapter_module: str
    probe: str | None = None
    fused: bool = False
    trains: bool = False

    def unavailable_reason(self) -> str | None:
        """None when the backend can run here, else why not."""
        for module in self.requires:
            error = _import_error(module)
            if error is not None:
                return error
        if self.probe is not None:
            module, fn = self.probe.split(":")
            if not getattr(importlib.import_module(module), fn)():
                return f"{self.probe} says it cannot run on this machine"
        return None

    def installed(self) -> bool:
        return all(_import_error(m) is None for m in self.requires)

    def runnable(self) -> bool:
        return self.unavailable_reason() is None

    def adapter(self) -> "BackendAdapter":
        return importlib.import_module(self.adapter_module).Adapter()


BACKENDS: tuple[Backend, ...] = (
    Backend("numpy", ("numpy",), "mhc_core", "backend_registry.numpy_adapter"),
    Backend("torch", ("torch", "mhc_core_torch"), "mhc_core_torch", "backend_registry.torch_adapter",
            trains=True),
    Backend("mlx", ("mlx.core", "mhc_core_mlx"), "mhc_core_mlx", "backend_registry.mlx_adapter",
            trains=True),
    Backend("torch-triton", ("torch", "triton", "mhc_core_torch"), "mhc_core_torch",
            "backend_registry.triton_adapter", "mhc_core_torch.triton_gate:runnable", fused=True),
)
REQUIRE_ENV = "MHC_REQUIRE_BACKENDS"


def available() -> list[Backend]:
    """The registered backends that can run here, in registry order."""
    return [b for b in BACKENDS if b.runnable()]


def training_names() -> list[str]:
    """Names of the registered backends with a TinyLM and training utilities (`trains`)."""
    return [b.name for b in BACKENDS if b.trains]


def get(name: str) -> Backend:
    for b in BACKENDS:
        if b.name == name:
            return b
    raise KeyError(f"no backend named {name!r}; registered: {[b.name for b in BACKENDS]}")


def required_names() -> list[str]:
    """Backend names listed in MHC_REQUIRE_BACKENDS (comma-separated); unknown names raise."""
    names = [s.strip() for s in os.environ.get(REQUIRE_ENV, "").split(",") if s.strip()]
    unknown = [s for s in names if s not in {b.name for b in BACKENDS}]
    if unknown:
        raise ValueError(f"{REQUIRE_ENV} names unknown backend(s) {unknown}; "
                         f"registered: {[b.name for b in BACKENDS]}")
    return names


def missing_required() -> dict[str, str]:
    """{name: why it cannot run} for every required backend that is not available."""
    out = {}
    for name in required_names():
        reason = get(name).unavailable_reason()
        if reason is not None:
            out[name] = reason
    return out


def import_skip_of_required(report) -> str | None:
    """The skip message when a pytest `report` is `importorskip` of a module that a required
    backend needs (tests/conftest.py turns such skips into failures), else None."""
    if not report.skipped or not isinstance(report.longrepr, tuple):
        return None
    message = str(report.longrepr[2])
    modules = {m.split(".")[0] for name in required_names() for m in get(name).requires}
    return message if any(f"could not import '{m}" in message for m in modules) else None


class BackendAdapter(Protocol):
    """What the conformance suite needs from a backend. Weights travel as numpy arrays.

    dtypes: names among 'float64', 'float32', 'bfloat16' that the backend computes in.
    differentiable: whether `step_and_grads` is implemented.
    """

    name: str
    dtypes: tuple[str, ...]
    differentiable: bool

    def asarray(self, a: np.ndarray, dtype: str) -> Any: ...

    def to_numpy(self, a: Any) -> np.ndarray: ...

    def core_fn(self, name: str) -> Callable:
        """A `mhc_core` function (or the backend's own kernel for it) by name:
        'sinkhorn', 'coefficients', 'pre_aggregate', 'post_residual'."""

    def make_mhc(self, n: int, c: int, variant: str, layer: str, state: dict[str, np.ndarray],
                 dtype: str, **cfg) -> Any:
        """The backend's MHC module around a 'linear' or 'mlp' layer (tests/conformance/
        layers.py defines both), loaded from `state` (names as in `module_state`)."""

    def run(self, module: Any, x: Any) -> Any: ...

    def step_and_grads(self, module: Any, x: Any, cotangent: Any) -> tuple[Any, dict[str, Any]]:
        """(out, grads) of sum(out * cotangent); grads keyed 'x' and by parameter name."""
