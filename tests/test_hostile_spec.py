"""The functional spec API (`mhc_core` called on arrays, as a researcher's own model code
calls it) at the edges the other files do not reach.

- arrays of one call on two torch devices are refused, naming each argument's device:
  torch's CPU matmul with a `meta` tensor returns uninitialised memory instead of an error,
  so `coefficients`, `pre_aggregate`, `head` and `composite` gave garbage numbers;
- `recompute.resolve_block` takes numpy and 0-d array integers like every other count
  (DESIGN §1) and checks n and the layer count whatever the block;
- the reports (`gain_report`, `aggregate`, `history_gain_report`) read tensors that
  require grad (res straight from a forward pass) without torch's warning about
  converting them to Python numbers.
"""
from __future__ import annotations

import re
import warnings

import numpy as np
import pytest

import mhc_core as mc
import naive_oracle as naive
from mhc_core import recompute

torch = pytest.importorskip("torch")

N, C, T = 3, 2, 4


def _mixing():
    p = mc.init_params(N, C, phi_std=0.5, seed=0)
    return [torch.tensor(p[k]) for k in ("phi", "bias", "alpha")]


def _device_cases():
    x = torch.randn(T, N, C)
    phi, bias, alpha = _mixing()
    pre, post, y, res = torch.rand(T, N), torch.rand(T, N), torch.randn(T, C), torch.rand(T, N, N)
    hp = {k: torch.tensor(v) for k, v in mc.init_head_params(N, C).items()}
    meta = lambda a: a.to("meta")  # noqa: E731
    s = [torch.randn(C), torch.randn(C)]
    w = torch.tensor([0.5, 0.5])
    return [
        ("coefficients", "phi", lambda: mc.coefficients(x, meta(phi), bias, alpha)),
        ("coefficients", "x", lambda: mc.coefficients(meta(x), phi, bias, alpha)),
        ("coefficients", "alpha", lambda: mc.step(x, torch.tanh, phi, bias, meta(alpha))),
        ("pre_aggregate", "pre", lambda: mc.pre_aggregate(x, meta(pre))),
        ("post_residual", "res", lambda: mc.post_residual(x, y, post, meta(res))),
        ("post_residual", "y", lambda: mc.step(x, lambda h: meta(h), phi, bias, alpha)),
        ("head_weights", "phi", lambda: mc.head(x, meta(hp["phi"]), hp["bias"], hp["alpha"])),
        ("reduce_streams", "weights", lambda: mc.reduce_streams(x, meta(pre))),
        ("composite", "res_layers[1]", lambda: mc.composite([res, meta(res)])),
        ("composite", "res_layers[1]", lambda: mc.gain_report([res, meta(res)])),  # gain_report's composite
        ("history_mix", "states[1]", lambda: mc.history_mix([s[0], meta(s[1])], w)),
        ("history_skip", "y", lambda: mc.history_skip(meta(s[0]), s, w)),
        ("history_weights", "noise", lambda: mc.history_weights(w, noise=meta(w))),
        ("skip_weights", "noise", lambda: mc.skip_weights(torch.zeros(2, 2), 2, mixing="matrix",
                                                          noise=meta(torch.zeros(2, 2)))),
        ("history_composite", "weights_per_layer[1]",
         lambda: mc.history_composite([torch.ones(1), meta(w)], 2)),
    ]


@pytest.mark.parametrize("fn,name,call", _device_cases(), ids=[f"{c[0]}-{c[1]}" for c in _device_cases()])
def test_arrays_on_two_devices_are_refused_naming_each(fn, name, call):
    with pytest.raises(ValueError, match=rf"{fn}: all inputs must be on one device, got .*{re.escape(name)} on meta"):
        call()


def test_one_device_still_runs_and_numpy_arrays_pass():
    """The check compares devices only: numpy arrays (device 'cpu') and CPU tensors of
    different dtypes run as before."""
    p = mc.init_params(N, C, phi_std=0.5, seed=0, dtype=np.float64)
    x = np.random.default_rng(0).normal(size=(T, N, C))
    want = mc.coefficients(x, p["phi"], p["bias"], p["alpha"])
    got = mc.coefficients(torch.tensor(x), *(torch.tensor(p[k], dtype=torch.float32) for k in ("phi", "bias", "alpha")))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g.numpy(), w, atol=1e-6)


# --- recompute.resolve_block --------------------------------------------------------------


