"""Shared pieces of the torch backend tests: random weights (assert_close comes from tests/conftest.py).

Helpers are handed out as fixtures (not imported) so these tests collect under any
pytest import mode.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mhc_core
from backend_registry.numpy_adapter import layer_shapes

# Absolute tolerance per dtype, scaled by max(1, |reference|) (DESIGN §3).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.bfloat16: 2e-2}


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
def random_state():
    return _random_state


@pytest.fixture
def tol():
    return TOL
