"""The conformance checks, as functions returning `Result`s (pytest asserts them,
scripts/conformance.py tabulates them; neither repeats the logic).

Every check takes adapters (backend_registry.BackendAdapter), a `Case` and a dtype name:

- forward_components: sinkhorn, coefficients (pre, post, res), pre_aggregate,
  post_residual through `adapter.core_fn`, vs the numpy float64 oracle.
- forward_step: the whole step (adapter.make_mhc + run) around the case's layer.
- gradients: float64 -> directional derivatives vs central finite differences of the
  oracle (Richardson-extrapolated); float32 / bf16 -> elementwise vs a float64 run of
  the same backend (another differentiable backend's when it has no float64).
- cross_backend: two backends on identical weights, outputs and gradients elementwise.
- interchange: see interchange.py; shim: see shim.py.

`applies(check, ...)` says why a combination is not run (None when it is).
"""
from __future__ import annotations

import functools

import numpy as np

import mhc_core
from backend_registry.numpy_adapter import numpy_layer

from cases import CASES, DTYPES, FD_RTOL, TOLERANCES, Case, inputs, round_all, round_to, rng_for, weights
from compare import Result, compare

COMPONENT_CHECKS = ("sinkhorn", "coefficients", "pre_aggregate", "post_residual")


def applies(check: str, adapter, case: Case, dtype: str) -> str | None:
    """None if `check` runs for this backend/case/dtype, else the reason it does not."""
    if dtype not in adapter.dtypes:
        return f"{adapter.name} has no {dtype}"
    if check == "sinkhorn" and case.variant != "mhc":
        return "sinkhorn is used by the mhc variant only"
    if check in COMPONENT_CHECKS and case.variant == "residual":
        return "the residual baseline has no coefficients"
    if case.variant == "mhc-lite" and adapter.name == "torch-triton":
        return "mhc-lite has no Triton kernel (impl='triton' refuses it; tested in test_history_backends.py)"
    if check == "gradients" and not adapter.differentiable:
        return f"{adapter.name} is forward-only"
    return None


def _labels(adapter, check, case, dtype):
    return {"backend": adapter.name, "check": check, "dtype": dtype, "case": case.id}


def _tol(dtype):
    rtol, atol = TOLERANCES[dtype]
    return {"rtol": rtol, "atol": atol}


# ---------------------------------------------------------------------------------------
# The oracle: mhc_core on numpy float64
# ---------------------------------------------------------------------------------------
def oracle_step(case: Case, x: np.ndarray, state: dict[str, np.ndarray]) -> np.ndarray:
    f = numpy_layer(case.layer, state, np.float64)
    return mhc_core.step(x, f, state.get("phi"), state.get("bias"), state.get("alpha"),
                         variant=case.variant, **case.config)


def _sinkhorn_kw(case: Case) -> dict:
    return {"iters": case.config["iters"], "eps": case.config["sinkhorn_eps"]}


def _coeff_kw(case: Case) -> dict:
    return {"variant": case.variant, **case.config}


