"""The variants and the public API at the edges a hostile user reaches for.

- every variant (mhc, hc, mhc-lite, residual) at edge settings (alpha = 0, post_scale = 0,
  iters = 1, eps = 0 / huge, n = 1, C = 1, n = 16, empty leading axes) against the
  independent naive oracle (tests/naive_oracle.py) in float64;
- the residual step refuses a layer output that would broadcast, or is not a float array
  of x's library, as the other variants do;
- the simplex projection stays on the simplex for logits far from 0 (it returned all zeros
  once |v| >> 1) and propagates NaN, against a sort-free bisection;
- gain_report / aggregate / composite against a direct numpy computation in the paper's
  orientation, and on iterators, empty and mismatched inputs;
- history functions refuse arrays of two libraries and integer weights with a clear error.
"""
from __future__ import annotations

import math

import numpy as np
import pytest

import mhc_core as mc
import naive_oracle as naive

torch = pytest.importorskip("torch")

RTOL = ATOL = 1e-10  # float64, the conformance suite's float64 tolerance


def _params(rng, n: int, c: int, variant: str):
    """Random phi, bias, alpha of the right widths (n! res logits for mhc-lite)."""
    r = math.factorial(n) if variant == "mhc-lite" else n * n
    return (rng.normal(0.0, 1.0 / math.sqrt(n * c), (n * c, r + 2 * n)), rng.normal(0.0, 1.0, (r + 2 * n,)),
            rng.uniform(0.5, 1.5, (3,)))


def _close(got, want, what: str):
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != naive {want.shape}"
    err = float(np.max(np.abs(got - want), initial=0.0))
    tol = ATOL + RTOL * float(np.max(np.abs(want), initial=0.0))
    assert err <= tol, f"{what}: max |spec - naive| = {err:.3e} > {tol:.3e}"


# --- every variant at edge settings vs the naive oracle ----------------------------------

EDGE_SETTINGS = {
    "defaults": {},
    "iters1": {"iters": 1},
    "iters1-eps0": {"iters": 1, "sinkhorn_eps": 0.0},
    "eps0": {"sinkhorn_eps": 0.0},
    "eps-huge": {"sinkhorn_eps": 1e3},
    "post-scale0": {"post_scale": 0.0},
    "no-eps": {"pre_eps": 0.0, "rms_eps": 0.0},
    "rms-eps-huge": {"rms_eps": 1e6},
}
SHAPES = {"mhc": [(1, 3), (2, 1), (5, 3)], "hc": [(1, 1), (3, 2), (6, 3)], "mhc-lite": [(1, 2), (3, 1), (6, 2)]}
EDGE_CASES = [(v, n, c, s) for v, shapes in SHAPES.items() for n, c in shapes for s in EDGE_SETTINGS]


@pytest.mark.parametrize("alpha_zero", [False, True], ids=["alpha", "alpha0"])
@pytest.mark.parametrize("variant,n,c,setting", EDGE_CASES, ids=[f"{v}-n{n}-C{c}-{s}" for v, n, c, s in EDGE_CASES])
def test_coefficients_and_step_at_edge_settings_match_naive(variant, n, c, setting, alpha_zero):
    rng = np.random.default_rng([n, c, len(setting), alpha_zero])
    phi, bias, alpha = _params(rng, n, c, variant)
    if alpha_zero:
        alpha = np.zeros(3)
    cfg = EDGE_SETTINGS[setting]
    x = rng.normal(size=(2, 3, n, c))
    got = mc.coefficients(x, phi, bias, alpha, variant=variant, **cfg)
    want = naive.coefficients(x, phi, bias, alpha, variant=variant, **cfg)
    for name, g, w in zip(("pre", "post", "res"), got, want):
        _close(g, w, f"coefficients.{name}")
    if alpha_zero and variant != "hc":  # from the biases alone: the same for every token
        for g in got:
            flat = np.asarray(g).reshape(6, -1)
            assert np.array_equal(flat, np.broadcast_to(flat[:1], flat.shape))
    w_layer = rng.normal(size=(c, c))
    _close(mc.step(x, lambda h: np.tanh(h @ w_layer), phi, bias, alpha, variant=variant, **cfg),
           naive.step(x, lambda h: np.tanh(h @ w_layer), phi, bias, alpha, variant=variant, **cfg), "step")


