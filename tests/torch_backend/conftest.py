"""Shared pieces of the torch backend tests: the closeness assertion and random weights.

Helpers are handed out as fixtures (not imported) so these tests collect under any
pytest import mode.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mhc_core
from mhc_core.testing import layer_shapes

# Absolute tolerance per dtype, scaled by max(1, |reference|) (DESIGN §3).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}


def _assert_close(got, want, tol: float, case: str) -> float:
    """Fail with the worst element, both values and the case id; return the worst error."""
    __tracebackhide__ = True
    got = got.detach().double().cpu().numpy() if isinstance(got, torch.Tensor) else np.asarray(got, np.float64)
    want = want.detach().double().cpu().numpy() if isinstance(want, torch.Tensor) else np.asarray(want, np.float64)
    assert got.shape == want.shape, f"[{case}] shape {got.shape} != reference {want.shape}"
    err = np.abs(got - want)
    worst = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
    bound = tol * max(1.0, float(np.abs(want).max(initial=0.0)))
    if not np.all(np.isfinite(got)):
        raise AssertionError(f"[{case}] non-finite output")
    if err.size and not err[worst] <= bound:  # raise, not assert: keeps pytest from dumping arrays
        raise AssertionError(
            f"[{case}] worst |err| {err[worst]:.3e} > {bound:.1e} at index {tuple(int(i) for i in worst)}: "
            f"got {float(got[worst])!r}, reference {float(want[worst])!r}"
        )
    return float(err.max(initial=0.0))


def _random_state(n: int, c: int, variant: str, layer: str | None, seed: int) -> dict[str, np.ndarray]:
    """Random weights far from the init (so every coefficient matters), float64 numpy:
    phi ~ N(0, 0.5), bias = init + N(0, 0.5), alpha ~ U(0.5, 1.5), layer ~ N(0, 1/sqrt(fan_in))."""
    rng = np.random.default_rng(seed)
    state = {}
    if variant != "residual":
        base = mhc_core.init_params(n, c, variant=variant, dtype=np.float64)
        state["phi"] = rng.normal(0.0, 0.5, base["phi"].shape)
        state["bias"] = base["bias"] + rng.normal(0.0, 0.5, base["bias"].shape)
        state["alpha"] = rng.uniform(0.5, 1.5, base["alpha"].shape)
    for name, shape in (layer_shapes(layer, c) if layer else {}).items():
        state[name] = rng.normal(0.0, 1.0 / np.sqrt(shape[-1]), shape)
    return state


@pytest.fixture
def assert_close():
    return _assert_close


@pytest.fixture
def random_state():
    return _random_state


@pytest.fixture
def tol():
    return TOL