# ---------------------------------------------------------------------------------------
# Forward
# ---------------------------------------------------------------------------------------
def forward_components(adapter, case: Case, dtype: str) -> list[Result]:
    """sinkhorn, coefficients, pre_aggregate, post_residual vs the oracle."""
    data = round_all(inputs(case), dtype)
    st = round_all(weights(case), dtype)
    a = lambda v: adapter.asarray(v, dtype)  # noqa: E731
    out: list[Result] = []

    def put(check, qty, got, want):
        out.append(compare(adapter.to_numpy(got), want, quantity=qty, **_tol(dtype),
                           **_labels(adapter, f"forward.{check}", case, dtype)))

    if applies("sinkhorn", adapter, case, dtype) is None:
        got = adapter.core_fn("sinkhorn")(a(data["logits"]), **_sinkhorn_kw(case))
        put("sinkhorn", "res", got, mhc_core.sinkhorn(data["logits"], **_sinkhorn_kw(case)))
    if applies("coefficients", adapter, case, dtype) is None:
        args = (data["x"], st["phi"], st["bias"], st["alpha"])
        got = adapter.core_fn("coefficients")(*map(a, args), **_coeff_kw(case))
        want = mhc_core.coefficients(*args, **_coeff_kw(case))
        for qty, g, w in zip(("pre", "post", "res"), got, want):
            put("coefficients", qty, g, w)
    if applies("pre_aggregate", adapter, case, dtype) is None:
        got = adapter.core_fn("pre_aggregate")(a(data["x"]), a(data["pre"]))
        put("pre_aggregate", "h", got, mhc_core.pre_aggregate(data["x"], data["pre"]))
    if applies("post_residual", adapter, case, dtype) is None:
        args = (data["x"], data["y"], data["post"], data["res"])
        got = adapter.core_fn("post_residual")(*map(a, args))
        put("post_residual", "out", got, mhc_core.post_residual(*args))
    return out


@functools.lru_cache(maxsize=512)
def _run(adapter, case: Case, dtype: str, data_dtype: str, grads: bool):
    """(out, grads-or-None) as numpy float64 for the case's module in `dtype`, on data
    rounded to `data_dtype` (so runs in two dtypes can see identical numbers)."""
    st = round_all(weights(case), data_dtype)
    data = round_all(inputs(case), data_dtype)
    module = adapter.make_mhc(case.n, case.c, case.variant, case.layer, st, dtype, **case.config)
    x = adapter.asarray(data["x"], dtype)
    if not grads:
        return adapter.to_numpy(adapter.run(module, x)), None
    out, g = adapter.step_and_grads(module, x, adapter.asarray(data["cotangent"], dtype))
    return adapter.to_numpy(out), {k: adapter.to_numpy(v) for k, v in g.items()}


def forward_step(adapter, case: Case, dtype: str) -> list[Result]:
    """The whole step around the case's layer vs the oracle."""
    got, _ = _run(adapter, case, dtype, dtype, False)
    want = oracle_step(case, round_to(inputs(case)["x"], dtype), round_all(weights(case), dtype))
    return [compare(got, want, quantity="out", **_tol(dtype),
                    **_labels(adapter, "forward.step", case, dtype))]


# ---------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------
def expected_grad_names(case: Case) -> set[str]:
    return {"x", *weights(case)}


def _missing(adapter, case, dtype, check, grads) -> list[Result]:
    names = expected_grad_names(case)
    if set(grads) == names:
        return []
    return [Result(abs=float("inf"), rel=float("inf"), tol=0.0, rtol=0.0, quantity="keys",
                   note=f"gradient keys {sorted(grads)} != expected {sorted(names)}",
                   **_labels(adapter, check, case, dtype))]


def _richardson(loss, h: float) -> float:
    """d/dt loss(t) at 0 from central differences at h and h/2 (error O(h^4))."""
    d1 = (loss(h) - loss(-h)) / (2 * h)
    d2 = (loss(h / 2) - loss(-h / 2)) / h
    return (4 * d2 - d1) / 3


def gradients_fd(adapter, case: Case, directions: int = 2) -> list[Result]:
    """float64 gradients vs finite differences of the oracle, along random directions d
    (scaled to each tensor's rms): |<g, d> - FD| <= FD_RTOL * sum|g * d|."""
    _, grads = _run(adapter, case, "float64", "float64", True)
    labels = _labels(adapter, "grad.fd", case, "float64")
    out = _missing(adapter, case, "float64", "grad.fd", grads)
    data, st = inputs(case), weights(case)
    cot = data["cotangent"]
    theta = {"x": data["x"], **st}
    rng = rng_for(case, "directions")

    for name in sorted(expected_grad_names(case) & set(grads)):
        g = grads[name]
        for k in range(directions):
            d = rng.normal(0.0, 1.0, theta[name].shape) * (np.sqrt(np.mean(theta[name] ** 2)) + 1e-3)

            def loss(t, name=name, d=d):
                moved = {**theta, name: theta[name] + t * d}
                x = moved.pop("x")
                return float(np.sum(oracle_step(case, x, moved) * cot))

            fd = _richardson(loss, 1e-3)
            dot = float(np.sum(g * d))
            scale = float(np.sum(np.abs(g * d)))
            err = abs(dot - fd)
            out.append(Result(abs=err, rel=err / scale if scale > 0 else err,
                              tol=FD_RTOL * scale + 1e-13, rtol=FD_RTOL, quantity=name,
                              index=(k,), got=dot, want=fd,
                              note="directional derivative <g,d> vs finite differences", **labels))
    return out