def test_sixteen_streams_on_the_reference_path_match_naive():
    rng = np.random.default_rng(16)
    phi, bias, alpha = _params(rng, 16, 2, "mhc")
    x = rng.normal(size=(2, 16, 2))
    for variant in ("mhc", "hc"):
        for g, w in zip(mc.coefficients(x, phi, bias, alpha, variant=variant),
                        naive.coefficients(x, phi, bias, alpha, variant=variant)):
            _close(g, w, f"{variant} n=16")
    xt = torch.tensor(x, dtype=torch.float32)
    res = mc.coefficients(xt, *(torch.tensor(a, dtype=torch.float32) for a in (phi, bias, alpha)))[2]
    np.testing.assert_allclose(res.double().numpy(), naive.coefficients(x, phi, bias, alpha)[2], atol=2e-5)  # float32


@pytest.mark.parametrize("variant", ["mhc", "hc", "mhc-lite"])
def test_empty_leading_axes_give_empty_outputs(variant):
    n, c = 3, 2
    phi, bias, alpha = _params(np.random.default_rng(0), n, c, variant)
    for lib in ("numpy", "torch"):
        x = np.ones((0, 4, n, c))
        args = (x, phi, bias, alpha) if lib == "numpy" else tuple(torch.tensor(a) for a in (x, phi, bias, alpha))
        pre, post, res = mc.coefficients(*args, variant=variant)
        assert tuple(pre.shape) == (0, 4, n) and tuple(res.shape) == (0, 4, n, n)
        assert tuple(mc.step(args[0], lambda h: h, *args[1:], variant=variant).shape) == (0, 4, n, c)


@pytest.mark.parametrize("n", range(1, 7))
def test_lite_is_an_exact_convex_combination_of_permutations(n):
    """res = sum_p w_p P_p: the naive oracle's loop over permutations, and rows / columns
    summing to 1 to float64 rounding even for logits of size 50."""
    rng = np.random.default_rng(n)
    logits = rng.normal(0.0, 50.0, (4, math.factorial(n)))
    res = mc.birkhoff_res(logits, n)
    _close(res, np.array([naive.birkhoff_one(list(t), n) for t in logits]), "birkhoff_res")
    assert np.abs(res.sum(-1) - 1.0).max() <= 4 * n * np.finfo(np.float64).eps
    assert np.abs(res.sum(-2) - 1.0).max() <= 4 * n * np.finfo(np.float64).eps
    assert res.min() >= 0.0


def test_lite_refuses_seven_streams_everywhere():
    for call in (lambda: mc.permutation_list(7), lambda: mc.birkhoff_res(np.zeros(5040), 7),
                 lambda: mc.init_params(7, 2, variant="mhc-lite"),
                 lambda: mc.coefficients(np.ones((1, 7, 2)), np.zeros((14, 5054)), np.zeros(5054), np.ones(3),
                                         variant="mhc-lite")):
        with pytest.raises(ValueError, match="n <= 6"):
            call()


def test_residual_parameters_need_one_stream():
    assert mc.param_shapes(1, 4, "residual") == {} and mc.init_params(1, 4, variant="residual") == {}
    for call in (lambda: mc.param_shapes(2, 4, "residual"), lambda: mc.init_params(3, 4, variant="residual")):
        with pytest.raises(ValueError, match="n must be 1"):
            call()


# --- the residual step checks its layer's output -----------------------------------------


def test_residual_step_matches_naive():
    x = np.random.default_rng(0).normal(size=(2, 3, 1, 4))
    _close(mc.step(x, np.tanh, variant="residual"), naive.step(x, np.tanh, variant="residual"), "residual step")


