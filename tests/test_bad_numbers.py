"""Numeric arguments, the same on every entry point and backend (DESIGN §3):

- inf and nan are refused wherever a number is taken (eps, scales), with a clear
  ValueError: as an eps or a scale they gave inf / nan coefficients;
- numpy scalars and 0-d arrays of every registry library (numpy, torch, mlx) are accepted
  for every numeric argument and normalized to Python int / float; integer arguments refuse
  floats, and bools are refused everywhere.

Accepted values are checked against the numpy float64 oracle run with Python numbers.
"""
from __future__ import annotations

import math
import os
import sys

import numpy as np
import pytest

import mhc_core as mc
from mhc_core import checks
from mhc_core.module_args import head_args, mhc_args

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "conformance"))
import backends  # noqa: E402  (tests/conformance/backends.py: registry adapters + packages)

N, C = 4, 8
RNG = np.random.default_rng(0)
X = RNG.normal(size=(2, N, C))                                      # [2, n=4, C=8]
P = mc.init_params(N, C, phi_std=0.3, alpha=1.0, seed=1, dtype=np.float64)
PHI, BIAS, ALPHA = P["phi"], P["bias"], P["alpha"]
HP = mc.init_head_params(N, C, dtype=np.float64)
F = lambda h: np.tanh(h)  # noqa: E731
BAD = [math.inf, -math.inf, math.nan]
EPS_ARGS = ("rms_eps", "pre_eps", "sinkhorn_eps", "post_scale")

# (id, call with the bad value v, the argument's name in the message)
CORE_NONFINITE = [
    *[(f"coefficients-{k}", (lambda k: lambda v: mc.coefficients(X, PHI, BIAS, ALPHA, **{k: v}))(k), k)
      for k in EPS_ARGS],
    *[(f"step-{k}", (lambda k: lambda v: mc.step(X, F, PHI, BIAS, ALPHA, **{k: v}))(k), k) for k in EPS_ARGS],
    *[(f"MHCConfig-{k}", (lambda k: lambda v: mc.MHCConfig(**{k: v}))(k), k) for k in EPS_ARGS],
    ("sinkhorn-eps", lambda v: mc.sinkhorn(np.zeros((3, 3)), eps=v), "eps"),
    ("head-rms_eps", lambda v: mc.head(X, HP["phi"], HP["bias"], HP["alpha"], rms_eps=v), "rms_eps"),
    ("head-eps", lambda v: mc.head(X, HP["phi"], HP["bias"], HP["alpha"], eps=v), "eps"),
    ("head_weights-rms_eps", lambda v: mc.head_weights(X, HP["phi"], HP["bias"], HP["alpha"], rms_eps=v),
     "rms_eps"),
    ("init_params-pre_eps", lambda v: mc.init_params(N, C, pre_eps=v), "pre_eps"),
    ("init_params-alpha", lambda v: mc.init_params(N, C, alpha=v), "alpha"),
    ("init_params-phi_std", lambda v: mc.init_params(N, C, phi_std=v), "phi_std"),
    ("init_head_params-eps", lambda v: mc.init_head_params(N, C, eps=v), "eps"),
]


