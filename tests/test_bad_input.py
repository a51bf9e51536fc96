"""Bad input gives a clear error naming what was expected: every public mhc_core function,
and each registry backend's MHC / StreamHead modules and load_state (DESIGN §3).

One case each: wrong rank, mismatched n, mismatched C, integer dtype, arrays from two
libraries, iters < 1, bad variant, phi / bias / alpha of the wrong shape, non-arrays and
non-callable layers. Each case names the error type and the substrings its message
must contain (what was expected, and usually what arrived).
"""
from __future__ import annotations

import os
import sys

import numpy as np
import pytest

import mhc_core as mc
import backend_registry as registry

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "conformance"))
import backends  # noqa: E402  (tests/conformance/backends.py: registry adapters + packages)

N, C = 4, 8
X = np.ones((2, N, C))                      # [2, n=4, C=8]
P = mc.init_params(N, C, dtype=np.float64)  # phi [32, 24], bias [24], alpha [3]
PHI, BIAS, ALPHA = P["phi"], P["bias"], P["alpha"]
HP = mc.init_head_params(N, C, dtype=np.float64)  # phi [32, 4], bias [4], alpha [1]
RES = np.broadcast_to(np.eye(N), (2, N, N)).copy()
F = lambda h: h  # noqa: E731
INT_X = np.ones((2, N, C), dtype=np.int64)

