"""mhc_core's history mixing and mHC-lite against independent naive references.

- simplex_projection vs bisection on the threshold (sort-free), exact zeros, gradients.
- history_weights / skip_weights / history_mix vs plain numpy loops.
- birkhoff_res (mHC-lite) vs a loop over itertools.permutations, doubly stochastic to
  float32 rounding for logits up to 1e4, on numpy, torch and mlx.
- coefficients(variant='mhc-lite') vs a naive transcription; init is the warm start.
- history_composite vs running the skip recursion with f = 0.
- every bad input named in the spec raises a clear error.
"""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

import mhc_core as mc

torch = pytest.importorskip("torch")


# --- independent references --------------------------------------------------------------


def simplex_bisection(v: np.ndarray, iters: int = 200) -> np.ndarray:
    """Sort-free reference: find tau with sum(max(v - tau, 0)) = 1 by bisection (float64)."""
    v = np.asarray(v, np.float64)
    lo = v.min(-1, keepdims=True) - 1.0  # sum >= 1 here
    hi = v.max(-1, keepdims=True)  # sum = 0 here
    for _ in range(iters):
        mid = 0.5 * (lo + hi)
        big = np.maximum(v - mid, 0.0).sum(-1, keepdims=True) > 1.0
        lo, hi = np.where(big, mid, lo), np.where(big, hi, mid)
    return np.maximum(v - 0.5 * (lo + hi), 0.0)


def naive_softmax(z):
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def naive_birkhoff(logits: np.ndarray, n: int) -> np.ndarray:
    """res[i, o] = sum over permutations with perm[i] = o of their softmax weight."""
    w = naive_softmax(np.asarray(logits, np.float64))
    out = np.zeros(w.shape[:-1] + (n, n))
    for p, perm in enumerate(itertools.permutations(range(n))):
        for i in range(n):
            out[..., i, perm[i]] += w[..., p]
    return out


# --- simplex projection ------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("k", [1, 2, 5, 16])
def test_simplex_projection_matches_bisection(seed, k):
    rng = np.random.default_rng(seed)
    v = rng.normal(0.0, [0.1, 1.0, 10.0][seed % 3], (7, k))
    got = mc.simplex_projection(v)
    want = simplex_bisection(v)
    np.testing.assert_allclose(got, want, atol=1e-12)
    np.testing.assert_array_equal(got == 0.0, want <= 1e-13)  # the same exact zeros
    np.testing.assert_allclose(got.sum(-1), 1.0, atol=1e-12)


def test_simplex_projection_exact_zeros_and_axis():
    v = np.array([[2.0, 0.0, -1.0, 1.5], [0.1, 0.1, 0.1, 0.1], [0.3, 0.2, 0.1, 0.0]])
    got = mc.simplex_projection(v)
    np.testing.assert_allclose(got[0], [0.75, 0.0, 0.0, 0.25], atol=1e-15)
    np.testing.assert_allclose(got[1], 0.25, atol=1e-15)
    assert (got[0, 1:3] == 0.0).all()  # exact zeros, not small positives
    np.testing.assert_allclose(mc.simplex_projection(v.T, axis=0), got.T, atol=1e-15)
    np.testing.assert_allclose(mc.simplex_projection(v, axis=0), simplex_bisection(v.T).T, atol=1e-12)


def test_simplex_projection_fixes_points_on_the_simplex():
    w = np.array([0.2, 0.0, 0.5, 0.3])
    np.testing.assert_allclose(mc.simplex_projection(w), w, atol=1e-15)


@pytest.mark.parametrize("lib", ["torch", "mlx"])
def test_simplex_projection_float32_backends(lib):
    rng = np.random.default_rng(3)
    v = rng.normal(0.0, 2.0, (5, 6)).astype(np.float32)
    want = simplex_bisection(v)
    if lib == "torch":
        got = mc.simplex_projection(torch.from_numpy(v)).numpy()
    else:
        mx = pytest.importorskip("mlx.core")
        got = np.array(mc.simplex_projection(mx.array(v)))
    np.testing.assert_allclose(got, want, atol=1e-6)
    np.testing.assert_array_equal(got == 0.0, want <= 1e-7)