@pytest.mark.parametrize("block", [2, np.int64(2), np.array(2), torch.tensor(2)], ids=["int", "np-int", "np-0d", "torch-0d"])
def test_resolve_block_takes_numpy_and_0d_integers(block):
    assert recompute.resolve_block(block, 4, 8) == 2
    assert type(recompute.resolve_block(block, 4, 8)) is int


@pytest.mark.parametrize("block", [None, False, np.False_, 0, np.int64(0)], ids=["None", "False", "np-False", "0", "np-0"])
def test_resolve_block_off(block):
    assert recompute.resolve_block(block, 4, 8) == 0


@pytest.mark.parametrize("block", ["auto", True, np.True_], ids=["auto", "True", "np-True"])
def test_resolve_block_auto_is_the_paper_size(block):
    assert recompute.resolve_block(block, 4, 96) == recompute.paper_block_size(4, 96) == 8


@pytest.mark.parametrize("block", [2.0, -1, "Auto", np.array([2])], ids=["float", "negative", "Auto", "1-elem"])
def test_resolve_block_refuses(block):
    with pytest.raises(ValueError, match=r"recompute block must be 0/None \(off\), 'auto' or an integer >= 1, got"):
        recompute.resolve_block(block, 4, 8)


@pytest.mark.parametrize("block", [3, 0, "auto"])
def test_resolve_block_checks_n_and_layers_whatever_the_block(block):
    with pytest.raises(ValueError, match=r"layers must be an integer >= 1, got 0"):
        recompute.resolve_block(block, 4, 0)
    with pytest.raises(ValueError, match=r"n \(number of streams\) must be an integer >= 1, got 0"):
        recompute.resolve_block(block, 0, 5)


# --- reports on tensors that require grad --------------------------------------------------


def test_reports_read_tensors_that_require_grad_without_warnings():
    x = torch.randn(T, N, C)
    phi, bias, alpha = (a.requires_grad_() for a in _mixing())
    res = mc.coefficients(x, phi, bias, alpha)[2]  # requires grad, as in a training step
    want = mc.gain_report([res.detach().numpy().astype(np.float64)] * 2)
    w = torch.tensor([0.3, 0.7], requires_grad=True)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        got = mc.gain_report([res, res])
        agg = mc.aggregate(mc.amax_gain(res)[0])
        hist = mc.history_gain_report([torch.ones(1, requires_grad=True), w], 2)
    for g_layer, w_layer in zip(got, want):
        for key in ("forward_gain", "composite_forward_gain", "identity_distance"):
            for s in ("max", "mean", "min"):
                assert g_layer[key][s] == pytest.approx(w_layer[key][s], rel=1e-5)
    assert agg == pytest.approx(mc.aggregate(mc.amax_gain(res.detach().numpy())[0]), rel=1e-6)
    assert hist == mc.history_gain_report([np.ones(1, np.float32), np.array([0.3, 0.7], np.float32)], 2)


# --- n = 0: no matrix to normalise -----------------------------------------------------------


def _libraries():
    mx = pytest.importorskip("mlx.core")
    return {"numpy": np.zeros, "torch": torch.zeros, "mlx": mx.zeros}


@pytest.mark.parametrize("lib", ["numpy", "torch", "mlx"])
@pytest.mark.parametrize("fn,name", [(mc.sinkhorn, "logits"), (mc.amax_gain, "res"), (mc.identity_distance, "res"),
                                     (lambda r: mc.composite([r]), r"res_layers\[0\]")],
                         ids=["sinkhorn", "amax_gain", "identity_distance", "composite"])
def test_zero_by_zero_matrices_are_refused(lib, fn, name):
    """[..., 0, 0] is no mixing matrix (n >= 1 streams); it crashed in a reshape or a
    reduction with no identity (numpy, torch), or gave a distance of 0."""
    with pytest.raises(ValueError, match=rf"{name} must have shape \[..., n, n\] with n >= 1, got \(2, 0, 0\)"):
        fn(_libraries()[lib]((2, 0, 0)))


# --- Sinkhorn's column sums after few rounds (the docstring's figure is for iters = 20) -----