# (id, call, error type, substrings the message must contain)
CORE_CASES = [
    ("sinkhorn-rank", lambda: mc.sinkhorn(np.ones(3)), ValueError, ["[..., n, n]", "(3,)"]),
    ("sinkhorn-not-square", lambda: mc.sinkhorn(np.ones((3, 4))), ValueError, ["square", "(3, 4)"]),
    ("sinkhorn-int", lambda: mc.sinkhorn(np.ones((3, 3), dtype=np.int32)), TypeError, ["logits", "floating"]),
    ("sinkhorn-iters0", lambda: mc.sinkhorn(np.ones((3, 3)), iters=0), ValueError, ["iters", ">= 1", "0"]),
    ("sinkhorn-eps-negative", lambda: mc.sinkhorn(np.ones((3, 3)), eps=-1e-6), ValueError, ["eps", ">= 0"]),
    ("coefficients-rank", lambda: mc.coefficients(np.ones(C), PHI, BIAS, ALPHA), ValueError, ["[..., n, C]", "rank"]),
    ("coefficients-n-mismatch", lambda: mc.coefficients(np.ones((2, 3, C)), PHI, BIAS, ALPHA),
     ValueError, ["phi", "[24, 15]", "n=3"]),
    ("coefficients-C-mismatch", lambda: mc.coefficients(np.ones((2, N, 7)), PHI, BIAS, ALPHA),
     ValueError, ["phi", "[28, 24]", "C=7"]),
    ("coefficients-int-x", lambda: mc.coefficients(INT_X, PHI, BIAS, ALPHA), TypeError, ["x", "floating", "int64"]),
    ("coefficients-int-phi", lambda: mc.coefficients(X, PHI.astype(int), BIAS, ALPHA), TypeError, ["phi", "floating"]),
    ("coefficients-bias-shape", lambda: mc.coefficients(X, PHI, BIAS[:-1], ALPHA), ValueError, ["bias", "[24]", "[23]"]),
    ("coefficients-alpha-shape", lambda: mc.coefficients(X, PHI, BIAS, ALPHA[:2]), ValueError, ["alpha", "[3]", "[2]"]),
    ("coefficients-iters0", lambda: mc.coefficients(X, PHI, BIAS, ALPHA, iters=0), ValueError, ["iters", ">= 1"]),
    ("coefficients-variant", lambda: mc.coefficients(X, PHI, BIAS, ALPHA, variant="mHC"), ValueError,
     ["variant", "'mhc'", "'mHC'"]),
    ("coefficients-residual", lambda: mc.coefficients(X, PHI, BIAS, ALPHA, variant="residual"), ValueError,
     ["residual", "residual_step"]),
    ("coefficients-sinkhorn-eps", lambda: mc.coefficients(X, PHI, BIAS, ALPHA, sinkhorn_eps=-1.0), ValueError,
     ["sinkhorn_eps", ">= 0"]),
    ("pre_aggregate-n-mismatch", lambda: mc.pre_aggregate(X, np.ones((2, 3))), ValueError, ["pre", "[2, 4]", "[2, 3]"]),
    ("pre_aggregate-batch-mismatch", lambda: mc.pre_aggregate(X, np.ones((3, N))), ValueError, ["pre", "[2, 4]", "[3, 4]"]),
    ("pre_aggregate-int", lambda: mc.pre_aggregate(X, np.ones((2, N), dtype=int)), TypeError, ["pre", "floating"]),
    ("post_residual-C-mismatch", lambda: mc.post_residual(X, np.ones((2, 7)), np.ones((2, N)), RES), ValueError,
     ["y", "[2, 8]", "[2, 7]"]),
    ("post_residual-n-mismatch", lambda: mc.post_residual(X, np.ones((2, C)), np.ones((2, N)), RES[:, :3, :3]),
     ValueError, ["res", "[2, 4, 4]"]),
    ("post_residual-rank", lambda: mc.post_residual(np.ones(C), np.ones(C), np.ones(1), np.ones((1, 1))),
     ValueError, ["x", "[..., n, C]"]),
    ("step-not-callable", lambda: mc.step(X, None, PHI, BIAS, ALPHA), TypeError, ["f", "callable"]),
    ("step-missing-params", lambda: mc.step(X, F, None, None, None), TypeError, ["phi", "array", "NoneType"]),
    ("step-layer-wrong-C", lambda: mc.step(X, lambda h: h[..., :3], PHI, BIAS, ALPHA), ValueError, ["y", "[2, 8]"]),
    ("step-variant", lambda: mc.step(X, F, PHI, BIAS, ALPHA, variant="resnet"), ValueError, ["variant", "'residual'"]),
    ("step-iters0", lambda: mc.step(X, F, PHI, BIAS, ALPHA, iters=0), ValueError, ["iters", ">= 1"]),
    ("residual_step-n", lambda: mc.residual_step(X, F), ValueError, ["one stream", "[..., 1, C]", "n=4"]),
    ("residual_step-not-callable", lambda: mc.residual_step(np.ones((2, 1, C)), "f"), TypeError, ["f", "callable"]),
    ("expand_streams-n0", lambda: mc.expand_streams(np.ones(C), 0), ValueError, ["n", ">= 1", "0"]),
    ("expand_streams-rank", lambda: mc.expand_streams(np.float64(1.0), 2), ValueError, ["[..., C]", "()"]),
    ("expand_streams-int", lambda: mc.expand_streams(np.ones(C, dtype=int), 2), TypeError, ["x", "floating"]),
    ("reduce_streams-weights-n", lambda: mc.reduce_streams(X, np.ones((2, 3))), ValueError, ["[2, 4]", "[2, 3]"]),
    ("reduce_streams-rank", lambda: mc.reduce_streams(np.ones(C)), ValueError, ["[..., n, C]"]),
    ("head_weights-phi-shape", lambda: mc.head_weights(X, np.ones((32, 3)), HP["bias"], HP["alpha"]), ValueError,
     ["phi", "[32, 4]", "[32, 3]"]),
    ("head_weights-bias-shape", lambda: mc.head_weights(X, HP["phi"], np.ones(3), HP["alpha"]), ValueError,
     ["bias", "[4]"]),
    ("head_weights-alpha-shape", lambda: mc.head_weights(X, HP["phi"], HP["bias"], np.ones(3)), ValueError,
     ["alpha", "[1]", "[3]"]),
    ("head-int", lambda: mc.head(INT_X, HP["phi"], HP["bias"], HP["alpha"]), TypeError, ["x", "floating"]),
    ("head-eps-negative", lambda: mc.head(X, HP["phi"], HP["bias"], HP["alpha"], eps=-1.0), ValueError, ["eps", ">= 0"]),
    ("init_params-n0", lambda: mc.init_params(0, C), ValueError, ["n", "number of streams", ">= 1"]),
    ("init_params-C0", lambda: mc.init_params(N, 0), ValueError, ["C", "channels", ">= 1"]),
    ("init_params-variant", lambda: mc.init_params(N, C, variant="foo"), ValueError, ["variant", "'foo'"]),
    ("init_params-pre_eps", lambda: mc.init_params(N, C, pre_eps=0.5), ValueError, ["pre_eps", "[0, 0.25)"]),
    ("param_shapes-C-float", lambda: mc.param_shapes(N, 2.5), ValueError, ["C", "integer", "2.5"]),
    ("init_head_params-eps", lambda: mc.init_head_params(N, C, eps=0.3), ValueError, ["eps", "[0, 0.25)"]),
    ("head_param_shapes-n0", lambda: mc.head_param_shapes(0, C), ValueError, ["n", ">= 1"]),
    ("amax_gain-rank", lambda: mc.amax_gain(np.ones(3)), ValueError, ["res", "[..., n, n]"]),
    ("identity_distance-int", lambda: mc.identity_distance(np.eye(3, dtype=int)), TypeError, ["res", "floating"]),
    ("composite-n-mismatch", lambda: mc.composite([np.eye(4), np.eye(3)]), ValueError,
     ["res_layers[1]", "n = 4", "(3, 3)"]),
    ("gain_report-not-square", lambda: mc.gain_report([np.ones((2, 3))]), ValueError, ["[..., n, n]", "(2, 3)"]),
    ("aggregate-not-array", lambda: mc.aggregate([1.0, 2.0]), TypeError, ["one library", "list"]),
    ("MHCConfig-iters0", lambda: mc.MHCConfig(iters=0), ValueError, ["iters", ">= 1"]),
    ("MHCConfig-negative-eps", lambda: mc.MHCConfig(rms_eps=-1.0), ValueError, ["rms_eps", ">= 0"]),
    ("MHCConfig-inf-post_scale", lambda: mc.MHCConfig(post_scale=float("inf")), ValueError,
     ["post_scale", "finite", "inf"]),
    ("MHCConfig-bool-iters", lambda: mc.MHCConfig(iters=True), ValueError, ["iters", "integer", "True"]),
    ("namespace-not-array", lambda: mc.namespace("x"), TypeError, ["one library", "str"]),
    ("namespace-python-scalar", lambda: (mc.namespace(X, 1.0), mc.namespace(1.0)), TypeError,
     ["one library", "builtins.float"]),
    # history mixing and mHC-lite (more cases in test_history_core.py)
    ("simplex_projection-int", lambda: mc.simplex_projection(np.ones(3, dtype=int)), TypeError, ["v", "floating"]),
    ("simplex_projection-0d", lambda: mc.simplex_projection(np.float64(1.0)), ValueError, ["one axis", "0-d"]),
    ("history_weights-temperature", lambda: mc.history_weights(np.zeros(3), temperature=0), ValueError,
     ["temperature", "> 0"]),
    ("history_mix-shapes", lambda: mc.history_mix([np.zeros(2), np.zeros(3)], np.ones(2)), ValueError,
     ["one shape", "states[1]"]),
    ("history_skip-y", lambda: mc.history_skip(np.zeros(3), [np.zeros(2)], np.ones(1)), ValueError, ["y", "[3]"]),
    ("skip_weights-k", lambda: mc.skip_weights(np.zeros(2), 3), ValueError, ["k", "[1, K=2]"]),
    ("history_gain_report-shape", lambda: mc.history_gain_report([np.ones(2)], 3), ValueError,
     ["weights_per_layer[0]", "[1]"]),
    ("history_composite-K0", lambda: mc.history_composite([], 0), ValueError, ["history", ">= 1"]),
    ("birkhoff_res-n7", lambda: mc.birkhoff_res(np.zeros(5040), 7), ValueError, ["n <= 6", "n=7"]),
    ("init_skip_logits-init", lambda: mc.init_skip_logits(4, init="zeros"), ValueError, ["init", "identity", "'zeros'"]),
    ("permutation_list-n7", lambda: mc.permutation_list(7), ValueError, ["n <= 6", "n=7"]),
]