@pytest.mark.parametrize("output,error,words", [
    (lambda h: np.ones(h.shape[-1]), ValueError, "y must have shape [4, 3]"),  # [C]: broadcast over tokens
    (lambda h: np.ones((1, h.shape[-1])), ValueError, "y must have shape [4, 3]"),
    (lambda h: h[..., :2], ValueError, "y must have shape [4, 3]"),
    (lambda h: np.ones(h.shape, dtype=np.int64), TypeError, "y must be a floating-point array"),
    (lambda h: None, TypeError, "y must be a floating-point array"),
    (lambda h: torch.tensor(h), TypeError, "one library"),
], ids=["C-vector", "1xC", "narrow", "int", "None", "torch"])
def test_residual_step_rejects_a_bad_layer_output(output, error, words):
    x = np.ones((4, 1, 3))
    with pytest.raises(error, match=words.replace("[", r"\[").replace("]", r"\]")):
        mc.step(x, output, variant="residual")


# --- the simplex projection far from 0 ---------------------------------------------------


def _bisection(v: np.ndarray) -> np.ndarray:
    """Sort-free reference for the projection onto the simplex, after shifting max(v) to 0
    (the projection of v + c is that of v)."""
    v = np.asarray(v, np.float64) - np.max(v)
    lo, hi = -1.0, 0.0  # sum(max(v - tau, 0)) >= 1 at tau = -1, = 0 at tau = 0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if np.maximum(v - mid, 0.0).sum() > 1.0 else (lo, mid)
    return np.maximum(v - 0.5 * (lo + hi), 0.0)


@pytest.mark.parametrize("scale", [1e8, 1e17, 1e30, 1e300])
def test_simplex_projection_far_from_zero_stays_on_the_simplex(scale):
    rng = np.random.default_rng(int(math.log10(scale)))
    for v in (np.array([1.0, 1.0, 0.0]) * scale, scale + rng.normal(size=5),
              np.array([1.0, 1.0 - 1e-16, -1.0]) * scale):
        w = mc.simplex_projection(v)
        np.testing.assert_allclose(w, _bisection(v), atol=1e-12)
        assert abs(w.sum() - 1.0) <= 1e-12 and w.min() >= 0.0
    v32 = np.array([1e20, 1.0, 0.0], np.float32)  # float32: S_j - 1 == S_j from |v| ~ 1e8 on
    np.testing.assert_allclose(mc.simplex_projection(v32), _bisection(v32), atol=1e-7)
    w = mc.history_weights(np.array([3.0, 1.0]), constraint="simplex", temperature=1e-300)  # z = 3e300, 1e300
    np.testing.assert_allclose(w, _bisection(np.array([3e300, 1e300])), atol=1e-12)


hypothesis = pytest.importorskip("hypothesis")
from hypothesis import given, settings, strategies as st  # noqa: E402
from hypothesis.extra.numpy import arrays  # noqa: E402


@pytest.mark.filterwarnings("ignore:overflow encountered")  # float32 v - max(v) < -3.4e38 -> -inf: weight 0
@settings(max_examples=80, deadline=None)
@given(arrays(np.float64, st.integers(1, 9), elements=st.floats(-1e300, 1e300)),
       st.sampled_from([np.float64, np.float32]))
def test_simplex_projection_is_on_the_simplex_at_any_magnitude(v, dtype):
    """Any finite v, float64 or float32: w >= 0 summing to 1 to rounding, the bisection's
    answer (on the same, rounded, numbers)."""
    v = v.astype(dtype) if dtype is np.float64 or np.all(np.abs(v) < 3e38) else np.clip(v, -3e38, 3e38).astype(dtype)
    w = mc.simplex_projection(v)
    tol = 10 * v.size * np.finfo(dtype).eps
    assert (w >= 0).all() and abs(float(w.sum()) - 1.0) <= tol
    np.testing.assert_allclose(w, _bisection(v.astype(np.float64)), atol=tol)


def test_simplex_projection_gradient_after_the_shift():
    """d w / d v = I - 1/k on the k support entries: the max shift adds no gradient."""
    v = torch.tensor([1e3 + 0.4, 1e3 + 0.1, 1e3 - 5.0, 1e3 + 0.3], dtype=torch.float64, requires_grad=True)
    w = mc.simplex_projection(v)
    support = (w > 0).numpy()
    k = int(support.sum())
    assert k == 3
    jac = torch.autograd.functional.jacobian(mc.simplex_projection, v).numpy()
    want = np.where(np.outer(support, support), np.eye(4) - 1.0 / k, 0.0)
    np.testing.assert_allclose(jac, want, atol=1e-12)