@pytest.mark.parametrize("value", BAD, ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("call,name", [pytest.param(c, n, id=i) for i, c, n in CORE_NONFINITE])
def test_core_refuses_non_finite_numbers(call, name, value):
    with pytest.raises(ValueError) as info:
        call(value)
    msg = str(info.value)
    assert name in msg and "finite" in msg and repr(value) in msg, msg


# ---------------------------------------------------------------------------------------
# Scalars of every library: numpy scalars and 0-d arrays
# ---------------------------------------------------------------------------------------
def _adapters():
    return [pytest.param(ad, id=ad.name) for ad in backends.load(None)]


def _scalar_kinds(adapter):
    """(id, float maker, int maker): a numpy scalar and a 0-d array of the adapter's library."""
    backends.require(adapter)
    ops = mc.namespace(adapter.asarray(np.ones(1), "float32"))
    zero_d = lambda v: adapter.asarray(np.array(v), "float32")  # noqa: E731
    zero_d_int = lambda v: ops.astype(adapter.asarray(np.array(float(v)), "float32"), ops.xp.int32)  # noqa: E731
    return [("numpy-scalar", np.float32, np.int64), (f"{adapter.name}-0d", zero_d, zero_d_int)]


@pytest.mark.parametrize("adapter", _adapters())
def test_core_accepts_library_scalars(adapter):
    """mhc_core functions with numpy / 0-d scalars give the oracle's numbers for the same
    values as Python numbers."""
    for kind, real, integer in _scalar_kinds(adapter):
        cfg = dict(iters=7, rms_eps=1e-3, pre_eps=1e-4, sinkhorn_eps=1e-5, post_scale=1.5)
        wrapped = {k: (integer(v) if k == "iters" else real(v)) for k, v in cfg.items()}
        plain = {k: (v if k == "iters" else float(np.float32(v))) for k, v in cfg.items()}
        got = mc.coefficients(X, PHI, BIAS, ALPHA, **wrapped)
        want = mc.coefficients(X, PHI, BIAS, ALPHA, **plain)
        for g, w in zip(got, want):
            np.testing.assert_array_equal(g, w, err_msg=kind)
        config = mc.MHCConfig(**wrapped)
        assert config.as_dict() == plain, kind
        assert all(type(v) is (int if k == "iters" else float) for k, v in config.as_dict().items()), kind
        np.testing.assert_array_equal(mc.sinkhorn(PHI[:4, :4], iters=integer(3), eps=real(1e-3)),
                                      mc.sinkhorn(PHI[:4, :4], iters=3, eps=float(np.float32(1e-3))), err_msg=kind)
        assert mc.param_shapes(integer(N), integer(C)) == mc.param_shapes(N, C), kind
        np.testing.assert_array_equal(mc.expand_streams(X[:, 0], integer(3)), mc.expand_streams(X[:, 0], 3))


# (id, argument overrides of MHC / mhc_args, words of the ValueError)
REFUSED = [
    ("n-bool", dict(n=True), ["n", "integer", "True"]),
    ("dim-float", dict(dim=8.0), ["dim", "integer", "8.0"]),
    ("dim-numpy-float", dict(dim=np.float64(8.0)), ["dim", "integer"]),
    ("iters-bool", dict(iters=True), ["iters", "integer"]),
    ("iters-float", dict(iters=3.0), ["iters", "integer", "3.0"]),
    ("rms_eps-bool", dict(rms_eps=False), ["rms_eps", "finite number >= 0", "False"]),
    ("rms_eps-numpy-bool", dict(rms_eps=np.bool_(True)), ["rms_eps", "finite number >= 0"]),
    ("rms_eps-1d", dict(rms_eps=np.array([1e-6])), ["rms_eps", "finite number >= 0"]),
    ("rms_eps-str", dict(rms_eps="1e-6"), ["rms_eps", "finite number >= 0", "'1e-6'"]),
    ("post_scale-negative", dict(post_scale=np.float32(-1.0)), ["post_scale", ">= 0"]),
    ("seed-negative", dict(seed=-1), ["seed", "integer >= 0"]),
    *[(f"{k}-{tag}", {k: v}, [k, "finite number >= 0"])
      for k in EPS_ARGS for tag, v in (("inf", math.inf), ("nan", math.nan), ("numpy-inf", np.float32(np.inf)))],
]
MHC_DEFAULTS = dict(n=N, dim=C, variant="mhc", iters=20, rms_eps=1e-6, pre_eps=1e-6, sinkhorn_eps=1e-6,
                    post_scale=2.0, init=None, seed=None, impl="auto")


@pytest.mark.parametrize("kwargs,words", [pytest.param(k, w, id=i) for i, k, w in REFUSED])
def test_module_args_refuse(kwargs, words):
    args = {**MHC_DEFAULTS, **kwargs}
    with pytest.raises(ValueError) as info:
        mhc_args(F, args.pop("n"), args.pop("dim"), impls=("auto", "reference"), **args)
    msg = str(info.value)
    assert all(w in msg for w in words), msg


@pytest.mark.parametrize("value", BAD, ids=["inf", "-inf", "nan"])
@pytest.mark.parametrize("name", ["rms_eps", "eps"])
def test_head_args_refuse_non_finite(name, value):
    with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0"):
        head_args(N, C, **{"rms_eps": 1e-6, "eps": 1e-6, name: value})


def test_checks_normalize_to_python_numbers():
    assert type(checks.non_negative(np.float32(0.5), "a")) is float
    assert type(checks.integer(np.int64(3), "a")) is int
    assert checks.integer(np.array(3), "a") == 3
    assert checks.real(np.array(-2.5), "a") == -2.5
    with pytest.raises(ValueError, match="a must be a finite number, got inf"):
        checks.real(math.inf, "a")


# ---------------------------------------------------------------------------------------
# Each backend's MHC / StreamHead (through the registry adapters)
# ---------------------------------------------------------------------------------------
def _module_backends():
    return [pytest.param(ad, id=ad.name) for ad in backends.load(None)
            if isinstance(ad, backends.Broken) or hasattr(backends.package(ad), "MHC")]


def _layer_and_state(adapter):
    from backend_registry.numpy_adapter import layer_shapes

    rng = np.random.default_rng(2)
    state = {**{k: v.astype(np.float32) for k, v in P.items()},
             **{k: rng.normal(0, 0.3, s) for k, s in layer_shapes("linear", C).items()}}
    return adapter.make_mhc(N, C, "mhc", "linear", state, "float32").layer, state


@pytest.mark.parametrize("adapter", _module_backends())
def test_modules_refuse_non_finite_numbers(adapter):
    backends.require(adapter)
    pkg = backends.package(adapter)
    layer, _ = _layer_and_state(adapter)
    for name in EPS_ARGS:
        for value in BAD:
            with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0, got {value!r}"):
                pkg.MHC(layer, N, C, **{name: value})
    for name in ("rms_eps", "eps"):
        for value in BAD:
            with pytest.raises(ValueError, match=f"{name} must be a finite number >= 0, got {value!r}"):
                pkg.StreamHead(N, C, **{name: value})


@pytest.mark.parametrize("adapter", _module_backends())
def test_modules_accept_library_scalars(adapter, assert_close):
    """MHC / StreamHead built with numpy scalars or 0-d arrays for every numeric argument:
    Python numbers inside, and the forward equals the numpy float64 oracle's."""
    backends.require(adapter)
    pkg = backends.package(adapter)
    layer, state = _layer_and_state(adapter)
    from backend_registry.numpy_adapter import numpy_layer

    x = adapter.asarray(X, "float32")
    for kind, real, integer in _scalar_kinds(adapter):
        m = pkg.MHC(layer, integer(N), integer(C), iters=integer(5), rms_eps=real(1e-3), pre_eps=real(1e-4),
                    sinkhorn_eps=real(1e-5), post_scale=real(1.5), seed=integer(0),
                    init={k: state[k] for k in ("phi", "bias", "alpha")})
        assert type(m.n) is int and type(m.dim) is int, kind
        cfg = m.config.as_dict()
        assert all(type(v) is (int if k == "iters" else float) for k, v in cfg.items()), (kind, cfg)
        assert cfg == dict(iters=5, rms_eps=float(np.float32(1e-3)), pre_eps=float(np.float32(1e-4)),
                           sinkhorn_eps=float(np.float32(1e-5)), post_scale=1.5), kind
        want = mc.step(X, numpy_layer("linear", state), *(state[k].astype(np.float64) for k in ("phi", "bias", "alpha")),
                       **cfg)
        assert_close(adapter.run(m, x), want, 1e-5, f"{adapter.name}-{kind}-MHC")
        head = pkg.StreamHead(integer(N), integer(C), rms_eps=real(1e-3), eps=real(1e-4))
        assert type(head.n) is int and type(head.rms_eps) is float and type(head.eps) is float, kind