def test_simplex_projection_gradient_is_the_support_jacobian():
    """dw/dv = I - 1/k on the support, 0 elsewhere: the derivative of the exact projection
    (checked by float64 central differences of the bisection reference too)."""
    v = torch.tensor([1.2, 0.9, -0.5, 0.3, 1.0], dtype=torch.float64, requires_grad=True)
    jac = torch.autograd.functional.jacobian(mc.simplex_projection, v).numpy()
    w = simplex_bisection(v.detach().numpy())
    support = w > 0
    k = support.sum()
    want = np.where(np.outer(support, support), np.eye(5) - 1.0 / k, 0.0)
    np.testing.assert_allclose(jac, want, atol=1e-12)
    h, x0 = 1e-6, v.detach().numpy()
    fd = np.stack([(simplex_bisection(x0 + h * e) - simplex_bisection(x0 - h * e)) / (2 * h)
                   for e in np.eye(5)], axis=1)
    np.testing.assert_allclose(jac, fd, atol=1e-6)


# --- weights and the mix -------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [0.5, 1.0, 3.0])
def test_history_weights_constraints(temperature):
    rng = np.random.default_rng(1)
    logits = rng.normal(0.0, 2.0, (3, 5))
    z = logits / temperature
    np.testing.assert_allclose(mc.history_weights(logits, temperature=temperature), naive_softmax(z), atol=1e-14)
    np.testing.assert_allclose(mc.history_weights(logits, constraint="simplex", temperature=temperature),
                               simplex_bisection(z), atol=1e-12)
    ident = mc.history_weights(logits, constraint="identity", temperature=temperature, epsilon=0.2)
    want = 0.8 * naive_softmax(z)
    want[:, -1] += 0.2
    np.testing.assert_allclose(ident, want, atol=1e-14)
    assert (ident[:, -1] >= 0.2).all()


def test_history_weights_noise_is_the_gumbel_softmax_sample():
    rng = np.random.default_rng(2)
    logits, g = rng.normal(size=4), rng.gumbel(size=4)
    np.testing.assert_allclose(mc.history_weights(logits, temperature=0.7, noise=g),
                               naive_softmax((logits + g) / 0.7), atol=1e-14)


def test_skip_weights_vector_takes_the_newest_logits():
    logits = np.array([-3.0, 0.5, 1.0, 2.0])
    np.testing.assert_allclose(mc.skip_weights(logits, 2), naive_softmax(logits[2:]), atol=1e-15)
    np.testing.assert_allclose(mc.skip_weights(logits, 1), [1.0])


@pytest.mark.parametrize("mixing", ["vector", "matrix"])
def test_skip_weights_takes_k_as_a_numpy_or_0d_integer(mixing):
    """k is a count like history and n: numpy and 0-d integers work, floats and bools do not."""
    logits = np.random.default_rng(0).normal(size=(4,) if mixing == "vector" else (4, 4))
    want = mc.skip_weights(logits, 3, mixing=mixing)
    for k in (np.int64(3), np.array(3)):
        np.testing.assert_array_equal(mc.skip_weights(logits, k, mixing=mixing), want)
    for bad in (3.0, True, np.array([3])):
        with pytest.raises(ValueError, match=r"k \(states in the window\) must be an integer in \[1, K=4\]"):
            mc.skip_weights(logits, bad, mixing=mixing)


def test_skip_weights_matrix_is_the_last_sinkhorn_row():
    rng = np.random.default_rng(4)
    logits = rng.normal(size=(4, 4))
    # naive Sinkhorn with eps = 0: rows then columns, 30 rounds
    m = np.exp(logits[1:, 1:] - logits[1:, 1:].max())
    for _ in range(30):
        m = m / m.sum(-1, keepdims=True)
        m = m / m.sum(-2, keepdims=True)
    got = mc.skip_weights(logits, 3, mixing="matrix", iters=30, sinkhorn_eps=0.0)
    np.testing.assert_allclose(got, m[-1], atol=1e-12)
    ident = mc.skip_weights(logits, 3, mixing="matrix", constraint="identity", epsilon=0.1,
                            iters=30, sinkhorn_eps=0.0)
    np.testing.assert_allclose(ident, 0.9 * m[-1] + [0.0, 0.0, 0.1], atol=1e-12)


