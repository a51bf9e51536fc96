"""HistorySequential on torch and mlx against the float64 numpy oracle (mhc_core on numpy),
forward and gradients, and torch = mlx on the same weights; MHC(variant='mhc-lite') on
both backends; bad input to the modules; the mhc_core functions themselves
(simplex_projection, history_weights, skip_weights, birkhoff_res) on torch and mlx in
float32 and bfloat16, forward and gradients.

Gradients: torch float64 is checked against central differences of the numpy oracle
(directional derivatives); every other backend / dtype is compared with torch float64.
"""
from __future__ import annotations

import zlib

import numpy as np
import pytest

import mhc_core as mc

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import mhc_core_torch as mt  # noqa: E402

try:
    import mlx.core as mx
    import mlx.nn as mnn
    from mlx.utils import tree_flatten

    import mhc_core_mlx as mm
except ImportError:  # pragma: no cover - mlx is optional
    mx = None

C, DEPTH, BATCH = 5, 4, 3
TOL = {"float64": 1e-10, "float32": 2e-5, "bfloat16": 3e-2}
CONFIGS = {
    "softmax-K3": dict(history=3),
    "simplex-K2-gate": dict(history=2, constraint="simplex", gate=True),
    "identity-K4-gate-prune": dict(history=4, constraint="identity", gate=True, prune_threshold=0.05, epsilon=0.2),
    "matrix-softmax-K3": dict(history=3, mixing="matrix", temperature=0.7),
    "matrix-identity-K2-gate": dict(history=2, mixing="matrix", constraint="identity", gate=True),
}