def test_every_public_function_has_a_case():
    covered = {cid.split("-")[0] for cid, *_ in CORE_CASES}
    missing = sorted(set(mc.__all__) - covered)
    assert not missing, f"public mhc_core functions without a bad-input case: {missing}"


@pytest.mark.parametrize("call,error,words", [pytest.param(*c[1:], id=c[0]) for c in CORE_CASES])
def test_core_rejects(call, error, words):
    with pytest.raises(error) as info:
        call()
    msg = str(info.value)
    missing = [w for w in words if w not in msg]
    assert not missing, f"message {msg!r} lacks {missing}"


# ---------------------------------------------------------------------------------------
# Arrays from two libraries: numpy mixed with each other registry library
# ---------------------------------------------------------------------------------------
def _foreign():
    """(name, adapter) for every working non-numpy backend (its arrays are not numpy's)."""
    out = []
    for ad in backends.load(None):
        if not isinstance(ad, backends.Broken) and ad.name != "numpy":
            out.append(pytest.param(ad, id=ad.name))
    return out


MIXED = {
    "coefficients": lambda t: mc.coefficients(X, t(PHI), BIAS, ALPHA),
    "pre_aggregate": lambda t: mc.pre_aggregate(X, t(np.ones((2, N)))),
    "post_residual": lambda t: mc.post_residual(X, t(np.ones((2, C))), np.ones((2, N)), RES),
    "step": lambda t: mc.step(t(X), F, PHI, BIAS, ALPHA),
    "head": lambda t: mc.head(X, HP["phi"], t(HP["bias"]), HP["alpha"]),
    "reduce_streams": lambda t: mc.reduce_streams(X, t(np.ones((2, N)))),
    "composite": lambda t: mc.composite([np.eye(3), t(np.eye(3))]),
    "residual_step": lambda t: mc.residual_step(np.ones((2, 1, C)), lambda h: t(h)),
    "history_weights": lambda t: mc.history_weights(np.zeros(3), noise=t(np.zeros(3))),
    "skip_weights-matrix": lambda t: mc.skip_weights(np.zeros((3, 3)), 2, mixing="matrix", noise=t(np.zeros((2, 2)))),
    "history_mix": lambda t: mc.history_mix([np.ones(C), t(np.ones(C))], np.ones(2)),
    "history_skip-y": lambda t: mc.history_skip(t(np.ones(C)), [np.ones(C)], np.ones(1)),
    "history_skip-states": lambda t: mc.history_skip(np.ones(C), [t(np.ones(C))], np.ones(1)),
    "history_composite": lambda t: mc.history_composite([np.ones(1), t(np.full(2, 0.5))], 2),
}


