"""Robust numerics: the coefficient path at huge and tiny magnitudes,
Sinkhorn's backward wherever its forward is finite, NaN input confined to its token.

Why these: float32 `mean(v**2)` is inf once |v| > 1.8e19, which used to make
`v_hat = v * rsqrt(inf) = 0` (coefficients silently from the biases alone, 5e-3 off at
alpha = 0.01, O(1) off at alpha = 1). `mhc_core.coefficients._projection` now scales by
max|v| first (same math); these tests hold every backend to the float64 oracle from
|x| = 1e-30 to 1e30 (and mixed within one token).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import mhc_core
from scale_helpers import adapters, assert_close

N, C = 4, 8
SETTINGS = settings(max_examples=25, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
CORE = adapters(("float32", "bfloat16"), fused=False)
TRITON = adapters(("float32",), fused=True)


def _params(variant: str, seed: int = 0) -> dict[str, np.ndarray]:
    """Random phi and alpha = 1, so the normalised state really moves the coefficients."""
    p = mhc_core.init_params(N, C, variant=variant, phi_std=0.5, alpha=1.0, seed=seed, dtype=np.float64)
    return p


def _state(exponent: float, seed: int, mixed: bool) -> np.ndarray:
    """x [2, n, C] of magnitude 10**exponent (mixed: each element its own magnitude in
    [10**(exponent-10), 10**exponent], so tiny and huge share a token)."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(2, N, C))
    mags = 10.0 ** (exponent - rng.uniform(0, 10, size=x.shape)) if mixed else 10.0 ** exponent
    return np.clip(x * mags, -3e38, 3e38)


def _check_coefficients(adapter, dtype, x64, variant, case):
    p = _params(variant)
    x = adapter.asarray(x64, dtype)
    x_exact = adapter.to_numpy(x)  # the rounded input the backend actually sees, in float64
    want = mhc_core.coefficients(x_exact, p["phi"], p["bias"], p["alpha"], variant=variant)
    got = adapter.core_fn("coefficients")(x, *(adapter.asarray(p[k], "float32") for k in ("phi", "bias", "alpha")),
                                          variant=variant)
    for name, g, w in zip(("pre", "post", "res"), got, want):
        g = adapter.to_numpy(g)
        assert np.isfinite(g).all(), f"[{case}] {name} has non-finite values: {g}"
        # coefficients are float32 whatever x's dtype: float32 tolerance for bf16 x too
        assert_close(g, w, rtol=2e-5, atol=2e-6, case=f"{case} {name}")


@pytest.mark.parametrize("adapter,dtype", CORE)
@pytest.mark.parametrize("variant", ["mhc", "hc"])
@SETTINGS
@given(exponent=st.floats(-30, 30), seed=st.integers(0, 2**16), mixed=st.booleans())
def test_coefficients_match_oracle_at_any_magnitude(adapter, dtype, variant, exponent, seed, mixed):
    x = _state(exponent, seed, mixed)
    _check_coefficients(adapter, dtype, x, variant, f"{adapter.name} {dtype} {variant} 1e{exponent:.1f} mixed={mixed}")


@pytest.mark.parametrize("adapter,dtype", CORE)
@pytest.mark.parametrize("exponent", [-30, -20, -3, 0, 18, 19.5, 20, 30, 38])
def test_coefficients_at_the_float32_edges(adapter, dtype, exponent):
    """Fixed magnitudes around the old overflow (1.8e19) and float32's max (3.4e38)."""
    _check_coefficients(adapter, dtype, _state(exponent, 1, False), "mhc", f"{adapter.name} {dtype} 1e{exponent}")


@pytest.mark.parametrize("adapter,dtype", TRITON)
@pytest.mark.parametrize("exponent", [-30, 0, 10])
def test_triton_coefficients_in_range(adapter, dtype, exponent):
    """The fused kernel (interpreter) at magnitudes in float32's normal range."""
    _check_coefficients(adapter, dtype, _state(exponent, 2, False), "mhc", f"triton 1e{exponent}")


@pytest.mark.parametrize("adapter,dtype", TRITON)
def test_triton_coefficients_huge(adapter, dtype):
    _check_coefficients(adapter, dtype, _state(30, 2, False), "mhc", "triton 1e30")


def test_old_formula_was_wrong_and_new_one_is_the_same_math():
    """The regression itself, in numpy: the unscaled float32 formula gives v_hat = 0 at
    1e20 while the scaled one matches float64; at ordinary magnitudes they agree to 1 ulp."""
    x = _state(20, 3, False).astype(np.float32).reshape(2, -1)
    with np.errstate(over="ignore"):
        old = x * (1.0 / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + np.float32(1e-6)))
    assert np.all(old == 0), "float32 mean(v**2) should overflow at 1e20 (the bug this guards)"
    p = _params("mhc")
    z = mhc_core.coefficients(x.reshape(2, N, C), p["phi"].astype(np.float32), p["bias"].astype(np.float32),
                              p["alpha"].astype(np.float32))[2]
    want = mhc_core.coefficients(x.reshape(2, N, C).astype(np.float64), p["phi"], p["bias"], p["alpha"])[2]
    assert_close(z, want, rtol=1e-5, atol=1e-6, case="numpy float32 1e20 res")