def _state(cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
    """float64 weights named as both backends name them."""
    rng = np.random.default_rng(seed)
    K = cfg["history"]
    shape = (K, K) if cfg.get("mixing") == "matrix" else (K,)
    state = {}
    for l in range(DEPTH):
        state[f"layers.{l}.weight"] = rng.normal(0.0, 0.6, (C, C))
        state[f"layers.{l}.bias"] = rng.normal(0.0, 0.1, C)
        state[f"skips.{l}.logits"] = rng.normal(0.0, 1.0, shape)
        if cfg.get("gate"):
            state[f"skips.{l}.gate"] = np.array(rng.normal(1.0, 0.5))
    return state


def oracle(x: np.ndarray, state: dict, cfg: dict) -> np.ndarray:
    """mhc_core on numpy float64, layer l = tanh(x W^T + b)."""
    K = cfg["history"]
    opts = {k: cfg[k] for k in ("constraint", "temperature", "epsilon", "mixing") if k in cfg}
    window = [x]
    for l in range(DEPTH):
        y = np.tanh(x @ state[f"layers.{l}.weight"].T + state[f"layers.{l}.bias"])
        w = mc.skip_weights(state[f"skips.{l}.logits"], len(window), **opts)
        x = mc.history_skip(y, window, w, gate=state.get(f"skips.{l}.gate"),
                            prune_threshold=cfg.get("prune_threshold", 0.0))
        window = (window + [x])[-K:]
    return x


def _torch_model(cfg, state, dtype, detach=False):
    model = mt.HistorySequential([_TanhLinear() for _ in range(DEPTH)], detach_history=detach, **cfg)
    if dtype == torch.float64:
        model.double()  # before loading, so the float64 weights are not rounded to float32
    mt.load_state(model, state)
    if dtype == torch.bfloat16:
        model.layers.to(dtype)  # the mixing parameters stay float32
    return model


class _TanhLinear(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(C, C))
        self.bias = nn.Parameter(torch.zeros(C))

    def forward(self, x):
        return torch.tanh(x @ self.weight.T + self.bias)


def torch_run(cfg, state, x, dtype, detach=False):
    """(out, {name: grad}) for loss = sum(out * probe), float64 numpy."""
    model = _torch_model(cfg, state, dtype, detach)
    xt = torch.tensor(x, dtype=dtype, requires_grad=True)
    out = model(xt)
    probe = torch.tensor(_probe(), dtype=torch.float64)
    (out.double() * probe).sum().backward()
    grads = {k: p.grad.double().numpy() for k, p in model.named_parameters()}
    grads["x"] = xt.grad.double().numpy()
    return out.detach().double().numpy(), grads


def _probe():
    return np.random.default_rng(99).normal(size=(BATCH, C))


def _x():
    return np.random.default_rng(5).normal(size=(BATCH, C))


def _close(got, want, tol, what):
    err = float(np.max(np.abs(np.asarray(got, np.float64) - want)))
    bound = tol * max(1.0, float(np.max(np.abs(want))))
    assert err <= bound, f"{what}: max|err| {err:.3g} > {bound:.3g}"


@pytest.mark.parametrize("name", list(CONFIGS))
def test_torch_forward_and_fd_gradients_float64(name):
    cfg, state, x = CONFIGS[name], _state(CONFIGS[name]), _x()
    out, grads = torch_run(cfg, state, x, torch.float64)
    _close(out, oracle(x, state, cfg), 1e-12, f"{name} out")
    probe, rng, h = _probe(), np.random.default_rng(1), 1e-5
    loss = lambda s, xx: float((oracle(xx, s, cfg) * probe).sum())  # noqa: E731
    keys = ["x", "skips.1.logits", "skips.3.logits", "layers.0.weight"] + (["skips.2.gate"] if cfg.get("gate") else [])
    for key in keys:
        base = x if key == "x" else state[key]
        d = rng.normal(size=np.shape(base))

        def shifted(t):
            if key == "x":
                return loss(state, x + t * d)
            return loss({**state, key: base + t * d}, x)
        fd = (shifted(h) - shifted(-h)) / (2 * h)
        got = float((grads[key] * d).sum())
        assert abs(got - fd) <= 1e-6 * max(1.0, abs(fd)), f"{name} grad {key}: {got} vs fd {fd}"


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_torch_low_precision_vs_float64(name, dtype):
    cfg, state, x = CONFIGS[name], _state(CONFIGS[name]), _x()
    want, want_g = torch_run(cfg, state, x, torch.float64)
    got, got_g = torch_run(cfg, state, x, getattr(torch, dtype))
    _close(got, want, TOL[dtype], f"{name} {dtype} out")
    if dtype == "float32":
        for k in want_g:
            _close(got_g[k], want_g[k], TOL[dtype], f"{name} {dtype} grad {k}")


def test_detach_history_stops_the_skip_gradient():
    """With the window detached, d out / d x_0 comes only through the layers: zero when the
    layers are switched off (weight 0, bias 0 -> tanh(0) = 0 everywhere)."""
    cfg = CONFIGS["softmax-K3"]
    state = {k: (np.zeros_like(v) if k.startswith("layers.") else v) for k, v in _state(cfg).items()}
    _, attached = torch_run(cfg, state, _x(), torch.float64, detach=False)
    _, detached = torch_run(cfg, state, _x(), torch.float64, detach=True)
    assert np.abs(attached["x"]).max() > 0.1
    assert np.abs(detached["x"]).max() == 0.0
    _, live_layers = torch_run(cfg, _state(cfg), _x(), torch.float64, detach=True)
    assert np.abs(live_layers["skips.2.logits"]).max() > 1e-3  # the logits still learn


needs_mlx = pytest.mark.skipif(mx is None, reason="mlx is not installed")


class _MLXTanhLinear(mnn.Module if mx is not None else object):
    def __init__(self):
        super().__init__()
        self.weight = mx.zeros((C, C))
        self.bias = mx.zeros((C,))

    def __call__(self, x):
        return mx.tanh(x @ self.weight.T + self.bias)


def mlx_run(cfg, state, x, detach=False):
    model = mm.HistorySequential([_MLXTanhLinear() for _ in range(DEPTH)], detach_history=detach, **cfg)
    mm.load_state(model, {k: v.astype(np.float32) for k, v in state.items()})
    probe = mx.array(_probe().astype(np.float32))

    def loss(params, xx):
        model.update(params)
        return (model(xx) * probe).sum()

    xm = mx.array(x.astype(np.float32))
    out = model(xm)
    g_params, g_x = mx.grad(loss, argnums=(0, 1))(model.trainable_parameters(), xm)
    grads = {k: np.array(v, dtype=np.float64) for k, v in tree_flatten(g_params)}
    grads["x"] = np.array(g_x, dtype=np.float64)
    return np.array(out, dtype=np.float64), grads


@needs_mlx
@pytest.mark.parametrize("detach", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("name", list(CONFIGS))
def test_mlx_matches_torch_and_oracle(name, detach):
    cfg, state, x = CONFIGS[name], _state(CONFIGS[name]), _x()
    out, grads = mlx_run(cfg, state, x, detach)
    _close(out, oracle(x, state, cfg), TOL["float32"], f"mlx {name} out")
    want_out, want_g = torch_run(cfg, state, x, torch.float64, detach)
    _close(out, want_out, TOL["float32"], f"mlx vs torch {name} out")
    assert set(grads) == set(want_g)
    for k in want_g:
        _close(grads[k], want_g[k], TOL["float32"], f"mlx vs torch {name} grad {k}")


@needs_mlx
def test_state_names_match_and_round_trip():
    cfg = CONFIGS["identity-K4-gate-prune"]
    t = mt.HistorySequential([_TanhLinear() for _ in range(DEPTH)], **cfg)
    m = mm.HistorySequential([_MLXTanhLinear() for _ in range(DEPTH)], **cfg)
    assert sorted(mt.module_state(t)) == sorted(mm.module_state(m))
    for k, v in mt.module_state(t).items():  # the same fresh init on both
        np.testing.assert_array_equal(v, mm.module_state(m)[k])
    assert mt.module_state(t)["skips.0.logits"].dtype == np.float32
    assert mt.module_state(t)["skips.0.gate"].shape == ()


@needs_mlx
def test_mlx_stochastic_is_seeded():
    cfg = dict(history=3, init="uniform", stochastic=True)
    mx.random.seed(0)
    layers = [mnn.Linear(C, C) for _ in range(DEPTH)]
    make = lambda seed: mm.HistorySequential(layers, seed=seed, **cfg)  # noqa: E731
    x = mx.array(_x().astype(np.float32))
    a, b, c = make(1)(x), make(1)(x), make(2)(x)
    np.testing.assert_array_equal(np.array(a), np.array(b))
    assert not np.allclose(np.array(a), np.array(c))
    model = make(1)
    model.eval()
    np.testing.assert_array_equal(np.array(model(x)), np.array(make(3).eval()(x)))  # no noise in eval


# --- mHC-lite modules ----------------------------------------------------------------------


def _lite_state(n=3, c=4, seed=0):
    rng = np.random.default_rng(seed)
    p = mc.init_params(n, c, variant="mhc-lite", phi_std=0.5, dtype=np.float64)
    return {"phi": p["phi"], "bias": p["bias"] + rng.normal(0, 0.5, p["bias"].shape),
            "alpha": rng.uniform(0.5, 1.5, 3), "layer.weight": rng.normal(0, 0.5, (c, c)),
            "layer.bias": rng.normal(0, 0.1, c)}


def test_torch_lite_module_matches_oracle_and_refuses_triton():
    n, c = 3, 4
    state, x = _lite_state(n, c), np.random.default_rng(2).normal(size=(2, n, c))
    module = mt.MHC(nn.Linear(c, c), n, c, variant="mhc-lite").double()
    mt.load_state(module, state)
    want = mc.step(x, lambda h: h @ state["layer.weight"].T + state["layer.bias"], state["phi"], state["bias"],
                   state["alpha"], variant="mhc-lite")
    _close(module(torch.tensor(x)).detach().numpy(), want, 1e-12, "torch mhc-lite")
    assert module.phi.shape == (n * c, 6 + 2 * n)
    with pytest.raises(ValueError, match="impl='triton' has no kernel for variant 'mhc-lite'"):
        mt.MHC(nn.Linear(c, c), n, c, variant="mhc-lite", impl="triton")
    from mhc_core_torch import triton_gate
    assert "mhc-lite" in triton_gate.unavailable_reason(torch.zeros(1, n, c), "mhc-lite")
    with pytest.raises(ValueError, match="n <= 6"):
        mt.MHC(nn.Linear(c, c), 7, c, variant="mhc-lite")
    assert isinstance(mt.MHC(nn.Linear(c, c), n, c, variant="mhc-lite", impl="auto")(torch.zeros(1, n, c)),
                      torch.Tensor)  # auto falls back to the reference path


def test_triton_ops_refuse_mhc_lite():
    pytest.importorskip("triton")
    from mhc_core_torch import triton_gate
    from mhc_core_torch.kernels import ops

    n, c = 3, 4
    p = mc.init_params(n, c, variant="mhc-lite")
    x = torch.zeros(2, n, c)
    assert "mhc-lite" in triton_gate.unavailable_reason(x, "mhc-lite")
    with pytest.raises(ValueError, match="'mhc-lite' has no Triton kernel"):
        ops.coefficients(x, *(torch.from_numpy(p[k]) for k in ("phi", "bias", "alpha")), variant="mhc-lite")


@needs_mlx
def test_mlx_lite_module_matches_torch():
    n, c = 3, 4
    state, x = _lite_state(n, c, seed=4), np.random.default_rng(3).normal(size=(2, n, c))
    t = mt.MHC(nn.Linear(c, c), n, c, variant="mhc-lite")
    mt.load_state(t, state)
    m = mm.MHC(mnn.Linear(c, c), n, c, variant="mhc-lite")
    mm.load_state(m, {k: v.astype(np.float32) for k, v in state.items()})
    want = t(torch.tensor(x, dtype=torch.float32)).detach().numpy()
    _close(np.array(m(mx.array(x.astype(np.float32)))), want, TOL["float32"], "mlx mhc-lite")


# --- bad input -----------------------------------------------------------------------------

BAD = [
    ("K0", dict(history=0), ValueError, "history"),
    ("temperature", dict(temperature=0.0), ValueError, "temperature must be a finite number > 0"),
    ("epsilon", dict(epsilon=1.0), ValueError, "epsilon"),
    ("constraint", dict(constraint="sparse"), ValueError, "constraint must be one of"),
    ("init", dict(init="random"), ValueError, "init must be one of"),
    ("mixing", dict(mixing="tensor"), ValueError, "mixing must be one of"),
    ("matrix-simplex", dict(mixing="matrix", constraint="simplex"), ValueError, "vector mixing"),
    ("prune", dict(prune_threshold=-1.0), ValueError, "prune_threshold"),
    # bool("no") is True: switches take True / False only
    ("detach-string", dict(detach_history="no"), TypeError, "detach_history must be True or False, got 'no'"),
    ("gate-int", dict(gate=2), TypeError, "gate must be True or False, got 2"),
    ("stochastic-string", dict(stochastic="false"), TypeError, "stochastic must be True or False, got 'false'"),
]


@pytest.mark.parametrize("lib", ["torch", "mlx"])
@pytest.mark.parametrize("kwargs,err,msg", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_settings(lib, kwargs, err, msg):
    if lib == "mlx" and mx is None:
        pytest.skip("mlx is not installed")
    mod, layer = (mt, _TanhLinear) if lib == "torch" else (mm, _MLXTanhLinear)
    with pytest.raises(err, match=msg):
        mod.HistorySequential([layer()], **kwargs)


@pytest.mark.parametrize("seed,msg", [(-3, r"seed \(of the Gumbel noise\) must be an integer >= 0, got -3"),
                                      ("1", "seed .* got '1'"), (1.5, "seed .* got 1.5")])
def test_mlx_bad_seed(seed, msg):
    if mx is None:
        pytest.skip("mlx is not installed")
    with pytest.raises(ValueError, match=msg):
        mm.HistorySequential([_MLXTanhLinear()], stochastic=True, seed=seed)
    with pytest.raises(ValueError, match=msg):
        mm.HistorySkip(2, stochastic=True, seed=seed)


def test_torch_bad_generator():
    with pytest.raises(TypeError, match="generator must be a torch.Generator .* got builtins.int"):
        mt.HistorySequential([_TanhLinear()], stochastic=True, generator=5)


@pytest.mark.parametrize("lib", ["torch", "mlx"])
def test_non_module_layers_and_shape_changes(lib):
    if lib == "mlx" and mx is None:
        pytest.skip("mlx is not installed")
    mod, layer, lin, arr = ((mt, _TanhLinear, lambda a, b: nn.Linear(a, b), torch.zeros) if lib == "torch" else
                            (mm, _MLXTanhLinear, lambda a, b: mnn.Linear(a, b), mx.zeros))
    with pytest.raises(TypeError, match=r"layers\[1\] must be a"):
        mod.HistorySequential([layer(), lambda x: x])
    with pytest.raises(TypeError, match="single"):
        mod.HistorySequential(layer())
    with pytest.raises(ValueError, match="at least one"):
        mod.HistorySequential([])
    model = mod.HistorySequential([layer(), lin(C, C + 1)])
    with pytest.raises(ValueError, match=r"layer output y \[2, 6\] must have the shape of the states in the "
                                         r"window \[2, 5\]"):
        model(arr((2, C)))


# --- the mhc_core functions themselves on each backend and dtype ---------------------------

FUNCS = {
    "simplex_projection": (lambda v: mc.simplex_projection(v), (4, 6)),
    "history_weights-softmax": (lambda v: mc.history_weights(v, temperature=0.7), (4, 6)),
    "history_weights-simplex": (lambda v: mc.history_weights(v, constraint="simplex"), (4, 6)),
    "history_weights-identity": (lambda v: mc.history_weights(v, constraint="identity", epsilon=0.2), (4, 6)),
    "skip_weights-matrix": (lambda v: mc.skip_weights(v, 3, mixing="matrix"), (4, 4)),
    "birkhoff_res": (lambda v: mc.birkhoff_res(v, 4), (3, 24)),
}
LIB_DTYPES = [("torch", "float32"), ("torch", "bfloat16"), ("mlx", "float32"), ("mlx", "bfloat16")]


def _round(a, dtype):
    a32 = np.asarray(a, np.float32)
    if dtype == "float32":
        return a32.astype(np.float64)
    return torch.tensor(a32).to(torch.bfloat16).double().numpy()


def _grad_torch(fn, v64, probe):
    t = torch.tensor(v64, requires_grad=True)
    (fn(t) * torch.tensor(probe)).sum().backward()
    return t.grad.numpy()


@pytest.mark.parametrize("lib,dtype", LIB_DTYPES, ids=[f"{a}-{b}" for a, b in LIB_DTYPES])
@pytest.mark.parametrize("name", list(FUNCS))
def test_core_function_on_backend(name, lib, dtype):
    """Forward vs the numpy float64 oracle on the same (rounded) input; float32 gradients
    vs torch float64 (checked against finite differences below)."""
    if lib == "mlx" and mx is None:
        pytest.skip("mlx is not installed")
    fn, shape = FUNCS[name]
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    v = _round(rng.normal(0.0, 1.5, shape), dtype)
    want = fn(v)  # numpy float64 oracle
    out_tol = 1e-5  # bf16 inputs are computed in float32 too (compute_dtype)
    probe = rng.normal(size=np.shape(want))
    if lib == "torch":
        t = torch.tensor(v, dtype=getattr(torch, dtype), requires_grad=True)
        out = fn(t)
        (out.double() * torch.tensor(probe)).sum().backward()
        got, grad = out.detach().double().numpy(), t.grad.double().numpy()
    else:
        a = mx.array(v.astype(np.float32)).astype(getattr(mx, dtype))
        got = np.array(fn(a).astype(mx.float32), dtype=np.float64)
        grad = np.array(mx.grad(lambda z: (fn(z).astype(mx.float32) * mx.array(probe.astype(np.float32))).sum())(a)
                        .astype(mx.float32), dtype=np.float64)
    assert got.dtype == np.float64 and got.shape == want.shape
    _close(got, want, out_tol, f"{lib}-{dtype} {name} out")
    want_grad = _grad_torch(fn, v, probe)
    _close(grad, want_grad, 2e-5 if dtype == "float32" else 1e-2, f"{lib}-{dtype} {name} grad")


@pytest.mark.parametrize("name", list(FUNCS))
def test_core_function_float64_gradients_vs_finite_differences(name):
    fn, shape = FUNCS[name]
    rng = np.random.default_rng(zlib.crc32((name + "fd").encode()))
    v = rng.normal(0.0, 1.5, shape)
    probe = rng.normal(size=np.shape(fn(v)))
    g = _grad_torch(fn, v, probe)
    d, h = rng.normal(size=shape), 1e-6
    fd = ((fn(v + h * d) * probe).sum() - (fn(v - h * d) * probe).sum()) / (2 * h)
    assert abs((g * d).sum() - fd) <= 1e-7 * max(1.0, abs(fd)), f"{name}: {(g * d).sum()} vs {fd}"


@pytest.mark.parametrize("lib", ["torch", "mlx"])
def test_skip_weights_composite_is_the_stack_with_layers_off(lib):
    """With every layer's output 0, the stack maps x_0 to c_L x_0: the composite that
    mhc_core.history_composite computes from the module's skip_weights()."""
    if lib == "mlx" and mx is None:
        pytest.skip("mlx is not installed")
    cfg = CONFIGS["identity-K4-gate-prune"]
    state = {k: (np.zeros_like(v) if k.startswith("layers.") else v) for k, v in _state(cfg, seed=2).items()}
    x = _x()
    if lib == "torch":
        model = _torch_model(cfg, state, torch.float64)
        out = model(torch.tensor(x)).detach().numpy()
        weights = [w.numpy() for w in model.skip_weights()]
    else:
        model = mm.HistorySequential([_MLXTanhLinear() for _ in range(DEPTH)], **cfg)
        mm.load_state(model, {k: v.astype(np.float32) for k, v in state.items()})
        out = np.array(model(mx.array(x.astype(np.float32))), dtype=np.float64)
        weights = [np.array(w, dtype=np.float64) for w in model.skip_weights()]
    c = float(np.asarray(mc.history_composite(weights, cfg["history"])[-1]))
    assert c < 0.9  # the gates shrink the skip path
    _close(out, c * x, 1e-12 if lib == "torch" else 2e-6, f"{lib} composite")


@pytest.mark.gpu
def test_cuda_lite_module_and_stochastic_history():
    """CUDA: mHC-lite (its permutation constant lands on x's device) equals the CPU run;
    the Gumbel noise comes from a CUDA generator and is reproducible."""
    dev = torch.device("cuda")
    n, c = 4, 8
    state = _lite_state(n, c, seed=6)
    x = torch.randn(3, n, c, dtype=torch.float64)
    cpu = mt.MHC(nn.Linear(c, c), n, c, variant="mhc-lite").double()
    mt.load_state(cpu, state)
    gpu = mt.MHC(nn.Linear(c, c), n, c, variant="mhc-lite").double().to(dev)
    mt.load_state(gpu, state)
    _close(gpu(x.to(dev)).detach().cpu().numpy(), cpu(x).detach().numpy(), 1e-12, "cuda mhc-lite")
    layers = [_TanhLinear() for _ in range(DEPTH)]
    outs = []
    for _ in range(2):
        model = mt.HistorySequential(layers, history=3, init="uniform", stochastic=True,
                                     generator=torch.Generator(device=dev).manual_seed(0)).to(dev)
        mt.load_state(model, _state(dict(history=3)))
        outs.append(model(torch.randn(2, C, device=dev, generator=torch.Generator(device=dev).manual_seed(1))))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
