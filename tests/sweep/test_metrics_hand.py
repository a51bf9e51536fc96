"""mhc_core.metrics on matrices small enough to check by hand (our layout: res[i, o] is
the weight from input stream i to output stream o; the paper's H = res^T).

forward Amax gain  = max over columns of res of sum |res[:, o]|  (= max row sum of H)
backward Amax gain = max over rows of res of sum |res[i, :]|     (= max column sum of H)
"""
import os
import sys

import numpy as np
import pytest

import mhc_core
from mhc_core.metrics import aggregate, amax_gain, composite, gain_report, identity_distance

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "..", "scripts"))
import depth_sweep  # noqa: E402

A = np.array([[2.0, 0.0], [1.0, 1.0]])  # column sums 3, 1; row sums 2, 2
B = np.array([[1.0, 1.0], [0.0, 0.0]])
D = np.array([[2.0, 0.0], [0.0, 1.0]])


def _gains(res):
    f, b = amax_gain(np.asarray(res, dtype=np.float64))
    return float(f), float(b)


@pytest.mark.parametrize("perm", [(0, 1, 2, 3), (1, 0, 3, 2), (3, 2, 1, 0), (2, 0, 3, 1)], ids=str)
def test_permutation_has_unit_gains(perm):
    p = np.eye(4)[list(perm)]
    assert _gains(p) == (1.0, 1.0)
    comp = composite([p, p.T, p, p])[-1]
    assert _gains(comp) == (1.0, 1.0)


@pytest.mark.parametrize("res, fwd, bwd", [
    (A, 3.0, 2.0),                                   # H = [[2, 1], [0, 1]]: rows 3, 1; cols 2, 2
    (np.array([[1.0, -2.0], [0.5, 0.5]]), 2.5, 3.0),  # absolute values: cols 1.5, 2.5; rows 3, 1
    (0.5 * np.eye(3), 0.5, 0.5),
    (np.ones((1, 1)), 1.0, 1.0),                     # the residual baseline
], ids=["lower-triangular", "negative-entries", "half-identity", "residual-1x1"])
def test_single_matrix_gains_by_hand(res, fwd, bwd):
    assert _gains(res) == pytest.approx((fwd, bwd), abs=1e-12), f"res={res.tolist()}"


def test_composite_is_running_product_in_layer_order():
    # D @ B = [[2, 2], [0, 0]] (bwd 4) differs from B @ D = [[2, 1], [0, 0]] (bwd 3).
    c = composite([D, B])
    np.testing.assert_array_equal(c[0], D)
    np.testing.assert_array_equal(c[1], [[2.0, 2.0], [0.0, 0.0]])
    assert _gains(c[1]) == (2.0, 4.0)
    assert _gains(composite([B, D])[1]) == (2.0, 3.0)


def test_composite_matches_applying_the_layers():
    """Two post_residual steps with y = 0 map x to composite^T x (the layout the metric assumes)."""
    rng = np.random.default_rng(0)
    r1, r2 = rng.normal(size=(3, 3)), rng.normal(size=(3, 3))
    x = rng.normal(size=(3, 5))  # [n, C]
    zero_post, zero_y = np.zeros(3), np.zeros(5)
    out = mhc_core.post_residual(mhc_core.post_residual(x, zero_y, zero_post, r1), zero_y, zero_post, r2)
    np.testing.assert_allclose(out, composite([r1, r2])[1].T @ x, atol=1e-12)


def test_per_token_gains_and_aggregate():
    tokens = np.stack([np.eye(2)[[1, 0]], A, 0.5 * np.eye(2)])  # [3 tokens, 2, 2]
    fwd, bwd = amax_gain(tokens)
    np.testing.assert_array_equal(fwd, [1.0, 3.0, 0.5])
    np.testing.assert_array_equal(bwd, [1.0, 2.0, 0.5])
    assert aggregate(fwd) == {"max": 3.0, "mean": 1.5, "min": 0.5}


def test_identity_distance_by_hand():
    assert float(identity_distance(np.eye(3))) == 0.0
    assert float(identity_distance(A)) == pytest.approx(np.sqrt(2.0), abs=1e-12)  # A - I = [[1, 0], [1, 0]]


def test_gain_report_and_sweep_summary_by_hand():
    """Layers [A, D]: composite A @ D = [[4, 0], [2, 1]] -> fwd 6, bwd 4; the sweep's peak is
    the max over layers, its whole-network composite the last layer's."""
    rep = gain_report([A, D])
    assert rep[0]["forward_gain"]["max"] == 3.0 and rep[1]["forward_gain"]["max"] == 2.0
    assert rep[1]["composite_forward_gain"]["max"] == 6.0
    assert rep[1]["composite_backward_gain"]["max"] == 4.0
    s = depth_sweep.gain_summary(rep)
    assert s["forward_gain"] == {"max": 3.0, "mean": 2.5, "min": 2.0}
    assert s["backward_gain"] == {"max": 2.0, "mean": 2.0, "min": 2.0}
    assert s["composite_forward_gain"]["max"] == 6.0
    assert s["composite_forward_gain_peak"] == 6.0
    assert s["composite_backward_gain_peak"] == 4.0
    assert s["per_layer"]["composite_forward_gain_max"] == [3.0, 6.0]
    assert s["identity_distance"]["max"] == pytest.approx(np.sqrt(2.0))  # D - I = diag(1, 0) -> 1


def test_doubly_stochastic_products_keep_unit_gain():
    """Sinkhorn outputs (column sums 1 - eps-ish, rows within 1e-6) compose to gain ~1 over 100 layers."""
    rng = np.random.default_rng(1)
    layers = [mhc_core.sinkhorn(rng.normal(0, 2, size=(4, 4)), iters=20, eps=1e-6) for _ in range(100)]
    f, b = _gains(composite(layers)[-1])
    assert abs(f - 1.0) < 1e-4 and abs(b - 1.0) < 1e-4, (f, b)
