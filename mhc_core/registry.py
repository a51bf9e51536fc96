"""The backend registry (einops style): one small frozen record per backend, imported lazily.

Nothing here imports a framework. `available()` asks importlib whether a backend's
requirements are installed (and, for records with a probe, whether they can run here);
tests and scripts take the backend list from `available()`, never from a hand-kept list.

Every backend package has a `testing` module with an `Adapter` class (see
`BackendAdapter` below), the uniform face the conformance suite talks to.
"""
from __future__ import annotations

import importlib
import importlib.util
from dataclasses import dataclass
from typing import Any, Callable, Protocol

import numpy as np


@dataclass(frozen=True)
class Backend:
    """name: id used in test ids and tables; requires: import names that must be
    installed; testing: module holding `Adapter`; probe: optional 'module:function'
    returning whether the backend can run on this machine (e.g. Triton needs CUDA or
    TRITON_INTERPRET=1)."""

    name: str
    requires: tuple[str, ...]
    testing: str
    probe: str | None = None

    def installed(self) -> bool:
        return all(importlib.util.find_spec(mod) is not None for mod in self.requires)

    def runnable(self) -> bool:
        if not self.installed():
            return False
        if self.probe is None:
            return True
        module, fn = self.probe.split(":")
        return bool(getattr(importlib.import_module(module), fn)())

    def adapter(self) -> "BackendAdapter":
        return importlib.import_module(self.testing).Adapter()


BACKENDS: tuple[Backend, ...] = (
    Backend("numpy", ("numpy",), "mhc_core.testing"),
    Backend("torch", ("torch", "mhc_torch"), "mhc_torch.testing"),
    Backend("mlx", ("mlx", "mhc_mlx"), "mhc_mlx.testing"),
    Backend("torch-triton", ("torch", "triton", "mhc_torch"), "mhc_torch.kernels.testing", "mhc_torch.kernels:runnable"),
)


def register(backend: Backend) -> None:
    """Add a backend record (used by optional paths such as the Triton kernels)."""
    global BACKENDS
    if any(b.name == backend.name for b in BACKENDS):
        raise ValueError(f"a backend named {backend.name!r} is already registered")
    BACKENDS = BACKENDS + (backend,)


def available() -> list[Backend]:
    """The registered backends that can run here, in registry order."""
    return [b for b in BACKENDS if b.runnable()]


def get(name: str) -> Backend:
    for b in BACKENDS:
        if b.name == name:
            return b
    raise KeyError(f"no backend named {name!r}; registered: {[b.name for b in BACKENDS]}")


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