@pytest.mark.parametrize("n", [2, 4, 16])
def test_one_round_leaves_a_column_no_row_favours_at_n_over_n_plus_one(n):
    """iters = 1, every row's logits putting all its mass on column 0: columns 1.. had
    s = n * eps before their normalisation, so they sum to n eps / (n eps + eps)."""
    logits = np.zeros((1, n, n))
    logits[..., 0] = 1e3  # exp(-1e3) = 0 in float64: the other columns' softmax entries are 0
    got = mc.sinkhorn(logits, iters=1)
    np.testing.assert_allclose(got, naive.sinkhorn(logits, iters=1), rtol=1e-12, atol=0)
    np.testing.assert_allclose(got.sum(-2)[0, 1:], n / (n + 1), rtol=1e-12)
    assert "n / (n + 1)" in mc.sinkhorn.__doc__ and "after iters=20" in mc.sinkhorn.__doc__


# --- a setting that requires grad ----------------------------------------------------------


@pytest.mark.parametrize("call,name", [
    (lambda v: mc.coefficients(*_coefficient_args(), post_scale=v), "post_scale"),
    (lambda v: mc.step(_coefficient_args()[0], torch.tanh, *_coefficient_args()[1:], pre_eps=v), "pre_eps"),
    (lambda v: mc.sinkhorn(torch.zeros(2, 2), eps=v), "eps"),
    (lambda v: mc.head(torch.zeros(1, 1, 2), torch.zeros(2, 1), torch.zeros(1), torch.ones(1), rms_eps=v), "rms_eps"),
], ids=["coefficients-post_scale", "step-pre_eps", "sinkhorn-eps", "head-rms_eps"])
def test_a_setting_that_requires_grad_is_refused(call, name):
    """Settings are read as Python numbers: a 0-d tensor that requires grad (a post_scale
    one means to learn) ran with its gradient silently dropped (no grad_fn on the output)."""
    value = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    with pytest.raises(ValueError, match=rf"{name} must be a finite number >= 0, got tensor\(0.5000, dtype=torch.float64, "
                                         r"requires_grad=True\): settings are read as plain numbers, so a tensor that "
                                         r"requires grad would get no gradient"):
        call(value)
    call(value.detach())  # the same value without autograd history: accepted, as every 0-d array


def test_history_settings_that_require_grad_are_refused():
    value = torch.tensor(0.5, dtype=torch.float64, requires_grad=True)
    for kw, words in (({"temperature": value}, "temperature must be a finite number > 0"),
                      ({"epsilon": value}, r"epsilon \(the newest state's minimum weight\) must be in \[0, 1\)")):
        with pytest.raises(ValueError, match=rf"{words}, got tensor\(.*requires_grad=True\): settings are read as "
                                             r"plain numbers"):
            mc.history_weights(torch.zeros(3), constraint="identity", **kw)
        np.testing.assert_allclose(mc.history_weights(torch.zeros(3), constraint="identity",
                                                      **{k: v.detach() for k, v in kw.items()}).numpy(),
                                   mc.history_weights(np.zeros(3), constraint="identity",
                                                      **{k: 0.5 for k in kw}), rtol=1e-6)


def _coefficient_args():
    x = torch.randn(T, N, C, dtype=torch.float64)
    p = mc.init_params(N, C, phi_std=0.5, seed=0, dtype=np.float64)
    return (x, *(torch.tensor(p[k]) for k in ("phi", "bias", "alpha")))


# --- numpy's long double -------------------------------------------------------------------


