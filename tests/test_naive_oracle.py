"""The spec (`mhc_core` on numpy float64) against the independent naive oracle
(`naive_oracle.py`, a loop-by-loop transcription of DESIGN §1), on every conformance case.

- forward: sinkhorn, coefficients (mhc and hc), pre_aggregate, post_residual, step, head,
  elementwise within the float64 tolerance of the conformance suite;
- gradients: torch autograd through `mhc_core` in float64 (whatever backward the spec
  registers) vs Richardson-extrapolated central differences of the naive oracle, as
  directional derivatives along random directions, within the conformance FD_RTOL.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "conformance"))

import mhc_core  # noqa: E402
import naive_oracle as naive  # noqa: E402
from backend_registry.numpy_adapter import numpy_layer  # noqa: E402
from cases import CASES, FD_RTOL, TOLERANCES, inputs, rng_for, weights  # noqa: E402

RTOL, ATOL = TOLERANCES["float64"]
MIXING = [c for c in CASES if c.variant != "residual"]
MHC_CASES = [c for c in MIXING if c.variant == "mhc"]


def ids(cases):
    return [c.id for c in cases]


def assert_matches(got, want, what: str):
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != naive {want.shape}"
    err = np.abs(got - want)
    tol = ATOL + RTOL * float(np.max(np.abs(want)))
    k = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
    assert float(err.max(initial=0.0)) <= tol, (
        f"{what}: max |spec - naive| = {err.max():.3e} > {tol:.3e} at {k}: spec {got[k]!r}, naive {want[k]!r}")


def head_params(case):
    rng = rng_for(case, "head")
    n, c = case.n, case.c
    return {"phi": rng.normal(0.0, 1.0 / np.sqrt(n * c), (n * c, n)),
            "bias": rng.normal(0.0, 0.5, (n,)), "alpha": rng.uniform(0.5, 1.5, (1,))}


# ---------------------------------------------------------------------------------------
# The naive oracle on its own (so a bug in it cannot hide behind agreement)
# ---------------------------------------------------------------------------------------
def test_naive_sinkhorn_eps0_is_column_stochastic_and_near_doubly_stochastic():
    logits = np.random.default_rng(0).normal(0.0, 1.0, (3, 4, 4))
    m = naive.sinkhorn(logits, iters=50, eps=0.0)
    np.testing.assert_allclose(m.sum(-2), 1.0, atol=1e-14)
    np.testing.assert_allclose(m.sum(-1), 1.0, atol=1e-9)


def test_naive_sinkhorn_one_stream_by_hand():
    # n = 1: softmax gives 1, + eps; each of the 2*iters - 1 normalisations maps m to m / (m + eps)
    eps, iters = 0.1, 3
    m = 1.0 + eps
    for _ in range(2 * iters - 1):
        m = m / (m + eps)
    assert naive.sinkhorn(np.array([[[5.0]]]), iters=iters, eps=eps)[0, 0, 0] == pytest.approx(m, rel=1e-15)


def test_naive_warm_start_is_the_residual_step():
    n, c = 4, 5
    x = np.broadcast_to(np.random.default_rng(1).normal(size=(2, 1, c)), (2, n, c))
    bias = np.concatenate([np.full(n, np.log(1 / n / (1 - 1 / n))), np.zeros(n), 50 * np.eye(n).ravel()])
    f = np.tanh
    out = naive.step(x, f, np.zeros((n * c, n * n + 2 * n)), bias, np.full(3, 0.01),
                     pre_eps=0.0, sinkhorn_eps=0.0, post_scale=2.0)
    want = x[:, 0, :] + f(x[:, 0, :])
    # post = 2 * sigmoid(0) = 1, pre = 1/n, columns of res sum to 1 (eps = 0): out[o] = x + f(x)
    np.testing.assert_allclose(out, np.broadcast_to(want[:, None, :], out.shape), atol=1e-9)


# ---------------------------------------------------------------------------------------
# Forward: spec vs naive
# ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("case", MHC_CASES, ids=ids(MHC_CASES))
def test_sinkhorn_matches_naive(case):
    kw = {"iters": case.config["iters"], "eps": case.config["sinkhorn_eps"]}
    logits = inputs(case)["logits"]
    assert_matches(mhc_core.sinkhorn(logits, **kw), naive.sinkhorn(logits, **kw), f"{case.id} sinkhorn")


@pytest.mark.parametrize("case", MIXING, ids=ids(MIXING))
def test_coefficients_match_naive(case):
    st, x = weights(case), inputs(case)["x"]
    args = (x, st["phi"], st["bias"], st["alpha"])
    got = mhc_core.coefficients(*args, variant=case.variant, **case.config)
    want = naive.coefficients(*args, variant=case.variant, **case.config)
    for name, g, w in zip(("pre", "post", "res"), got, want):
        assert_matches(g, w, f"{case.id} coefficients.{name}")


@pytest.mark.parametrize("case", MIXING, ids=ids(MIXING))
def test_pre_aggregate_and_post_residual_match_naive(case):
    d = inputs(case)
    assert_matches(mhc_core.pre_aggregate(d["x"], d["pre"]), naive.pre_aggregate(d["x"], d["pre"]),
                   f"{case.id} pre_aggregate")
    args = (d["x"], d["y"], d["post"], d["res"])
    assert_matches(mhc_core.post_residual(*args), naive.post_residual(*args), f"{case.id} post_residual")


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_step_matches_naive(case):
    st, x = weights(case), inputs(case)["x"]
    f = numpy_layer(case.layer, st)
    got = mhc_core.step(x, f, st.get("phi"), st.get("bias"), st.get("alpha"), variant=case.variant, **case.config)
    want = naive.step(x, f, st.get("phi"), st.get("bias"), st.get("alpha"), variant=case.variant, **case.config)
    assert_matches(got, want, f"{case.id} step")


@pytest.mark.parametrize("case", MIXING, ids=ids(MIXING))
def test_head_matches_naive(case):
    p, x = head_params(case), inputs(case)["x"]
    assert_matches(mhc_core.head(x, p["phi"], p["bias"], p["alpha"]), naive.head(x, p["phi"], p["bias"], p["alpha"]),
                   f"{case.id} head")


# ---------------------------------------------------------------------------------------
# Gradients: torch autograd through mhc_core vs finite differences of the naive oracle
# ---------------------------------------------------------------------------------------
torch = pytest.importorskip("torch")


def _richardson(loss, h: float = 1e-3) -> float:
    d1 = (loss(h) - loss(-h)) / (2 * h)
    d2 = (loss(h / 2) - loss(-h / 2)) / h
    return (4 * d2 - d1) / 3


def check_directional(case, spec_loss, naive_loss, theta: dict, what: str, directions: int = 1):
    """autograd of spec_loss (torch float64, mhc_core) vs FD of naive_loss (numpy) along
    random directions: |<g, d> - FD| <= FD_RTOL * sum|g * d|."""
    leaves = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in theta.items()}
    grads = torch.autograd.grad(spec_loss(leaves), list(leaves.values()))
    rng = rng_for(case, "naive-directions-" + what)
    for (name, value), g in zip(theta.items(), grads):
        g = g.numpy()
        for _ in range(directions):
            d = rng.normal(0.0, 1.0, value.shape) * (np.sqrt(np.mean(value ** 2)) + 1e-3)
            fd = _richardson(lambda t: naive_loss({**theta, name: value + t * d}))
            dot, scale = float(np.sum(g * d)), float(np.sum(np.abs(g * d)))
            assert abs(dot - fd) <= FD_RTOL * scale + 1e-13, (
                f"{case.id} {what} d/d{name}: autograd <g,d> = {dot!r}, naive FD = {fd!r}, "
                f"|diff| = {abs(dot - fd):.3e} > {FD_RTOL * scale + 1e-13:.3e}")


def torch_layer(kind: str, w: dict):
    """The conformance layer in plain torch ops, from {'layer.weight': tensor, ...}."""
    if kind == "linear":
        return lambda h: h @ w["layer.weight"].T + w["layer.bias"]
    return lambda h: torch.nn.functional.silu(h @ w["layer.fc1.weight"].T + w["layer.fc1.bias"]) @ \
        w["layer.fc2.weight"].T + w["layer.fc2.bias"]


@pytest.mark.parametrize("case", MHC_CASES, ids=ids(MHC_CASES))
def test_sinkhorn_gradient_matches_naive_fd(case):
    kw = {"iters": case.config["iters"], "eps": case.config["sinkhorn_eps"]}
    d = inputs(case)
    cot = rng_for(case, "sinkhorn-cot").normal(size=d["logits"].shape)
    check_directional(
        case,
        lambda t: (mhc_core.sinkhorn(t["logits"], **kw) * torch.from_numpy(cot)).sum(),
        lambda a: float(np.sum(naive.sinkhorn(a["logits"], **kw) * cot)),
        {"logits": d["logits"]}, "sinkhorn", directions=2)


@pytest.mark.parametrize("case", MIXING, ids=ids(MIXING))
def test_coefficients_gradient_matches_naive_fd(case):
    st, x = weights(case), inputs(case)["x"]
    rng = rng_for(case, "coeff-cot")
    n, lead = case.n, case.batch
    cots = [rng.normal(size=lead + (n,)), rng.normal(size=lead + (n,)), rng.normal(size=lead + (n, n))]
    kw = {"variant": case.variant, **case.config}

    def spec(t):
        out = mhc_core.coefficients(t["x"], t["phi"], t["bias"], t["alpha"], **kw)
        return sum((o * torch.from_numpy(c)).sum() for o, c in zip(out, cots))

    def ref(a):
        out = naive.coefficients(a["x"], a["phi"], a["bias"], a["alpha"], **kw)
        return float(sum(np.sum(o * c) for o, c in zip(out, cots)))

    check_directional(case, spec, ref, {"x": x, "phi": st["phi"], "bias": st["bias"], "alpha": st["alpha"]},
                      "coefficients")


@pytest.mark.parametrize("case", CASES, ids=ids(CASES))
def test_step_gradient_matches_naive_fd(case):
    st, d = weights(case), inputs(case)
    cot = d["cotangent"]
    mix = {k: st[k] for k in ("phi", "bias", "alpha") if k in st}
    layer_w = {k: v for k, v in st.items() if k.startswith("layer.")}

    def spec(t):
        f = torch_layer(case.layer, t)
        out = mhc_core.step(t["x"], f, t.get("phi"), t.get("bias"), t.get("alpha"), variant=case.variant,
                            **case.config)
        return (out * torch.from_numpy(cot)).sum()

    def ref(a):
        f = numpy_layer(case.layer, a)
        out = naive.step(a["x"], f, a.get("phi"), a.get("bias"), a.get("alpha"), variant=case.variant, **case.config)
        return float(np.sum(out * cot))

    check_directional(case, spec, ref, {"x": d["x"], **mix, **layer_w}, "step")


@pytest.mark.parametrize("case", MIXING, ids=ids(MIXING))
def test_head_gradient_matches_naive_fd(case):
    p, x = head_params(case), inputs(case)["x"]
    cot = rng_for(case, "head-cot").normal(size=case.batch + (case.c,))
    check_directional(
        case,
        lambda t: (mhc_core.head(t["x"], t["phi"], t["bias"], t["alpha"]) * torch.from_numpy(cot)).sum(),
        lambda a: float(np.sum(naive.head(a["x"], a["phi"], a["bias"], a["alpha"]) * cot)),
        {"x": x, **p}, "head")