@pytest.mark.parametrize("gate", [None, 0.7])
@pytest.mark.parametrize("prune", [0.0, 0.2])
def test_history_skip_matches_a_loop(gate, prune):
    rng = np.random.default_rng(5)
    states = [rng.normal(size=(2, 3, 6)) for _ in range(4)]
    y = rng.normal(size=(2, 3, 6))
    w = np.array([0.1, 0.25, 0.15, 0.5])
    g = None if gate is None else np.array(gate)
    got = mc.history_skip(y, states, w, gate=g, prune_threshold=prune)
    mix = sum(wi * s for wi, s in zip(w, states) if wi >= prune)
    scale = 1.0 if gate is None else 1.0 / (1.0 + math.exp(-gate))
    np.testing.assert_allclose(got, y + scale * mix, atol=1e-14)


def test_history_mix_bfloat16_accumulates_in_float32():
    states = [torch.full((8,), 1.0 + 2.0 ** -7, dtype=torch.bfloat16) for _ in range(3)]
    w = torch.tensor([1 / 3, 1 / 3, 1 / 3])
    out = mc.history_mix(states, w)
    assert out.dtype == torch.bfloat16
    np.testing.assert_allclose(out.float().numpy(), 1.0 + 2.0 ** -7, atol=2.0 ** -7)


def test_history_composite_follows_the_skip_recursion():
    rng = np.random.default_rng(6)
    K, L = 3, 7
    weights, states = [], [np.ones(1)]
    for l in range(L):
        k = min(K, len(states))
        w = rng.uniform(0.0, 1.0, k) * 0.6  # not on the simplex: the gain moves
        weights.append(w)
        states.append(sum(wi * s for wi, s in zip(w, states[-k:])))  # f = 0
        states = states[-K:] if len(states) > K else states
    got = mc.history_composite(weights, K)
    # a second, independent run of the recursion keeping every state
    full = [1.0]
    for w in weights:
        k = len(w)
        full.append(sum(wi * c for wi, c in zip(w, full[-k:])))
    np.testing.assert_allclose(np.array(got, dtype=np.float64), np.abs(full[1:]), rtol=1e-14)
    np.testing.assert_allclose(float(got[-1]), abs(states[-1][0]), rtol=1e-14)
    ones = [np.full(min(K, l + 1), 1.0 / min(K, l + 1)) for l in range(L)]
    np.testing.assert_allclose(np.array(mc.history_composite(ones, K), dtype=float), 1.0, atol=1e-15)


# --- mHC-lite -----------------------------------------------------------------------------


def test_permutation_order_is_lexicographic_identity_first():
    perms = mc.permutation_list(3)
    assert perms == ((0, 1, 2), (0, 2, 1), (1, 0, 2), (1, 2, 0), (2, 0, 1), (2, 1, 0))


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5])
def test_birkhoff_res_matches_the_permutation_loop(n):
    rng = np.random.default_rng(n)
    logits = rng.normal(0.0, 2.0, (2, math.factorial(n)))
    np.testing.assert_allclose(mc.birkhoff_res(logits, n), naive_birkhoff(logits, n), atol=1e-14)


@pytest.mark.parametrize("lib", ["numpy", "torch", "mlx"])
@pytest.mark.parametrize("n", [2, 4, 6])
def test_birkhoff_res_doubly_stochastic_in_float32_up_to_1e4(lib, n):
    rng = np.random.default_rng(10 + n)
    logits = (rng.uniform(-1.0, 1.0, (16, math.factorial(n))) * np.array([[1.0], [1e2], [1e3], [1e4]] * 4))
    logits = logits.astype(np.float32)
    if lib == "numpy":
        res = mc.birkhoff_res(logits, n)
    elif lib == "torch":
        res = mc.birkhoff_res(torch.from_numpy(logits), n).numpy()
    else:
        mx = pytest.importorskip("mlx.core")
        res = np.array(mc.birkhoff_res(mx.array(logits), n))
    assert res.dtype == np.float32
    ulp = n * np.finfo(np.float32).eps
    assert np.abs(res.sum(-1) - 1.0).max() <= ulp
    assert np.abs(res.sum(-2) - 1.0).max() <= ulp
    assert res.min() >= 0.0
    np.testing.assert_allclose(res, naive_birkhoff(logits, n), atol=1e-6)