@pytest.mark.parametrize("fn", list(MIXED))
@pytest.mark.parametrize("adapter", _foreign())
def test_core_rejects_two_libraries(adapter, fn):
    t = lambda a: adapter.asarray(a, adapter.dtypes[0])  # noqa: E731
    with pytest.raises(TypeError) as info:
        MIXED[fn](t)
    msg = str(info.value)
    assert "one library" in msg and "numpy.ndarray" in msg, msg


# ---------------------------------------------------------------------------------------
# Each backend's modules (MHC, StreamHead, load_state), through the registry adapters
# ---------------------------------------------------------------------------------------
def _module_backends():
    out = []
    for ad in backends.load(None):
        if isinstance(ad, backends.Broken):
            out.append(pytest.param(ad, id=ad.name))
        elif hasattr(backends.package(ad), "MHC"):
            out.append(pytest.param(ad, id=ad.name))
    return out


def _state():
    from backend_registry.numpy_adapter import layer_shapes

    rng = np.random.default_rng(0)
    return {**P, **{k: rng.normal(0, 0.1, s) for k, s in layer_shapes("linear", C).items()}}


MODULE_CASES = [
    # (id, call(adapter, pkg, module, arr, ops), error, words)
    ("MHC-rank", lambda ad, pkg, m, a, o: ad.run(m, a((C,))), ValueError, ["[..., n, C]", "rank"]),
    ("MHC-n-mismatch", lambda ad, pkg, m, a, o: ad.run(m, a((2, 3, C))), ValueError, ["n=4", "[2, 3, 8]"]),
    ("MHC-C-mismatch", lambda ad, pkg, m, a, o: ad.run(m, a((2, N, 7))), ValueError, ["C=8", "[2, 4, 7]"]),
    ("MHC-int", lambda ad, pkg, m, a, o: ad.run(m, o.astype(a((2, N, C)), o.xp.int32)), TypeError, ["floating", "int32"]),
    ("MHC-numpy-input", lambda ad, pkg, m, a, o: ad.run(m, np.ones((2, N, C), np.float32)), TypeError,
     ["numpy.ndarray"]),
    ("MHC-variant", lambda ad, pkg, m, a, o: pkg.MHC(m.layer, N, C, variant="foo"), ValueError, ["variant", "'foo'"]),
    ("MHC-n0", lambda ad, pkg, m, a, o: pkg.MHC(m.layer, 0, C), ValueError, ["n", ">= 1"]),
    ("MHC-dim-float", lambda ad, pkg, m, a, o: pkg.MHC(m.layer, N, 8.0), ValueError, ["dim", "integer", "8.0"]),
    ("MHC-layer-not-callable", lambda ad, pkg, m, a, o: pkg.MHC(3, N, C), TypeError, ["layer", "callable", "int"]),
    ("MHC-init-not-dict", lambda ad, pkg, m, a, o: pkg.MHC(m.layer, N, C, init=[P["phi"]]), TypeError,
     ["init", "dict", "list"]),
    ("MHC-rms_eps-inf", lambda ad, pkg, m, a, o: pkg.MHC(m.layer, N, C, rms_eps=float("inf")), ValueError,
     ["rms_eps", "finite", "inf"]),
    ("MHC-iters0", lambda ad, pkg, m, a, o: pkg.MHC(m.layer, N, C, iters=0), ValueError, ["iters", ">= 1"]),
    ("MHC-init-phi-shape", lambda ad, pkg, m, a, o: pkg.MHC(m.layer, N, C, init={**P, "phi": np.ones((3, 3))}),
     ValueError, ["phi", "[32, 24]", "[3, 3]"]),
    ("MHC-init-alpha-nan", lambda ad, pkg, m, a, o: pkg.MHC(m.layer, N, C, init={**P, "alpha": np.array([np.nan, 0, 0])}),
     ValueError, ["init['alpha']", "finite"]),
    ("MHC-init-phi-inf-own-array", lambda ad, pkg, m, a, o: pkg.MHC(m.layer, N, C, init={**P, "phi": a(P["phi"].shape) * np.inf}),
     ValueError, ["init['phi']", "finite"]),
    ("load_state-phi-shape", lambda ad, pkg, m, a, o: pkg.load_state(m, {**_state(), "phi": np.ones((3, 3))}),
     ValueError, ["phi", "[3, 3]", "[32, 24]"]),
    ("load_state-bias-shape", lambda ad, pkg, m, a, o: pkg.load_state(m, {**_state(), "bias": np.ones(5)}),
     ValueError, ["bias", "[5]", "[24]"]),
    ("load_state-alpha-shape", lambda ad, pkg, m, a, o: pkg.load_state(m, {**_state(), "alpha": np.ones(2)}),
     ValueError, ["alpha", "[2]", "[3]"]),
    ("load_state-missing", lambda ad, pkg, m, a, o: pkg.load_state(m, {k: v for k, v in _state().items()
                                                                        if k != "alpha"}),
     ValueError, ["missing", "alpha"]),
    ("StreamHead-rank", lambda ad, pkg, m, a, o: pkg.StreamHead(N, C)(a((C,))), ValueError, ["[..., n, C]"]),
    ("StreamHead-n-mismatch", lambda ad, pkg, m, a, o: pkg.StreamHead(N, C)(a((2, 3, C))), ValueError, ["n=4"]),
    ("StreamHead-C-mismatch", lambda ad, pkg, m, a, o: pkg.StreamHead(N, C)(a((2, N, 7))), ValueError, ["C=8"]),
    ("StreamHead-int", lambda ad, pkg, m, a, o: pkg.StreamHead(N, C)(o.astype(a((2, N, C)), o.xp.int32)),
     TypeError, ["floating"]),
    ("StreamHead-numpy-input", lambda ad, pkg, m, a, o: pkg.StreamHead(N, C)(np.ones((2, N, C), np.float32)),
     TypeError, ["numpy.ndarray"]),
    ("StreamHead-n0", lambda ad, pkg, m, a, o: pkg.StreamHead(0, C), ValueError, ["n", ">= 1"]),
    ("StreamHead-eps-nan", lambda ad, pkg, m, a, o: pkg.StreamHead(N, C, eps=float("nan")), ValueError,
     ["eps", "finite", "nan"]),
]


