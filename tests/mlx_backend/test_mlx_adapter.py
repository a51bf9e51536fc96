"""The conformance Adapter itself: registry discovery, core_fn in float64, residual states."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

import mhc_core  # noqa: E402
import backend_registry as registry  # noqa: E402
from mlx_cases import TOL, assert_close, make_state  # noqa: E402


def test_registry_finds_the_mlx_adapter():
    adapter = registry.get("mlx").adapter()
    assert adapter.name == "mlx" and adapter.differentiable
    assert adapter.dtypes == ("float64", "float32", "bfloat16")
    assert "mlx" in [b.name for b in registry.available()]


@pytest.mark.parametrize("eps", [1e-6, 0.0], ids=["eps1e-6", "eps0-logdomain"])
def test_core_fn_sinkhorn_float64_matches_numpy(eps):
    adapter = registry.get("mlx").adapter()
    logits = np.random.default_rng(0).normal(size=(3, 4, 4)) * 5
    got = adapter.core_fn("sinkhorn")(logits=adapter.asarray(logits, "float64"), iters=20, eps=eps)
    assert got.dtype == mx.float64
    assert_close(adapter.to_numpy(got), mhc_core.sinkhorn(logits, iters=20, eps=eps), TOL["float64"], f"sinkhorn-{eps}")


def test_core_fn_coefficients_float64_matches_numpy():
    adapter = registry.get("mlx").adapter()
    p = make_state("mhc", "linear", 3, 4)
    x = np.random.default_rng(1).normal(size=(2, 3, 4))
    args = [x, p["phi"], p["bias"], p["alpha"]]
    got = adapter.core_fn("coefficients")(*[adapter.asarray(a, "float64") for a in args])
    for name, g, w in zip(("pre", "post", "res"), got, mhc_core.coefficients(*args)):
        assert_close(adapter.to_numpy(g), w, TOL["float64"], "coefficients-f64", name)


def test_make_mhc_residual_ignores_mixing_weights_in_the_state():
    adapter = registry.get("mlx").adapter()
    state = {**make_state("mhc", "linear", 1, 4), **make_state("residual", "linear", 1, 4)}
    module = adapter.make_mhc(1, 4, "residual", "linear", state, "float32")
    x = np.random.default_rng(2).normal(size=(2, 1, 4))
    out = adapter.to_numpy(adapter.run(module, adapter.asarray(x, "float32")))
    want = x + (x[:, 0] @ state["layer.weight"].T + state["layer.bias"])[:, None]
    assert_close(out, want, TOL["float32"], "residual-adapter")