def naive_lite_coefficients(x, phi, bias, alpha, n, rms_eps=1e-6, pre_eps=1e-6, post_scale=2.0):
    v = x.reshape(x.shape[:-2] + (-1,))
    v_hat = v / np.sqrt((v ** 2).mean(-1, keepdims=True) + rms_eps)
    z = v_hat @ phi
    sig = lambda t: 1.0 / (1.0 + np.exp(-t))  # noqa: E731
    pre = sig(alpha[0] * z[..., :n] + bias[:n]) + pre_eps
    post = post_scale * sig(alpha[1] * z[..., n:2 * n] + bias[n:2 * n])
    res = naive_birkhoff(alpha[2] * z[..., 2 * n:] + bias[2 * n:], n)
    return pre, post, res


@pytest.mark.parametrize("n", [1, 3, 4])
def test_lite_coefficients_match_naive(n):
    rng = np.random.default_rng(20 + n)
    c = 5
    p = mc.init_params(n, c, variant="mhc-lite", phi_std=0.3, dtype=np.float64)
    alpha = np.array([0.5, 0.7, 1.3])
    x = rng.normal(size=(3, n, c))
    got = mc.coefficients(x, p["phi"], p["bias"], alpha, variant="mhc-lite")
    want = naive_lite_coefficients(x, p["phi"], p["bias"], alpha, n)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, atol=1e-12)


def test_lite_init_is_the_warm_start_and_identity_weighted():
    n, c = 4, 6
    p = mc.init_params(n, c, variant="mhc-lite", dtype=np.float64)
    assert p["phi"].shape == (n * c, 24 + 2 * n) and p["bias"].shape == (24 + 2 * n,)
    w = naive_softmax(p["bias"][2 * n:])
    np.testing.assert_allclose(w[0], 1.0 / (1.0 + 3.0 * math.exp(-4.0)), atol=1e-12)  # mhc's init diagonal
    rng = np.random.default_rng(0)
    h = rng.normal(size=(2, c))
    x = np.repeat(h[:, None, :], n, axis=1)  # equal streams
    weight = rng.normal(size=(c, c))
    out = mc.step(x, lambda t: t @ weight, p["phi"], p["bias"], p["alpha"], variant="mhc-lite")
    np.testing.assert_allclose(out, np.repeat((h + h @ weight)[:, None, :], n, axis=1), atol=1e-5)


# --- bad input ---------------------------------------------------------------------------