def reference_f64(adapter, others: list):
    """The differentiable float64 backend low-precision gradients are compared with."""
    if "float64" in adapter.dtypes:
        return adapter
    for o in others:
        if o.differentiable and "float64" in o.dtypes:
            return o
    return None


def gradients_lowp(adapter, case: Case, dtype: str, reference) -> list[Result]:
    """float32 / bf16 output and gradients elementwise vs `reference`'s float64 run on
    the same (rounded) weights, inputs and cotangent."""
    out_d, g_d = _run(adapter, case, dtype, dtype, True)
    _, g_ref = _run(reference, case, "float64", dtype, True)
    check = "grad" if reference is adapter else f"grad.vs.{reference.name}"
    res = _missing(adapter, case, dtype, check, g_d)
    for name in sorted(expected_grad_names(case) & set(g_d) & set(g_ref)):
        res.append(compare(g_d[name], g_ref[name], quantity=name, **_tol(dtype),
                           **_labels(adapter, check, case, dtype)))
    return res


def gradients(adapter, case: Case, dtype: str, others: list) -> list[Result]:
    if dtype == "float64":
        return gradients_fd(adapter, case)
    ref = reference_f64(adapter, others)
    if ref is None:
        return []
    return gradients_lowp(adapter, case, dtype, ref)


# ---------------------------------------------------------------------------------------
# Backends against each other
# ---------------------------------------------------------------------------------------
def cross_backend(a, b, case: Case, dtype: str) -> list[Result]:
    """`a` vs `b` on identical weights: the step output, and every gradient when both
    are differentiable."""
    both_grad = a.differentiable and b.differentiable
    out_a, g_a = _run(a, case, dtype, dtype, both_grad)
    out_b, g_b = _run(b, case, dtype, dtype, both_grad)
    labels = _labels(a, f"cross.{b.name}", case, dtype)
    res = [compare(out_a, out_b, quantity="out", **_tol(dtype), **labels)]
    if both_grad:
        for name in sorted(set(g_a) & set(g_b)):
            res.append(compare(g_a[name], g_b[name], quantity=f"grad.{name}", **_tol(dtype), **labels))
        res += _missing(a, case, dtype, f"cross.{b.name}", g_a) + _missing(b, case, dtype, f"cross.{a.name}", g_b)
    return res


# ---------------------------------------------------------------------------------------
# What runs: shared by the pytest parametrisation and the script
# ---------------------------------------------------------------------------------------
def combinations(adapters: list, check: str):
    """(adapter, case, dtype) for every applicable combination, in a stable order."""
    for ad in adapters:
        for case in CASES:
            for dtype in DTYPES:
                if applies(check, ad, case, dtype) is None:
                    yield ad, case, dtype


def pairs(adapters: list):
    """Unordered backend pairs (a, b), a before b in registry order."""
    return [(a, b) for i, a in enumerate(adapters) for b in adapters[i + 1:]]


def cross_combinations(adapters: list):
    for a, b in pairs(adapters):
        for case in CASES:
            for dtype in DTYPES:
                if applies("step", a, case, dtype) is None and applies("step", b, case, dtype) is None:
                    yield a, b, case, dtype