@pytest.mark.parametrize("exponent", [-30, -10, 0, 10, 20, 30])
def test_coefficient_gradients_finite_and_match_float64(exponent):
    """torch autograd through the scaled RMS norm: float32 grads of x and phi are finite
    and match float64 autograd at every magnitude."""
    p = _params("mhc")
    x64 = _state(exponent, 4, False)
    w = np.random.default_rng(5).normal(size=(3, 2, N, N))
    grads = {}
    for dt in (torch.float64, torch.float32):
        x = torch.tensor(x64, dtype=dt, requires_grad=True)
        phi = torch.tensor(p["phi"], dtype=dt, requires_grad=True)
        pre, post, res = mhc_core.coefficients(x, phi, torch.tensor(p["bias"], dtype=dt), torch.tensor(p["alpha"], dtype=dt))
        tw = torch.tensor(w, dtype=pre.dtype)
        loss = (pre * tw[0, ..., 0]).sum() + (post * tw[1, ..., 0]).sum() + (res * tw[2]).sum()
        grads[dt] = [g.detach().double().numpy() for g in torch.autograd.grad(loss, (x, phi))]
    for name, g32, g64 in zip(("x", "phi"), grads[torch.float32], grads[torch.float64]):
        assert np.isfinite(g32).all(), f"1e{exponent}: grad {name} not finite"
        assert_close(g32, g64, rtol=1e-4, atol=0.0, case=f"torch grad {name} 1e{exponent}")


@pytest.mark.parametrize("exponent", [-30, 0, 30])
def test_coefficient_gradients_finite_mlx(exponent):
    mx = pytest.importorskip("mlx.core")
    p = _params("mhc")
    x = mx.array(_state(exponent, 6, False).astype(np.float32))
    phi, bias, alpha = (mx.array(p[k].astype(np.float32)) for k in ("phi", "bias", "alpha"))

    def loss(x, phi):
        pre, post, res = mhc_core.coefficients(x, phi, bias, alpha)
        return pre.sum() + (post * post).sum() + (res * res).sum()

    gx, gphi = mx.grad(loss, argnums=(0, 1))(x, phi)
    assert bool(mx.isfinite(gx).all()) and bool(mx.isfinite(gphi).all()), f"mlx grads not finite at 1e{exponent}"


# --- Sinkhorn: backward finite wherever forward is --------------------------------------------


@SETTINGS
@given(bound=st.sampled_from([1.0, 1e2, 1e4, 1e10, 1e30, 3e38]), eps=st.sampled_from([0.0, 1e-6]),
       n=st.integers(1, 6), seed=st.integers(0, 2**16))
def test_sinkhorn_backward_finite_where_forward_is(bound, eps, n, seed):
    """torch (float32, float64) and mlx (float32): finite logits -> finite output and
    finite gradient of a random linear functional of it."""
    rng = np.random.default_rng(seed)
    logits = rng.uniform(-1, 1, size=(3, n, n)) * bound
    w = rng.normal(size=logits.shape)
    for dt in (torch.float32, torch.float64):
        t = torch.tensor(logits, dtype=dt, requires_grad=True)
        m = mhc_core.sinkhorn(t, eps=eps)
        assert torch.isfinite(m).all(), f"torch {dt} forward not finite (bound {bound}, eps {eps})"
        (g,) = torch.autograd.grad((m * torch.tensor(w, dtype=dt)).sum(), t)
        assert torch.isfinite(g).all(), f"torch {dt} backward not finite (bound {bound}, eps {eps}, n {n})"
    try:
        import mlx.core as mx
    except ImportError:
        return
    a = mx.array(logits.astype(np.float32))
    m = mhc_core.sinkhorn(a, eps=eps)
    g = mx.grad(lambda a: (mhc_core.sinkhorn(a, eps=eps) * mx.array(w.astype(np.float32))).sum())(a)
    assert bool(mx.isfinite(m).all()) and bool(mx.isfinite(g).all()), f"mlx sinkhorn (bound {bound}, eps {eps})"


# --- NaN input: reported, not raised, and confined to its token ----------------------------


@pytest.mark.parametrize("ad,dtype", adapters(("float32",)))
def test_nan_input_is_confined_to_its_token(ad, dtype):
    """A NaN in one token's stream makes that token's output NaN and no other; no raise."""
    state = {**{k: v.astype(np.float32) for k, v in _params("mhc").items()},
             "layer.weight": np.eye(C, dtype=np.float32), "layer.bias": np.zeros(C, np.float32)}
    module = ad.make_mhc(N, C, "mhc", "linear", state, "float32")
    x = np.random.default_rng(7).normal(size=(3, N, C))
    x[1, 2, 5] = np.nan
    out = ad.to_numpy(ad.run(module, ad.asarray(x, "float32")))
    assert np.isnan(out[1]).all(), "the NaN token's output should be NaN everywhere (it mixes all streams)"
    assert np.isfinite(out[[0, 2]]).all(), "NaN leaked into other tokens"