def test_simplex_projection_propagates_nan():
    w = mc.simplex_projection(np.array([np.nan, 0.0, 1.0]))
    assert np.isnan(w).all()  # softmax's answer too, not weights silently 0
    masked = mc.simplex_projection(np.array([-np.inf, 0.0, 0.5]))  # -inf: weight exactly 0
    assert masked[0] == 0.0
    np.testing.assert_allclose(masked[1:], _bisection(np.array([0.0, 0.5])), atol=1e-12)


# --- stability metrics vs a direct computation -------------------------------------------


def _direct_gains(res_layers):
    """Per layer {key: per-token values} in the paper's orientation H = res^T, composite
    H_l ... H_1, from plain numpy (no mhc_core)."""
    out, prod = [], None
    for res in res_layers:
        h = np.swapaxes(np.asarray(res, np.float64), -1, -2)
        prod = h if prod is None else h @ prod
        out.append({
            "forward_gain": np.abs(h).sum(-1).max(-1), "backward_gain": np.abs(h).sum(-2).max(-1),
            "composite_forward_gain": np.abs(prod).sum(-1).max(-1),
            "composite_backward_gain": np.abs(prod).sum(-2).max(-1),
            "identity_distance": np.sqrt(((np.asarray(res) - np.eye(h.shape[-1])) ** 2).sum((-1, -2))),
        })
    return out


@pytest.mark.parametrize("source", ["list", "generator", "torch"])
def test_gain_report_matches_a_direct_computation(source):
    rng = np.random.default_rng(3)
    res = [rng.normal(size=(7, 4, 4)) for _ in range(5)]
    given = {"list": res, "generator": (r for r in res), "torch": [torch.tensor(r) for r in res]}[source]
    report = mc.gain_report(given)
    assert len(report) == len(res)  # a generator was used up by the composite, giving []
    for rec, want in zip(report, _direct_gains(res)):
        for key, values in want.items():
            for stat, fn in (("max", np.max), ("mean", np.mean), ("min", np.min)):
                assert rec[key][stat] == pytest.approx(float(fn(values)), rel=1e-12), (key, stat)


def test_composite_broadcasts_a_token_independent_layer_and_refuses_other_tokens():
    rng = np.random.default_rng(4)
    a, b = rng.normal(size=(1, 3, 3)), rng.normal(size=(5, 3, 3))
    np.testing.assert_allclose(mc.composite([a, b])[-1], a @ b, rtol=1e-14)
    with pytest.raises(ValueError, match=r"res_layers\[1\] has leading \(token\) shape \[5\]"):
        mc.composite([rng.normal(size=(2, 3, 3)), b])


def test_aggregate_refuses_no_tokens():
    assert mc.aggregate(np.array([1.0, 3.0])) == {"max": 3.0, "mean": 2.0, "min": 1.0}
    with pytest.raises(ValueError, match="at least one element"):
        mc.aggregate(np.ones((0, 4)))


# --- history functions: two libraries, integers, iterators -------------------------------


def test_history_functions_refuse_two_libraries():
    w, s = np.ones(1), [np.ones(3)]
    calls = [
        lambda: mc.history_skip(torch.ones(3), s, w),  # was an AttributeError ('ndarray' has no 'to')
        lambda: mc.history_skip(np.ones(3), [torch.ones(3)], torch.ones(1)),
        lambda: mc.skip_weights(np.zeros((3, 3)), 2, mixing="matrix", noise=torch.zeros(2, 2)),
        lambda: mc.history_composite([np.array([1.0]), torch.tensor([0.5, 0.5])], 3),
    ]
    for call in calls:
        with pytest.raises(TypeError, match="one library"):
            call()


def test_history_composite_refuses_integer_weights_and_reads_iterators():
    with pytest.raises(TypeError, match=r"weights_per_layer\[0\] must be a floating-point array"):
        mc.history_composite([np.array([1])], 3)
    weights = [np.array([1.0]), np.array([0.25, 0.75]), np.array([0.2, 0.3, 0.5])]
    assert mc.history_gain_report(iter(weights), 3) == mc.history_gain_report(weights, 3)
    assert len(mc.history_gain_report(weights, 3)) == 3


