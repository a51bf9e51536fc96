"""Shared helpers for the mlx backend tests: weights, the numpy float64 oracle, comparisons.

Named `mlx_cases` (not `helpers`) so it cannot collide with another test folder's module
on pytest's sys.path.
"""
from __future__ import annotations

import numpy as np

import mhc_core
from backend_registry.numpy_adapter import layer_shapes, numpy_layer

# (abs + rel) tolerance per dtype: |got - want| <= tol * (1 + |want|)  (DESIGN §3)
TOL = {"float64": 1e-10, "float32": 1e-5, "bfloat16": 2e-2}


def make_state(variant: str, layer: str, n: int, c: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Mixing parameters away from their init (so every term and gradient is exercised)
    plus conformance-layer weights, all float64 numpy."""
    rng = np.random.default_rng(seed)
    state = {}
    if variant != "residual":
        state = {k: v.astype(np.float64) for k, v in
                 mhc_core.init_params(n, c, variant=variant, phi_std=0.5, seed=seed).items()}
        state["bias"] = state["bias"] + rng.normal(0.0, 0.5, state["bias"].shape)
        state["alpha"] = rng.uniform(0.3, 1.0, 3)
    for name, shape in layer_shapes(layer, c).items():
        state[name] = rng.normal(0.0, 1.0 / np.sqrt(shape[-1]), shape)
    return state


def oracle_step(variant: str, layer: str, state: dict, x: np.ndarray, **cfg) -> np.ndarray:
    """mhc_core.step on numpy float64: the oracle every backend is compared with."""
    p = {k: np.asarray(state[k], np.float64) for k in ("phi", "bias", "alpha") if k in state}
    return mhc_core.step(np.asarray(x, np.float64), numpy_layer(layer, state), p.get("phi"),
                         p.get("bias"), p.get("alpha"), variant=variant, **cfg)


def assert_close(got, want, tol: float, case: str, what: str = "out") -> float:
    """Assert |got - want| <= tol * (1 + |want|) elementwise; return the worst scaled error.

    The failure message names the case, the worst element's index and both values.
    """
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"[{case}] {what}: shape {got.shape} != expected {want.shape}"
    assert np.all(np.isfinite(got)), f"[{case}] {what}: non-finite values in the result"
    scaled = np.abs(got - want) / (1.0 + np.abs(want))
    worst = np.unravel_index(int(np.argmax(scaled)), scaled.shape) if scaled.size else ()
    err = float(scaled[worst]) if scaled.size else 0.0
    assert err <= tol, (
        f"[{case}] {what}: worst scaled error {err:.3e} > tol {tol:.0e} at index {tuple(map(int, worst))}: "
        f"got {got[worst]!r}, expected {want[worst]!r}"
    )
    return err
