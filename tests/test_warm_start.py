"""Warm start (DESIGN §1): with equal streams, uniform pre (init_params), post = 1 and
phi = 0, a stack of mHC steps computes the plain residual network h <- h + f(h).

Exact case (pre_eps = 0, sinkhorn_eps = 0): the column sums of res are 1 up to rounding,
pre = 1/n, post = 1, so every stream equals the residual network to ~1e-15 per step
(n = 1 is limited by init's logit clip, pre = 1 - 1e-12).

Default eps: res = sinkhorn(b_res) is the same matrix R for every token (phi = 0), its
column sums c_o = s_o / (s_o + eps) are slightly below 1, delta = max_o |1 - c_o|
(about eps: 1e-6). Writing stream o after step k as h_k + e_k[o] and E_k = max_o |e_k[o]|
(per token, 2-norm), the aggregate is h_k + (a mean of the e's), so

    e_{k+1}[o] = (c_o - 1) h_k + sum_i R[i, o] e_k[i] + f(h_k + mean e) - f(h_k)
    E_{k+1} <= delta |h_k| + (max_o c_o) E_k + Lip(f_k) E_k <= (1 + Lip_k) E_k + delta |h_k|

with E_0 = 0: the deviation is about depth * eps * |h| (relative), independent of n,
amplified at most by the layers' Lipschitz constants. The test checks the measured
deviation is below this bound, and equals it after one step (E_1 = delta |h_0|); deeper,
the Lipschitz factors make it loose (measured up to ~10x at depth 7).
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import mhc_core
from runnable_adapters import runnable_adapters
from backend_registry.numpy_adapter import numpy_layer


def _layers(rng, c: int, depth: int):
    """depth random linear layers y = W h + b with |W|_2 ~ 0.5; their Lipschitz constants."""
    states, lips = [], []
    for _ in range(depth):
        w = rng.normal(0.0, 0.5 / np.sqrt(c), (c, c))
        states.append({"layer.weight": w, "layer.bias": rng.normal(0.0, 0.1, c)})
        lips.append(float(np.linalg.norm(w, 2)))
    return states, lips


def _residual_net(h, states):
    hs = [h]
    for s in states:
        h = h + numpy_layer("linear", s)(h)
        hs.append(h)
    return hs


def _mhc_net(x, states, n, c, **cfg):
    p = mhc_core.init_params(n, c, pre_eps=cfg["pre_eps"], dtype=np.float64)
    for s in states:
        x = mhc_core.step(x, numpy_layer("linear", s), p["phi"], p["bias"], p["alpha"], **cfg)
    return x


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.integers(1, 8), c=st.integers(1, 48), depth=st.integers(1, 8),
       batch=st.sampled_from([(), (3,), (2, 2)]), seed=st.integers(0, 2**16))
def test_exact_with_zero_eps(n, c, depth, batch, seed):
    rng = np.random.default_rng(seed)
    states, _ = _layers(rng, c, depth)
    h0 = rng.normal(0.0, 1.0, batch + (c,))
    ref = _residual_net(h0, states)[-1]
    out = _mhc_net(mhc_core.expand_streams(h0, n), states, n, c, pre_eps=0.0, sinkhorn_eps=0.0)
    err = np.abs(out - ref[..., None, :]).max() / np.abs(ref).max()
    assert err <= 2e-12 * depth, f"n={n} C={c} depth={depth}: max rel deviation {err:.3e}"


@settings(max_examples=40, deadline=None, derandomize=True)
@given(n=st.integers(2, 8), c=st.integers(1, 48), depth=st.integers(1, 8), seed=st.integers(0, 2**16))
def test_default_eps_within_derived_bound(n, c, depth, seed):
    eps = mhc_core.MHCConfig().sinkhorn_eps
    rng = np.random.default_rng(seed)
    states, lips = _layers(rng, c, depth)
    h0 = rng.normal(0.0, 1.0, (4, c))
    hs = _residual_net(h0, states)
    out = _mhc_net(mhc_core.expand_streams(h0, n), states, n, c, pre_eps=1e-6, sinkhorn_eps=eps)

    p = mhc_core.init_params(n, c, dtype=np.float64)
    r = mhc_core.sinkhorn(p["bias"][2 * n:].reshape(n, n), eps=eps)
    delta = float(np.abs(1.0 - r.sum(0)).max())
    assert 0.5 * eps < delta < 2 * eps  # the column deficit really is ~eps
    bound = np.zeros(h0.shape[:-1])
    for k in range(depth):
        bound = (1 + lips[k]) * bound + delta * np.linalg.norm(hs[k], axis=-1)
    bound = bound * (1 + 1e-6) + 1e-13 * np.linalg.norm(hs[-1], axis=-1) * depth  # rounding slack
    dev = np.linalg.norm(out - hs[-1][..., None, :], axis=-1).max(-1)  # [tokens]
    assert (dev <= bound).all(), f"deviation {dev} > bound {bound}"
    # after one step the bound is exact: e_1[o] = (c_o - 1) h_0, so dev = delta |h_0|
    one = _mhc_net(mhc_core.expand_streams(h0, n), states[:1], n, c, pre_eps=1e-6, sinkhorn_eps=eps)
    dev1 = np.linalg.norm(one - hs[1][..., None, :], axis=-1).max(-1)
    np.testing.assert_allclose(dev1, delta * np.linalg.norm(h0, axis=-1), rtol=1e-3)


def _backends():
    out = []
    for name, ad in runnable_adapters():
        dtype = "float64" if "float64" in ad.dtypes else "float32"
        out.append(pytest.param(ad, dtype, id=f"{name}-{dtype}"))
    return out


@pytest.mark.parametrize("adapter,dtype", _backends())
@pytest.mark.parametrize("n", [1, 4])
def test_backend_modules_warm_start(adapter, dtype, n):
    """Each backend's MHC modules (init_params weights, eps = 0), stacked 4 deep, equal
    the residual network: to 1e-12 in float64, float32 rounding otherwise."""
    c, depth = 16, 4
    rng = np.random.default_rng(7)
    states, _ = _layers(rng, c, depth)
    h0 = rng.normal(0.0, 1.0, (3, c))
    if dtype == "float32":  # compare on the values the backend actually sees
        h0 = h0.astype(np.float32).astype(np.float64)
        states = [{k: v.astype(np.float32).astype(np.float64) for k, v in s.items()} for s in states]
    ref = _residual_net(h0, states)[-1]
    init = mhc_core.init_params(n, c, pre_eps=0.0, dtype=np.float64)
    x = adapter.asarray(mhc_core.expand_streams(h0, n), dtype)
    for s in states:
        m = adapter.make_mhc(n, c, "mhc", "linear", {**init, **s}, dtype, pre_eps=0.0, sinkhorn_eps=0.0)
        x = adapter.run(m, x)
    err = np.abs(adapter.to_numpy(x) - ref[..., None, :]).max() / np.abs(ref).max()
    assert err <= (1e-11 if dtype == "float64" else 3e-6), f"{adapter.name} {dtype} n={n}: rel deviation {err:.3e}"
