"""The coefficients as one `mx.custom_function` (mhc_core_mlx.autograd, MHC(impl='custom_vjp')):
its vjp (mhc_core.coefficients_backward) against MLX differentiating the spec's ops, in
float64 (eager and compiled), for the whole step and for the coefficients alone."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

import mhc_core  # noqa: E402
from backend_registry.mlx_adapter import Adapter  # noqa: E402
from mhc_core_mlx import autograd as mlx_autograd  # noqa: E402
from mlx_cases import TOL, assert_close, make_state  # noqa: E402

ADAPTER = Adapter()
CASES = [  # (variant, layer, n, C, leading shape, config)
    ("mhc", "mlp", 3, 4, (2,), {"iters": 6}),
    ("mhc", "linear", 2, 5, (2, 2), {"iters": 4, "sinkhorn_eps": 0.0}),
    ("hc", "linear", 4, 3, (3,), {}),
]
IDS = ["mhc-mlp", "mhc-linear-logdomain", "hc-linear"]


def _grads(case, impl, compiled, dtype="float64"):
    variant, layer, n, c, lead, cfg = case
    state = make_state(variant, layer, n, c, seed=0)
    rng = np.random.default_rng(1)
    x, cot = rng.normal(size=lead + (n, c)), rng.normal(size=lead + (n, c))
    module = ADAPTER.make_mhc(n, c, variant, layer, state, dtype, **cfg)
    module.impl, module.compiled = impl, compiled
    out, grads = ADAPTER.step_and_grads(module, ADAPTER.asarray(x, dtype), ADAPTER.asarray(cot, dtype))
    return ADAPTER.to_numpy(out), {k: ADAPTER.to_numpy(g) for k, g in grads.items()}


def _float64_inputs(case, rng, seed: int) -> list:
    """[x, phi, bias, alpha] in float64 for a case: random x, phi from init_params(seed),
    the bias moved off its init, alpha in [0.5, 1.5] (so every term of the math counts)."""
    variant, _, n, c, lead, _ = case
    p = mhc_core.init_params(n, c, variant=variant, phi_std=0.5, seed=seed, dtype=np.float64)
    return [mx.array(v, dtype=mx.float64) for v in (rng.normal(size=lead + (n, c)), p["phi"],
                                                     p["bias"] + rng.normal(0.0, 0.5, p["bias"].shape),
                                                     rng.uniform(0.5, 1.5, 3))]


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_custom_vjp_step_matches_mlx_autodiff_float64(case, compiled):
    out_ref, g_ref = _grads(case, "reference", compiled)
    out, g = _grads(case, "custom_vjp", compiled)
    assert set(g) == set(g_ref)
    assert_close(out, out_ref, TOL["float64"], "custom_vjp", "out")
    for name in sorted(g_ref):
        assert_close(g[name], g_ref[name], TOL["float64"], "custom_vjp", f"d/d{name}")


@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_custom_vjp_coefficients_match_mlx_autodiff_float64(case):
    variant, _, n, c, lead, cfg = case
    rng = np.random.default_rng(3)
    with mx.stream(mx.cpu):
        args = _float64_inputs(case, rng, seed=3)
        w = [mx.array(rng.normal(size=s), dtype=mx.float64) for s in (lead + (n,), lead + (n,), lead + (n, n))]

        def loss(fn):
            return lambda *a: sum((o * wi).sum() for o, wi in zip(fn(*a, variant=variant, **cfg), w))

        want = mx.grad(loss(mhc_core.coefficients), argnums=(0, 1, 2, 3))(*args)
        got = mx.grad(loss(mlx_autograd.coefficients), argnums=(0, 1, 2, 3))(*args)
        for name, g, wg in zip(("x", "phi", "bias", "alpha"), got, want):
            assert_close(np.array(g), np.array(wg), TOL["float64"], "coefficients", f"d/d{name}")


def test_custom_vjp_float32_step_matches_reference():
    case = CASES[0]
    out_ref, g_ref = _grads(case, "reference", False, "float32")
    out, g = _grads(case, "custom_vjp", False, "float32")
    for name in sorted(g_ref):
        assert_close(g[name], g_ref[name], TOL["float32"], "custom_vjp float32", f"d/d{name}")


def test_custom_vjp_entry_point_rejects_bad_input():
    x = mx.zeros((2, 3, 4))
    p = {k: mx.array(v) for k, v in mhc_core.init_params(3, 4).items()}
    with pytest.raises(ValueError, match="residual"):
        mlx_autograd.coefficients(x, p["phi"], p["bias"], p["alpha"], variant="residual")
    with pytest.raises(ValueError, match="iters"):
        mlx_autograd.coefficients(x, p["phi"], p["bias"], p["alpha"], iters=0)
    with pytest.raises(ValueError, match="phi"):
        mlx_autograd.coefficients(x, p["phi"][:-1], p["bias"], p["alpha"])


def test_auto_takes_the_custom_vjp_from_the_size_threshold(monkeypatch):
    """impl='auto' switches to the custom vjp at AUTO_CUSTOM_VJP_MIN_ELEMENTS (same numbers)."""
    from mhc_core_mlx import modules

    calls = []
    real = mlx_autograd.step
    monkeypatch.setattr(mlx_autograd, "step", lambda *a, **k: calls.append(1) or real(*a, **k))
    case = CASES[0]
    out_ref, g_ref = _grads(case, "reference", False)
    monkeypatch.setattr(modules, "AUTO_CUSTOM_VJP_MIN_ELEMENTS", 1 << 40)
    _grads(case, "auto", False)
    assert not calls, "auto below the threshold must use MLX autodiff"
    monkeypatch.setattr(modules, "AUTO_CUSTOM_VJP_MIN_ELEMENTS", 1)
    out, g = _grads(case, "auto", False)
    assert calls, "auto at the threshold must use the custom vjp"
    for name in sorted(g_ref):
        assert_close(g[name], g_ref[name], TOL["float64"], "auto", f"d/d{name}")


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("case", CASES, ids=IDS)
def test_custom_vjp_gradient_of_the_gradient_matches_mlx_autodiff_float64(case, compiled):
    """d/d(inputs) of |grad|^2 through the custom vjp equals MLX differentiating the spec's
    ops twice (eager; the custom vjp's eager and under mx.compile): the saved values'
    dependence on the inputs is part of the second derivative."""
    variant, _, n, c, lead, cfg = case
    rng = np.random.default_rng(5)
    with mx.stream(mx.cpu):
        args = _float64_inputs(case, rng, seed=5)
        w = mx.array(rng.normal(size=lead + (n, c)), dtype=mx.float64)

        def grad_norm(step, compiled=False):
            def loss(*a):
                return (step(a[0], lambda h: mx.tanh(h) * 0.5, *a[1:], variant=variant, **cfg) * w).sum()

            def norm(*a):
                return sum((g * g).sum() for g in mx.grad(loss, argnums=(0, 1, 2, 3))(*a))

            fn = mx.grad(norm, argnums=(0, 1, 2, 3))
            return mx.compile(fn) if compiled else fn

        want = grad_norm(mhc_core.step)(*args)  # eager: compiling this second derivative takes ~20 s
        got = grad_norm(mlx_autograd.step, compiled)(*args)
        for name, g, wg in zip(("x", "phi", "bias", "alpha"), got, want):
            assert_close(np.array(g), np.array(wg), TOL["float64"], "grad of grad", f"d/d{name}")
