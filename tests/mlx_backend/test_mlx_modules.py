"""mhc_core_mlx.MHC / StreamHead forward vs the numpy float64 oracle, parameter layout, bad input."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

import mhc_core  # noqa: E402
import mhc_core_mlx  # noqa: E402
from backend_registry.numpy_adapter import layer_shapes  # noqa: E402
from backend_registry.mlx_adapter import Adapter  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402
from mlx_cases import TOL, assert_close, make_state, oracle_step  # noqa: E402

ADAPTER = Adapter()

# (variant, layer, n, C, leading batch shape): every variant, both layers, odd sizes, no batch.
CASES = [
    ("mhc", "linear", 4, 8, (2, 3)),
    ("mhc", "mlp", 3, 5, (2,)),
    ("mhc", "linear", 2, 7, ()),
    ("mhc", "mlp", 1, 4, (3,)),
    ("hc", "linear", 4, 6, (2,)),
    ("hc", "mlp", 2, 3, (2, 2)),
    ("residual", "linear", 1, 8, (2,)),
    ("residual", "mlp", 1, 5, ()),
]


def _id(case):
    v, layer, n, c, lead = case
    return f"{v}-{layer}-n{n}-C{c}-lead{'x'.join(map(str, lead)) or 'none'}"


@pytest.mark.parametrize("dtype", ADAPTER.dtypes)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_mhc_forward_matches_numpy_oracle(case, dtype):
    variant, layer, n, c, lead = case
    state = make_state(variant, layer, n, c, seed=n * 100 + c)
    module = ADAPTER.make_mhc(n, c, variant, layer, state, dtype, iters=20)
    x = ADAPTER.asarray(np.random.default_rng(1).normal(size=lead + (n, c)), dtype)
    out = ADAPTER.run(module, x)
    assert out.dtype == x.dtype, f"output dtype {out.dtype} != input dtype {x.dtype}"
    # Oracle on exactly the numbers the module holds (bf16/fp32-rounded weights and input).
    want = oracle_step(variant, layer, mhc_core_mlx.module_state(module), ADAPTER.to_numpy(x), iters=20)
    assert_close(ADAPTER.to_numpy(out), want, TOL[dtype], f"{_id(case)}-{dtype}")


@pytest.mark.parametrize("dtype", ADAPTER.dtypes)
def test_stream_head_matches_numpy_oracle(dtype):
    n, c = 3, 6
    rng = np.random.default_rng(7)
    head = mhc_core_mlx.StreamHead(n, c)
    if dtype == "float64":
        head.set_dtype(mx.float64)
    state = {"phi": rng.normal(0, 0.5, (n * c, n)), "bias": rng.normal(0, 1, n), "alpha": np.array([0.7])}
    mhc_core_mlx.load_state(head, state)
    x = ADAPTER.asarray(rng.normal(size=(2, n, c)), dtype)
    with mx.stream(mx.cpu):
        out = head(x)
        mx.eval(out)
    assert out.shape == (2, c) and out.dtype == x.dtype
    p = mhc_core_mlx.module_state(head)
    want = mhc_core.head(ADAPTER.to_numpy(x), *(p[k].astype(np.float64) for k in ("phi", "bias", "alpha")))
    assert_close(ADAPTER.to_numpy(out), want, TOL[dtype], f"head-{dtype}")


def test_stream_head_init_is_the_mean_over_streams():
    x = mx.array(np.random.default_rng(0).normal(size=(4, 3, 5)).astype(np.float32))
    out = mhc_core_mlx.StreamHead(3, 5)(x)
    assert_close(np.array(out), np.array(x).mean(-2), 1e-6, "head-init")


def test_expand_and_reduce_streams_are_mhc_core():
    x = np.random.default_rng(0).normal(size=(2, 5)).astype(np.float32)
    e = mhc_core_mlx.expand_streams(mx.array(x), 3)
    assert e.shape == (2, 3, 5)
    assert_close(np.array(e), np.repeat(x[:, None], 3, axis=1), 0.0, "expand")
    w = np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]], np.float32)
    assert_close(np.array(mhc_core_mlx.reduce_streams(e)), x, 1e-7, "reduce-mean")
    assert_close(np.array(mhc_core_mlx.reduce_streams(e, mx.array(w))), x * w.sum(-1, keepdims=True), 1e-6, "reduce-w")


@pytest.mark.parametrize("variant", ["mhc", "hc", "residual"])
def test_parameter_names_and_shapes_match_the_shared_api(variant):
    n, c = (1 if variant == "residual" else 3), 4
    module = mhc_core_mlx.MHC(nn.Linear(c, c), n, c, variant=variant)
    got = {k: tuple(v.shape) for k, v in tree_flatten(module.parameters())}
    want = {**mhc_core.param_shapes(n, c, variant), **layer_shapes("linear", c)}
    assert got == want
    assert all(v.dtype == mx.float32 for _, v in tree_flatten(module.parameters()))


def test_default_init_is_mhc_core_init_params():
    module = mhc_core_mlx.MHC(nn.Linear(4, 4), 2, 4, variant="hc")
    want = mhc_core.init_params(2, 4, variant="hc")
    for k in ("phi", "bias", "alpha"):
        assert_close(np.array(getattr(module, k)), want[k], 0.0, "init", k)


def test_init_argument_sets_the_mixing_parameters():
    state = make_state("mhc", "linear", 2, 3)
    module = mhc_core_mlx.MHC(nn.Linear(3, 3), 2, 3, init={k: state[k] for k in ("phi", "bias", "alpha")})
    assert_close(np.array(module.bias), state["bias"], 1e-7, "init-arg", "bias")


def test_impl_reference_and_auto_compute_the_same():
    state = make_state("mhc", "linear", 2, 4)
    x = mx.array(np.random.default_rng(2).normal(size=(3, 2, 4)).astype(np.float32))
    outs = []
    for impl in ("auto", "reference"):
        m = mhc_core_mlx.MHC(nn.Linear(4, 4), 2, 4, impl=impl)
        outs.append(np.array(mhc_core_mlx.load_state(m, state)(x)))
    assert_close(outs[1], outs[0], 0.0, "impl")


# --- bad input: one case each, the message says what was expected ----------------------

def _module(n=3, c=4, **kw):
    return mhc_core_mlx.MHC(nn.Identity(), n, c, **kw)


@pytest.mark.parametrize("make_x, error, message", [
    (lambda: mx.zeros((4,)), ValueError, r"x must have shape \[\.\.\., n, C\] \(rank >= 2\), got shape \(4,\)"),
    (lambda: mx.zeros((2, 2, 4)), ValueError, r"x must have shape \[2, 3, 4\] \(\[\.\.\., n, C\] with n=3, C=4 for this MHC\), got \[2, 2, 4\]"),
    (lambda: mx.zeros((2, 3, 5)), ValueError, r"n=3, C=4 for this MHC\), got \[2, 3, 5\]"),
    (lambda: mx.zeros((2, 3, 4), dtype=mx.int32), TypeError, r"x must be a floating-point array, got dtype mlx.core.int32"),
    (lambda: np.zeros((2, 3, 4), np.float32), TypeError, r"MHC expects an mlx.core.array x \[\.\.\., n, C\], got numpy.ndarray"),
], ids=["rank", "n", "C", "int-dtype", "numpy-input"])
def test_mhc_rejects_bad_input(make_x, error, message):
    with pytest.raises(error, match=message):
        _module()(make_x())


def test_stream_head_rejects_wrong_channels():
    with pytest.raises(ValueError, match=r"n=2, C=3 for this StreamHead\), got \[2, 4\]"):
        mhc_core_mlx.StreamHead(2, 3)(mx.zeros((2, 4)))


@pytest.mark.parametrize("kwargs, message", [
    (dict(variant="mhcc"), r"variant must be one of \('mhc', 'hc', 'residual', 'mhc-lite'\), got 'mhcc'"),
    (dict(variant="residual"), r"residual variant has one stream: n must be 1, got n=3"),
    (dict(impl="triton"), r"impl must be one of \('auto', 'reference', 'custom_vjp'\), got 'triton'"),
    (dict(iters=0), r"iters must be an integer >= 1, got 0"),
    (dict(n=0), r"n \(number of streams\) must be an integer >= 1, got 0"),
    (dict(c=0), r"dim \(channels per stream, C\) must be an integer >= 1, got 0"),
    (dict(init={"phi": np.zeros((12, 15)), "bias": np.zeros(15)}), r"must hold exactly \['alpha', 'bias', 'phi'\]; missing \['alpha'\]"),
    (dict(init={"phi": np.zeros((12, 14)), "bias": np.zeros(15), "alpha": np.zeros(3)}), r"init\['phi'\] must have shape \[12, 15\], got \[12, 14\]"),
], ids=["variant", "residual-n", "impl", "iters", "n", "C", "init-missing", "init-shape"])
def test_mhc_constructor_rejects_bad_arguments(kwargs, message):
    with pytest.raises(ValueError, match=message):
        _module(**kwargs)
