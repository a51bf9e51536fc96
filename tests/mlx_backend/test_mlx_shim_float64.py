"""mhc_core.xp._MLXOps float64 extras: MLX's own float64 exp is float32-accurate on the CPU
(mlx 0.32: ~1e-7 relative), so the shim routes float64 through power(e, x). These tests pin
the shim to ~1e-14 of numpy and check values and gradients at the edges."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

import mhc_core  # noqa: E402
from mlx_cases import assert_close  # noqa: E402

OPS = mhc_core.namespace(mx.zeros(1))
NP = mhc_core.namespace(np.zeros(1))
X = np.random.default_rng(0).normal(size=(16, 4)) * 8.0
A = mx.array(X, dtype=mx.float64)


def test_native_mlx_float64_exp_is_float32_accurate():
    """Documents the quirk the shim works around; if MLX fixes it this test says so."""
    native = float(np.max(np.abs(np.array(mx.exp(A)) / np.exp(X) - 1.0)))
    assert native > 1e-12, f"mx.exp float64 is now accurate ({native:.1e}); the power(e, x) path could go"


@pytest.mark.parametrize("name, got, want", [
    ("exp", lambda: OPS.exp(A), lambda: np.exp(X)),
    ("sigmoid", lambda: OPS.sigmoid(A), lambda: NP.sigmoid(X)),
    ("softmax", lambda: OPS.softmax(A, axis=-1), lambda: NP.softmax(X, axis=-1)),
    ("logsumexp", lambda: OPS.logsumexp(A, axis=-1), lambda: NP.logsumexp(X, axis=-1)),
    ("logsumexp-keepdims", lambda: OPS.logsumexp(A, axis=-2, keepdims=True), lambda: NP.logsumexp(X, axis=-2, keepdims=True)),
    ("logaddexp", lambda: OPS.logaddexp(A, A[::-1]), lambda: np.logaddexp(X, X[::-1])),
])
def test_float64_extras_match_numpy(name, got, want):
    out = got()
    assert out.dtype == mx.float64, f"{name}: dtype {out.dtype}"
    # exp of |x| up to ~30 is large: compare relatively
    scale = np.abs(want()) if name == "exp" else 1.0
    assert_close(np.array(out) / scale, want() / scale, 1e-14, f"shim-f64-{name}")


def test_float64_extras_are_finite_with_true_gradients_at_the_edges():
    v = mx.array([-1000.0, 0.0, 1000.0, 3.0], dtype=mx.float64)
    sig = 1.0 / (1.0 + np.exp(-3.0))
    assert_close(np.array(OPS.sigmoid(v)), [0.0, 0.5, 1.0, sig], 1e-15, "sigmoid-edges")
    g = mx.grad(lambda t: OPS.sigmoid(t).sum())(v)  # at 0 the true 1/4, not a |x| subgradient 0
    assert_close(np.array(g), [0.0, 0.25, 0.0, sig * (1 - sig)], 1e-15, "sigmoid-grad")
    g = mx.grad(lambda t: OPS.logaddexp(t, mx.zeros_like(t)).sum())(v)  # = sigmoid(t)
    assert_close(np.array(g), [0.0, 0.5, 1.0, sig], 1e-15, "logaddexp-grad")
    assert_close(np.array(OPS.logaddexp(v, mx.zeros_like(v))), np.logaddexp(np.array(v), 0.0), 1e-15, "logaddexp-edges")


def _derivative(f, order: int):
    """x -> d^order f / dx^order for an elementwise f: the gradient of sum(f) is f', nested."""
    for _ in range(order):
        f = (lambda g: mx.grad(lambda t: g(t).sum()))(f)
    return f


def test_float64_exp_and_sigmoid_have_true_derivatives_of_every_order():
    """d^k/dx^k exp = exp (k <= 4) and sigmoid''' = s (1 - s) (1 - 6 s + 6 s^2) in float64
    (MLX's power(a, x), which float64 exp is made of, has a wrong 3rd derivative in x)."""
    x = np.linspace(-3.0, 3.0, 7)
    a = mx.array(x, dtype=mx.float64)
    for order in range(1, 5):
        assert_close(np.array(_derivative(OPS.exp, order)(a)) / np.exp(x), np.ones_like(x), 1e-14, f"exp-d{order}")
    s = 1.0 / (1.0 + np.exp(-x))
    assert_close(np.array(_derivative(OPS.sigmoid, 3)(a)), s * (1 - s) * (1 - 6 * s + 6 * s * s), 1e-14, "sigmoid-d3")


def test_float64_logaddexp_of_infinities_matches_numpy():
    """logaddexp(-inf, -inf) = -inf and logaddexp(inf, inf) = inf, as numpy, torch and MLX's
    float32 give (inf - inf inside hi + log1p(exp(lo - hi)) must not make them NaN); the
    gradient at finite points stays sigmoid(a - b)."""
    a = np.array([-np.inf, np.inf, -np.inf, np.inf, 1.0, np.nan, 2.0])
    b = np.array([-np.inf, np.inf, 1.0, -np.inf, -np.inf, 1.0, 2.0])
    got = np.array(OPS.logaddexp(mx.array(a, dtype=mx.float64), mx.array(b, dtype=mx.float64)))
    with np.errstate(invalid="ignore"):  # numpy warns on the NaN input
        want = np.logaddexp(a, b)
    np.testing.assert_array_equal(got, want)
    x, y = mx.array([0.5, -3.0, 2.0], dtype=mx.float64), mx.array([1.5, 4.0, 2.0], dtype=mx.float64)
    g = mx.grad(lambda t: OPS.logaddexp(t, y).sum())(x)
    assert_close(np.array(g), 1.0 / (1.0 + np.exp(np.array(y) - np.array(x))), 1e-15, "logaddexp-grad-finite")