@pytest.mark.parametrize("call,error,words", [pytest.param(*c[1:], id=c[0]) for c in MODULE_CASES])
@pytest.mark.parametrize("adapter", _module_backends())
def test_module_rejects(adapter, call, error, words):
    backends.require(adapter)
    pkg = backends.package(adapter)
    dtype = "float32" if "float32" in adapter.dtypes else adapter.dtypes[0]
    module = adapter.make_mhc(N, C, "mhc", "linear", _state(), dtype)
    arr = lambda shape: adapter.asarray(np.ones(shape), dtype)  # noqa: E731
    ops = mc.namespace(arr((1,)))
    with pytest.raises(error) as info:
        call(adapter, pkg, module, arr, ops)
    msg = str(info.value)
    missing = [w for w in words if w not in msg]
    assert not missing, f"{adapter.name}: message {msg!r} lacks {missing}"


def test_registry_unknown_backend():
    with pytest.raises(KeyError, match="no backend named 'nope'"):
        registry.get("nope")


def test_mlx_compiled_takes_true_or_false():
    """compiled='no' went through bool() and turned compilation on."""
    mnn = pytest.importorskip("mlx.nn")
    import mhc_core_mlx

    with pytest.raises(TypeError, match="compiled must be True or False, got 'no'"):
        mhc_core_mlx.MHC(mnn.Linear(C, C), N, C, compiled="no")
    assert mhc_core_mlx.MHC(mnn.Linear(C, C), N, C, compiled=np.bool_(True)).compiled is True


def test_module_refuses_a_layer_of_the_other_framework():
    """torch's MHC around an mlx.nn layer (or the reverse) fails at construction, naming both
    libraries, instead of inside the layer's first matmul; plain callables and subclasses of
    the backend's own Module stay accepted."""
    torch = pytest.importorskip("torch")
    mnn = pytest.importorskip("mlx.nn")
    import mhc_core_mlx
    import mhc_core_torch

    class TorchIdentity(torch.nn.Module):  # a user's module: its class is not in torch.*
        def forward(self, x):
            return x

    cases = [(mhc_core_torch, mnn.Linear(C, C), "module of mlx", "torch backend"),
             (mhc_core_mlx, torch.nn.Linear(C, C), "module of torch", "mlx backend"),
             (mhc_core_mlx, TorchIdentity(), "TorchIdentity", "mlx backend")]
    for pkg, layer, *words in cases:
        with pytest.raises(TypeError) as info:
            pkg.MHC(layer, N, C)
        assert all(w in str(info.value) for w in words), str(info.value)
    mhc_core_torch.MHC(TorchIdentity(), N, C)
    mhc_core_mlx.MHC(mnn.Linear(C, C), N, C)
    mhc_core_mlx.MHC(lambda x: x, N, C)