BAD = [
    ("history-0", lambda: mc.history_composite([], 0), ValueError, ["history", ">= 1", "0"]),
    ("k-0", lambda: mc.skip_weights(np.zeros(3), 0), ValueError, ["k", "[1, K=3]", "0"]),
    ("k-too-big", lambda: mc.skip_weights(np.zeros(3), 4), ValueError, ["[1, K=3]", "4"]),
    ("temperature-0", lambda: mc.history_weights(np.zeros(3), temperature=0.0), ValueError,
     ["temperature", "> 0", "0.0"]),
    ("temperature-neg", lambda: mc.history_weights(np.zeros(3), temperature=-1), ValueError, ["temperature", "> 0"]),
    ("epsilon-1", lambda: mc.history_weights(np.zeros(3), constraint="identity", epsilon=1.0), ValueError,
     ["epsilon", "[0, 1)", "1.0"]),
    ("epsilon-neg", lambda: mc.history_weights(np.zeros(3), epsilon=-0.1), ValueError, ["epsilon", "[0, 1)"]),
    ("constraint", lambda: mc.history_weights(np.zeros(3), constraint="sparsemax"), ValueError,
     ["constraint", "softmax", "simplex", "identity", "sparsemax"]),
    ("mixing", lambda: mc.skip_weights(np.zeros(3), 2, mixing="tensor"), ValueError, ["mixing", "vector", "matrix"]),
    ("matrix-shape", lambda: mc.skip_weights(np.zeros(3), 2, mixing="matrix"), ValueError, ["[K, K]", "[3]"]),
    ("matrix-simplex", lambda: mc.skip_weights(np.zeros((3, 3)), 2, mixing="matrix", constraint="simplex"),
     ValueError, ["simplex", "vector"]),
    ("simplex-empty-axis", lambda: mc.simplex_projection(np.zeros((2, 0))), ValueError, ["K >= 1", "[2, 0]"]),
    ("simplex-axis-range", lambda: mc.simplex_projection(np.zeros((2, 3)), axis=2), ValueError,
     ["axis", "[-2, 1]", "got 2"]),
    ("int-logits", lambda: mc.history_weights(np.zeros(3, dtype=np.int64)), TypeError, ["logits", "floating"]),
    ("state-shapes", lambda: mc.history_mix([np.zeros((2, 4)), np.zeros((2, 5))], np.ones(2) / 2), ValueError,
     ["one shape", "[2, 4]", "states[1]", "[2, 5]"]),
    ("weights-count", lambda: mc.history_mix([np.zeros(4)] * 3, np.ones(2)), ValueError, ["weights", "[3]", "[2]"]),
    ("empty-window", lambda: mc.history_mix([], np.ones(0)), ValueError, ["non-empty", "window"]),
    ("y-shape", lambda: mc.history_skip(np.zeros(5), [np.zeros(4)], np.ones(1)), ValueError, ["y", "[5]", "[4]"]),
    ("gate-shape", lambda: mc.history_mix([np.zeros(4)], np.ones(1), gate=np.zeros(2)), ValueError,
     ["gate", "scalar", "[2]"]),
    ("lite-n7-res", lambda: mc.birkhoff_res(np.zeros(5040), 7), ValueError, ["n <= 6", "n=7"]),
    ("lite-n7-params", lambda: mc.param_shapes(7, 4, "mhc-lite"), ValueError, ["mhc-lite", "n <= 6", "n=7"]),
    ("lite-logit-count", lambda: mc.birkhoff_res(np.zeros(5), 3), ValueError, ["[..., 6]", "n=3", "[5]"]),
    ("lite-phi-width", lambda: mc.coefficients(np.ones((3, 4)), np.zeros((12, 15)), np.zeros(15), np.zeros(3),
                                              variant="mhc-lite"), ValueError, ["phi", "n! + 2n", "[12, 12]"]),
    ("composite-shape", lambda: mc.history_composite([np.ones(2)], 3), ValueError, ["weights_per_layer[0]", "[1]"]),
]


@pytest.mark.parametrize("call,err,parts", [c[1:] for c in BAD], ids=[c[0] for c in BAD])
def test_bad_input(call, err, parts):
    with pytest.raises(err) as info:
        call()
    for part in parts:
        assert part in str(info.value), f"{part!r} not in {info.value}"


def test_stochastic_identity_keeps_the_newest_floor():
    """Gumbel noise perturbs the logits; the identity constraint's eps floor still holds."""
    rng = np.random.default_rng(8)
    logits = np.array([3.0, 2.0, 1.0, -20.0])
    for _ in range(20):
        w = mc.history_weights(logits, constraint="identity", epsilon=0.1, noise=rng.gumbel(size=4))
        assert w[-1] >= 0.1 and abs(w.sum() - 1.0) < 1e-12


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402


@settings(max_examples=60, deadline=None)
@given(arrays(np.float64, st.integers(1, 9), elements=st.floats(-1e3, 1e3)))
def test_simplex_projection_property(v):
    """On the simplex, optimal (matches bisection), and idempotent, for any finite input."""
    w = mc.simplex_projection(v)
    assert (w >= 0).all() and abs(w.sum() - 1.0) <= 1e-9 * max(1.0, np.abs(v).max())
    np.testing.assert_allclose(w, simplex_bisection(v), atol=1e-9 * max(1.0, np.abs(v).max()))
    np.testing.assert_allclose(mc.simplex_projection(w), w, atol=1e-12)


@pytest.mark.parametrize("gate, prune", [(None, 0.0), (np.array(0.3), 0.0), (None, 0.2), (np.array(-1.0), 0.25)])
def test_applied_weights_are_what_history_mix_applies(gate, prune):
    """Mixing the basis vectors e_0..e_{k-1} returns the weights history_mix applied."""
    w = np.array([0.1, 0.3, 0.6])
    basis = list(np.eye(3))
    want = mc.history_mix(basis, w, gate=gate, prune_threshold=prune)
    got = mc.history.applied_weights(w, gate=gate, prune_threshold=prune)
    np.testing.assert_allclose(got, want, rtol=1e-15, atol=0)