def test_skip_weights_checks_its_sinkhorn_settings_for_both_mixings():
    for mixing, logits in (("vector", np.zeros(3)), ("matrix", np.zeros((3, 3)))):
        with pytest.raises(ValueError, match="iters must be an integer >= 1"):
            mc.skip_weights(logits, 2, mixing=mixing, iters=0)
        with pytest.raises(ValueError, match="sinkhorn_eps must be a finite number >= 0"):
            mc.skip_weights(logits, 2, mixing=mixing, sinkhorn_eps=-1.0)


# --- stream reduction names its own argument ---------------------------------------------


def test_reduce_streams_names_its_weights():
    x = np.random.default_rng(6).normal(size=(2, 4, 3))
    w = np.random.default_rng(7).uniform(size=(2, 4))
    np.testing.assert_allclose(mc.reduce_streams(x, w), naive.pre_aggregate(x, w), rtol=1e-14)
    np.testing.assert_allclose(mc.reduce_streams(x), x.mean(-2), rtol=1e-14)
    with pytest.raises(ValueError, match=r"weights must have shape \[2, 4\]"):  # was "pre must have ..."
        mc.reduce_streams(x, np.ones(4))
    with pytest.raises(TypeError, match="weights must be a floating-point array"):
        mc.reduce_streams(x, np.ones((2, 4), dtype=np.int64))


def test_metrics_of_low_precision_layers_compute_in_float32():
    """bf16 / fp16 res: gains, distances and products in float32 (an fp16 product of 6 gains
    of 7 overflowed at 65504), against float64 numpy on the same rounded numbers."""
    res = [np.random.default_rng(l).uniform(0.0, 3.5, (3, 4, 4)) for l in range(6)]
    for dtype in (torch.bfloat16, torch.float16):
        layers = [torch.tensor(r).to(dtype) for r in res]
        exact = [t.double().numpy() for t in layers]
        comps = mc.composite(layers)
        assert all(c.dtype == torch.float32 for c in comps) and bool(torch.isfinite(comps[-1]).all())
        report = mc.gain_report(layers)
        for rec, want in zip(report, _direct_gains(exact)):
            for key, values in want.items():
                assert rec[key]["max"] == pytest.approx(float(values.max()), rel=1e-5), (dtype, key)


def test_composite_of_layers_in_different_dtypes():
    """torch's matmul refuses bf16 @ float32: the product runs in float32 (float64 if any)."""
    a = np.random.default_rng(8).uniform(size=(2, 3, 3))
    b = np.random.default_rng(9).uniform(size=(2, 3, 3))
    for first, second, want in ((torch.bfloat16, torch.float32, torch.float32),
                                (torch.float16, torch.bfloat16, torch.float32),
                                (torch.bfloat16, torch.float64, torch.float64)):
        ta, tb = torch.tensor(a).to(first), torch.tensor(b).to(second)
        out = mc.composite([ta, tb])[-1]
        assert out.dtype == want
        np.testing.assert_allclose(out.double().numpy(), ta.double().numpy() @ tb.double().numpy(), rtol=1e-6)


# --- Sinkhorn in low precision computes in float32 ---------------------------------------


@pytest.mark.parametrize("eps", [1e-6, 0.0])
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_sinkhorn_low_precision_is_float32_math_rounded_once(dtype, eps):
    """bf16 / fp16 logits: the 2 * iters normalisations run in float32 and only the output is
    rounded to the input's dtype (20 rounds in bf16 were off by 1e-2)."""
    lg = torch.tensor(np.random.default_rng(10).normal(0.0, 3.0, (50, 4, 4))).to(getattr(torch, dtype))
    got = mc.sinkhorn(lg, eps=eps)
    assert got.dtype == lg.dtype
    want = naive.sinkhorn(lg.double().numpy(), eps=eps)  # the same (rounded) logits, float64
    half_ulp = 2.0 ** -(8 if dtype == "bfloat16" else 11)  # of numbers in [0.5, 1)
    np.testing.assert_allclose(got.double().numpy(), want, rtol=0, atol=half_ulp + 1e-6)