def test_numpy_longdouble_computes_in_float64_not_float32():
    """np.longdouble (80-bit extended on x86 Linux) is a real floating dtype the checks
    accept; it was computed in float32 (everything but float64 was), 1e-7 from the oracle."""
    rng = np.random.default_rng(3)
    p = mc.init_params(N, C, phi_std=0.5, seed=3, dtype=np.float64)
    x, logits = rng.normal(size=(T, N, C)), rng.normal(size=(T, N, N))
    got = mc.coefficients(x.astype(np.longdouble), *(p[k].astype(np.longdouble) for k in ("phi", "bias", "alpha")))
    for g, w in zip(got, naive.coefficients(x, p["phi"], p["bias"], p["alpha"])):
        np.testing.assert_allclose(np.asarray(g, np.float64), w, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(np.asarray(mc.sinkhorn(logits.astype(np.longdouble)), np.float64), naive.sinkhorn(logits),
                               rtol=1e-12, atol=1e-14)
    step = mc.step(x.astype(np.longdouble), np.tanh, *(p[k] for k in ("phi", "bias", "alpha")))
    assert step.dtype == np.longdouble
    np.testing.assert_allclose(np.asarray(step, np.float64), naive.step(x, np.tanh, p["phi"], p["bias"], p["alpha"]),
                               rtol=1e-12, atol=1e-14)


# --- expand_streams: what its docstring says a write does, per library ------------------------


def test_expand_streams_writes_behave_as_documented():
    base = np.arange(6.0).reshape(2, 3)
    view = mc.expand_streams(base, 4)
    np.testing.assert_array_equal(view, np.broadcast_to(base[:, None], (2, 4, 3)))
    with pytest.raises(ValueError, match="read-only"):  # numpy: read-only
        view[..., 0, :] += 1
    x = torch.tensor(base)
    s = mc.expand_streams(x, 4)
    with pytest.raises(RuntimeError, match="more than one element of the written-to tensor"):
        s += 1  # torch: no in-place op on the whole view
    s[..., 0, :] += 1  # one stream: writes x, so every stream changes
    np.testing.assert_array_equal(x.numpy(), base + 1)
    np.testing.assert_array_equal(s.numpy(), np.broadcast_to(base[:, None] + 1, (2, 4, 3)))
    mx = pytest.importorskip("mlx.core")
    xm = mx.array(base.astype(np.float32))
    sm = mc.expand_streams(xm, 4)
    sm[..., 0, :] = 7.0  # MLX: a value; neither x nor the other streams change
    np.testing.assert_array_equal(np.array(xm), base)
    np.testing.assert_array_equal(np.array(sm)[..., 1:, :], np.broadcast_to(base[:, None], (2, 3, 3)))
    np.testing.assert_array_equal(np.array(sm)[..., 0, :], np.full((2, 3), 7.0))


# --- init_skip_logits' dtype -----------------------------------------------------------------


@pytest.mark.parametrize("dtype", [np.int32, torch.float32, "bfloat16", bool], ids=["int32", "torch", "bf16-str", "bool"])
def test_init_skip_logits_refuses_a_non_floating_dtype(dtype):
    """An integer dtype gave integer logits (which history_weights then refuses), a torch
    dtype numpy's 'Cannot interpret' error: the check of init_params."""
    with pytest.raises(TypeError, match=r"init_skip_logits: dtype must be a real floating-point dtype \(float16, "
                                        r"float32, float64\), got"):
        mc.init_skip_logits(3, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("mixing", ["vector", "matrix"])
def test_init_skip_logits_in_each_floating_dtype(dtype, mixing):
    got = mc.init_skip_logits(4, mixing=mixing, dtype=dtype)
    want = np.full(4, -10.0) if mixing == "vector" else -10.0 * (1.0 - np.eye(4))
    if mixing == "vector":
        want[-1] = 0.0
    assert got.dtype == dtype
    np.testing.assert_array_equal(got, want.astype(dtype))


# --- empty batches on MLX's log-domain Sinkhorn ---------------------------------------------


@pytest.mark.parametrize("dtype", ["float32", "float64", "bfloat16"])
def test_mlx_eps0_sinkhorn_and_step_take_an_empty_batch(dtype):
    """sinkhorn_eps = 0 runs in the log domain; MLX's logsumexp refuses empty arrays
    ('[logsumexp] Received empty array'), so an empty batch failed where numpy and torch
    return empty outputs."""
    mx = pytest.importorskip("mlx.core")
    dt = getattr(mx, dtype)
    with mx.stream(mx.cpu):
        assert mc.sinkhorn(mx.zeros((0, 3, 3), dtype=dt), eps=0.0).shape == (0, 3, 3)
        p = mc.init_params(N, C, dtype=np.float32)
        x = mx.zeros((2, 0, N, C), dtype=dt)
        args = [mx.array(p[k]) for k in ("phi", "bias", "alpha")]
        out = mc.step(x, mx.tanh, *args, sinkhorn_eps=0.0)
        assert out.shape == (2, 0, N, C) and out.dtype == dt
        grad = mx.grad(lambda phi: mc.step(x, mx.tanh, phi, *args[1:], sinkhorn_eps=0.0).astype(mx.float32).sum())(args[0])
        np.testing.assert_array_equal(np.array(grad), np.zeros(p["phi"].shape))  # no tokens, no gradient


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_mlx_shim_logsumexp_of_empty_arrays_is_numpys(dtype):
    mx = pytest.importorskip("mlx.core")
    ops = mc.namespace(mx.zeros(1))
    with mx.stream(mx.cpu):
        for shape in ((3, 0), (0, 3)):
            for axis in (0, 1):
                for keepdims in (False, True):
                    got = np.array(ops.logsumexp(mx.zeros(shape, dtype=getattr(mx, dtype)), axis, keepdims=keepdims))
                    want = np.logaddexp.reduce(np.zeros(shape), axis=axis, keepdims=keepdims)
                    assert got.shape == want.shape
                    np.testing.assert_array_equal(got, want)


# --- a small temperature: the hard limit, not NaN -------------------------------------------


def _to_numpy(a):
    return a.detach().numpy() if isinstance(a, torch.Tensor) else np.array(a)


def _hard_limit(logits, constraint, epsilon=0.1):
    """temperature -> 0: every weight on the largest logit (ties shared by a softmax)."""
    w = (logits == logits.max()).astype(np.float64)
    w = w / w.sum()
    if constraint == "identity":
        w = (1.0 - epsilon) * w + epsilon * np.eye(len(logits))[-1]
    return w


@pytest.mark.parametrize("lib", ["numpy", "torch", "mlx"])
@pytest.mark.parametrize("constraint", ["softmax", "simplex", "identity"])
@pytest.mark.parametrize("temperature", [1e-39, 1e-300])
def test_a_tiny_temperature_gives_the_hard_limit(lib, constraint, temperature):
    """logits / temperature overflowed to inf (float32 from temperature ~1e-38; float64
    from 1e-308 / |logit|), and inf - inf made every weight NaN; the limit is one-hot on
    the largest logit, which the shifted form (logits - max) / temperature reaches."""
    logits = np.array([1.0, 2.0, 0.5, -3.0], np.float32)
    conv = {"numpy": lambda a: a, "torch": torch.tensor, "mlx": lambda a: pytest.importorskip("mlx.core").array(a)}[lib]
    got = _to_numpy(mc.history_weights(conv(logits), constraint=constraint, temperature=temperature))
    np.testing.assert_allclose(got, _hard_limit(logits.astype(np.float64), constraint), rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("lib", ["numpy", "torch"])
def test_matrix_skip_weights_at_a_tiny_temperature_are_finite_and_match_a_small_one(lib):
    """Sinkhorn of (logits / T) is shift-invariant per row; the per-row shift keeps a tiny T
    finite. T = 1e-39 must give what T = 1e-3 gives for these logits (both saturated)."""
    logits = np.array([[0.0, 1.0, -2.0], [2.0, 0.5, 0.0], [1.0, -1.0, 3.0]], np.float32)
    conv = torch.tensor if lib == "torch" else (lambda a: a)
    tiny = _to_numpy(mc.skip_weights(conv(logits), 3, mixing="matrix", temperature=1e-39))
    small = mc.skip_weights(logits.astype(np.float64), 3, mixing="matrix", temperature=1e-3)
    np.testing.assert_allclose(tiny, small, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("constraint", ["softmax", "simplex", "identity"])
def test_shifted_temperature_gradients_match_finite_differences(constraint):
    """The shift is held constant under autodiff (weights do not depend on it): torch
    float64 gradients against central differences of the numpy float64 function."""
    rng = np.random.default_rng(7)
    logits, cot, d = rng.normal(size=(3, 5)), rng.normal(size=(3, 5)), rng.normal(size=(3, 5))
    t = torch.tensor(logits, requires_grad=True)
    (mc.history_weights(t, constraint=constraint, temperature=0.7) * torch.tensor(cot)).sum().backward()
    f = lambda v: float(np.sum(mc.history_weights(v, constraint=constraint, temperature=0.7) * cot))  # noqa: E731
    h = 1e-6
    fd = (f(logits + h * d) - f(logits - h * d)) / (2 * h)
    assert float((t.grad.numpy() * d).sum()) == pytest.approx(fd, rel=1e-7, abs=1e-9)


@pytest.mark.parametrize("lib", ["numpy", "torch", "mlx"])
@pytest.mark.parametrize("constraint", ["softmax", "simplex", "identity"])
def test_huge_logits_over_a_small_temperature_give_the_hard_limit(lib, constraint):
    """1 / temperature in range, but logits / temperature past float32's: (logits - max) / T."""
    logits = np.array([3e30, -1e30, 2e30, 0.0], np.float32)
    conv = {"numpy": lambda a: a, "torch": torch.tensor, "mlx": lambda a: pytest.importorskip("mlx.core").array(a)}[lib]
    with np.errstate(over="ignore"):
        got = _to_numpy(mc.history_weights(conv(logits), constraint=constraint, temperature=1e-10))
    np.testing.assert_allclose(got, _hard_limit(logits.astype(np.float64), constraint), rtol=1e-6, atol=1e-7)
