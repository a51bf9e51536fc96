"""mhc_core.init.pre_bias: unequal pre weights that keep the warm start exact (float64 oracle)."""
from __future__ import annotations

import numpy as np
import pytest

import mhc_core
from mhc_core.init import pre_bias


def test_pre_bias_gives_the_weights():
    w = [0.4, 0.3, 0.2, 0.1]
    b = pre_bias(w, pre_eps=1e-6)
    np.testing.assert_allclose(1.0 / (1.0 + np.exp(-b)) + 1e-6, w, rtol=1e-14)


def test_unequal_pre_keeps_the_warm_start_exact():
    """Equal streams through an mHC step with pre = (0.4, 0.3, 0.2, 0.1), phi = 0 and
    sinkhorn_eps = 0: every output stream is x + f(x) (float64, to 1e-12), as with 1/n."""
    n, c = 4, 8
    rng = np.random.default_rng(0)
    p = mhc_core.init_params(n, c, dtype=np.float64)
    p["bias"][:n] = pre_bias([0.4, 0.3, 0.2, 0.1])
    w = rng.normal(size=(c, c))
    f = lambda h: np.tanh(h @ w)  # noqa: E731
    x0 = rng.normal(size=(2, 3, c))
    x = np.repeat(x0[..., None, :], n, axis=-2)
    out = mhc_core.step(x, f, p["phi"], p["bias"], p["alpha"], sinkhorn_eps=0.0)
    np.testing.assert_allclose(out, np.repeat((x0 + f(x0))[..., None, :], n, axis=-2), rtol=0, atol=1e-12)
    pre, _, _ = mhc_core.coefficients(x, p["phi"], p["bias"], p["alpha"], sinkhorn_eps=0.0)
    np.testing.assert_allclose(pre[0, 0], [0.4, 0.3, 0.2, 0.1], rtol=1e-12)


@pytest.mark.parametrize("weights, match", [
    ([0.5, 0.3, 0.3], "must sum to 1"),
    ([1.2, -0.2], "must each lie in"),
    ([0.5, float("nan"), 0.5], "must each lie in"),
    ([[0.5, 0.5]], "1-d list"),
])
def test_pre_bias_rejects_bad_weights(weights, match):
    with pytest.raises(ValueError, match=match):
        pre_bias(weights)
