"""mhc_core_torch.MHC / StreamHead against the numpy float64 oracle (mhc_core on numpy), the
impl dispatch, input checks, and torch.compile(fullgraph=True) of the reference path."""
from __future__ import annotations

import logging
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch

import mhc_core
from backend_registry.numpy_adapter import numpy_layer
from mhc_core_torch import MHC, StreamHead
from mhc_core_torch import dispatch, triton_gate
from mhc_core_torch.state import load_state
from backend_registry.torch_adapter import make_layer

DTYPES = {"float64": torch.float64, "float32": torch.float32}


def build(n, c, variant, layer, state, dtype=torch.float32, **kw) -> MHC:
    """An MHC around a conformance layer in `dtype`, holding `state` (float64 numpy) rounded
    once to `dtype` (init= would round it through the float32 parameters first)."""
    module = MHC(make_layer(layer, c), n, c, variant=variant, **kw).to(dtype)
    return load_state(module, state)


def oracle(x: np.ndarray, state, variant, layer, **cfg) -> np.ndarray:
    return mhc_core.step(x, numpy_layer(layer, state), state.get("phi"), state.get("bias"),
                         state.get("alpha"), variant=variant, **cfg)


# --- forward vs the oracle ---------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DTYPES))
@pytest.mark.parametrize("layer", ["linear", "mlp"])
@pytest.mark.parametrize("variant,n,lead", [("mhc", 4, (2, 3)), ("mhc", 3, ()), ("hc", 4, (2, 3)),
                                            ("hc", 2, (5,)), ("residual", 1, (2, 3))])
def test_forward_matches_numpy_oracle(variant, n, lead, layer, dtype, assert_close, random_state, tol):
    c = 7
    state = random_state(n, c, variant, layer, seed=n * 10 + len(lead))
    x = np.random.default_rng(1).normal(size=lead + (n, c))
    dt = DTYPES[dtype]
    module = build(n, c, variant, layer, state, dt)
    out = module(torch.from_numpy(x).to(dt))
    assert out.dtype == dt and out.shape == x.shape
    assert_close(out, oracle(x, state, variant, layer), tol[dt], f"{variant}-n{n}-{layer}-{dtype}-lead{lead}")


def test_non_default_config_reaches_the_math(assert_close, random_state, tol):
    cfg = dict(iters=3, rms_eps=1e-3, pre_eps=1e-3, sinkhorn_eps=0.0, post_scale=1.5)
    state = random_state(3, 5, "mhc", "linear", seed=7)
    x = np.random.default_rng(2).normal(size=(4, 3, 5))
    module = build(3, 5, "mhc", "linear", state, torch.float64, **cfg)
    assert_close(module(torch.from_numpy(x)), oracle(x, state, "mhc", "linear", **cfg), tol[torch.float64], "cfg")


def test_gradients_pass_gradcheck_float64(random_state):
    """Autograd through the reference path against finite differences (x and every parameter)."""
    n, c = 2, 3
    module = build(n, c, "mhc", "mlp", random_state(n, c, "mhc", "mlp", seed=3), torch.float64, iters=4)
    names = [name for name, _ in module.named_parameters()]
    x = torch.randn(2, n, c, dtype=torch.float64, requires_grad=True)

    def f(x, *params):
        return torch.func.functional_call(module, dict(zip(names, params)), (x,))

    params = tuple(p.detach().clone().requires_grad_(True) for p in module.parameters())
    assert torch.autograd.gradcheck(f, (x,) + params, eps=1e-6, atol=1e-7, fast_mode=True)


# --- initialisation -----------------------------------------------------------------------


@pytest.mark.parametrize("variant,n", [("mhc", 4), ("hc", 3)])
def test_default_init_is_init_params_and_warm_starts(variant, n, assert_close):
    """Default parameters equal mhc_core.init_params; with equal streams the step computes
    the plain residual x + f(x) in every stream (the warm start; mhc to the Sinkhorn eps)."""
    c = 6
    module = MHC(torch.nn.Linear(c, c), n, c, variant=variant).double()
    for name, value in mhc_core.init_params(n, c, variant=variant).items():
        p = getattr(module, name)
        assert isinstance(p, torch.nn.Parameter) and p.requires_grad, name
        assert_close(p, value, 0.0, f"init {variant} {name}")
    h = torch.randn(3, c, dtype=torch.float64)
    out = module(mhc_core.expand_streams(h, n))
    want = (h + module.layer(h)).unsqueeze(-2).expand(3, n, c)
    # mhc: the Sinkhorn columns sum to 1 - O(eps); hc: exact up to 1/n rounded to float32
    assert_close(out, want, 1e-5 if variant == "mhc" else 1e-7, f"warm start {variant}")


def test_parameters_are_float32_and_named_as_the_spec():
    module = MHC(torch.nn.Linear(5, 5), 3, 5)
    shapes = {name: tuple(p.shape) for name, p in module.named_parameters()}
    assert shapes == {**mhc_core.param_shapes(3, 5), "layer.weight": (5, 5), "layer.bias": (5,)}
    assert all(p.dtype == torch.float32 for p in module.parameters())
    assert [n for n, _ in MHC(torch.nn.Linear(5, 5), 1, 5, variant="residual").named_parameters()] == \
        ["layer.weight", "layer.bias"]


def test_init_argument_is_used_and_checked(assert_close):
    init = {k: v + 0.25 for k, v in mhc_core.init_params(2, 3).items()}
    module = MHC(torch.nn.Identity(), 2, 3, init=init)
    for k, v in init.items():
        assert_close(getattr(module, k), v, 0.0, f"init[{k}]")
    with pytest.raises(ValueError, match=r"missing \['alpha'\]"):
        MHC(torch.nn.Identity(), 2, 3, init={k: init[k] for k in ("phi", "bias")})
    with pytest.raises(ValueError, match=r"init\['phi'\] must have shape \[6, 8\], got \[6, 9\]"):
        MHC(torch.nn.Identity(), 2, 3, init={**init, "phi": np.zeros((6, 9))})


# --- StreamHead ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", list(DTYPES))
def test_stream_head_matches_oracle(dtype, assert_close, tol):
    n, c = 4, 5
    rng = np.random.default_rng(4)
    state = {"phi": rng.normal(0, 0.5, (n * c, n)), "bias": rng.normal(0, 1, (n,)), "alpha": rng.uniform(0.5, 2, (1,))}
    head = load_state(StreamHead(n, c).to(DTYPES[dtype]), state)
    x = rng.normal(size=(2, 3, n, c))
    want = mhc_core.head(x, state["phi"], state["bias"], state["alpha"])
    assert_close(head(torch.from_numpy(x).to(DTYPES[dtype])), want, tol[DTYPES[dtype]], f"head-{dtype}")
    fresh = StreamHead(n, c).double()  # init_head_params: the mean over streams (float32 logit)
    assert_close(fresh(torch.from_numpy(x)), x.mean(-2), 1e-7, "head init = mean")


# --- impl dispatch ------------------------------------------------------------------------


def test_auto_resolves_to_reference_on_cpu(monkeypatch):
    x = torch.randn(2, 4, 3)
    for interpreted in (True, False):  # the suite sets TRITON_INTERPRET=1 without CUDA
        monkeypatch.setattr(triton_gate, "INTERPRETED", interpreted)
        assert dispatch.resolve_impl("auto", x) == "reference"
        assert dispatch.resolve_impl("reference", x) == "reference"


def test_explicit_triton_on_cpu_tensor_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(triton_gate, "INTERPRETED", False)  # as if imported without TRITON_INTERPRET=1
    module = MHC(torch.nn.Linear(3, 3), 4, 3, impl="triton")
    with pytest.raises(RuntimeError, match=r"impl='triton'.*x is on cpu.*need a CUDA tensor"):
        module(torch.randn(2, 4, 3))


def test_explicit_triton_without_triton_installed_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(triton_gate, "_TRITON_IMPORT_ERROR", ["ModuleNotFoundError: No module named 'triton'"])
    with pytest.raises(RuntimeError, match=r"triton does not import \(ModuleNotFoundError"):
        dispatch.resolve_impl("triton", torch.randn(4, 3))


def test_triton_gate_states_the_limits_once():
    """The stream limit and dtypes come from triton_gate and reach every message."""
    x = torch.zeros(2, triton_gate.MAX_STREAMS + 1, 4)
    assert f"n <= {triton_gate.MAX_STREAMS} streams, got n={triton_gate.MAX_STREAMS + 1}" in \
        triton_gate.unavailable_reason(x)
    assert "float64 runs on impl='reference'" in triton_gate.unavailable_reason(x[:, :2].double())
    assert "no Triton kernel" in triton_gate.unavailable_reason(x[:, :1], "residual")
    with pytest.raises(ValueError, match=f"pre_aggregate: the Triton kernels support n <= {triton_gate.MAX_STREAMS}"):
        triton_gate.check_kernel_inputs("pre_aggregate", triton_gate.MAX_STREAMS + 1, x)
    with pytest.raises(ValueError, match="all inputs must be on one device"):
        triton_gate.check_kernel_inputs("sinkhorn", 2, torch.zeros(1), torch.zeros(1, device="meta"))
    with pytest.raises(RuntimeError, match=r"sinkhorn: x is on meta; the Triton kernels need a CUDA tensor"):
        triton_gate.check_kernel_inputs("sinkhorn", 2, torch.zeros(1, device="meta"))


def test_triton_gate_reads_triton_interpret_once(monkeypatch):
    """Kernels are decorated once, at import: the gate answers from INTERPRETED (read then),
    not from the environment variable's current value."""
    x = torch.zeros(2, 3, 4)
    for interpreted in (True, False):
        monkeypatch.setattr(triton_gate, "INTERPRETED", interpreted)
        monkeypatch.setenv("TRITON_INTERPRET", "0" if interpreted else "1")
        reason = triton_gate.unavailable_reason(x)
        if not triton_gate.triton_imports():
            assert reason.startswith("triton does not import")
        elif interpreted:
            assert reason is None
        else:
            assert "x is on cpu; the Triton kernels need a CUDA tensor" in reason


_WITHOUT_TRITON = """
import sys
sys.modules["triton"] = None  # `import triton` raises ImportError, as where it is not installed
import torch
from mhc_core_torch import MHC, dispatch, triton_gate
assert not triton_gate.runnable() and dispatch.triton_ops is None
m = MHC(torch.nn.Linear(4, 4), 2, 4)
x = torch.randn(3, 2, 4)
ref = MHC(torch.nn.Linear(4, 4), 2, 4, impl="reference")
ref.load_state_dict(m.state_dict())
assert torch.equal(m(x), ref(x))
try:
    MHC(torch.nn.Linear(4, 4), 2, 4, impl="triton")(x)
except RuntimeError as err:
    print("ERROR", err)
"""


def test_without_triton_auto_runs_reference_and_triton_says_why():
    """In a process where `import triton` fails: the kernels are not imported, impl='auto'
    gives the reference numbers, impl='triton' names the import failure."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path), "TRITON_INTERPRET": "1"}
    run = subprocess.run([sys.executable, "-c", _WITHOUT_TRITON], env=env, capture_output=True, text=True,
                         timeout=300)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "ERROR impl='triton' was requested but cannot run: triton does not import (ModuleNotFoundError" \
        in run.stdout, run.stdout


def test_unknown_impl_is_a_value_error():
    with pytest.raises(ValueError, match=r"impl must be one of \('auto', 'reference', 'triton'\), got 'cuda'"):
        MHC(torch.nn.Linear(3, 3), 4, 3, impl="cuda")
    with pytest.raises(ValueError, match="impl must be one of"):
        dispatch.resolve_impl("fast", torch.randn(4, 3))


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize("x,error,message", [
    (torch.randn(3), ValueError, r"x must have shape \[..., n, C\] \(rank >= 2\), got shape \(3,\)"),
    (torch.randn(2, 3, 3), ValueError, r"x must have shape \[2, 4, 3\] \(\[..., n, C\] with n=4, C=3.*got \[2, 3, 3\]"),
    (torch.randn(2, 4, 5), ValueError, r"x must have shape \[2, 4, 3\] \(\[..., n, C\] with n=4, C=3.*got \[2, 4, 5\]"),
    (torch.ones(2, 4, 3, dtype=torch.int64), TypeError, r"x must be a floating-point array, got dtype torch.int64"),
    (np.ones((2, 4, 3)), TypeError, r"MHC expects a torch.Tensor x \[..., n, C\], got numpy.ndarray"),
], ids=["rank", "n", "C", "int-dtype", "numpy"])
def test_bad_input_is_rejected_with_a_clear_message(x, error, message):
    for module in (MHC(torch.nn.Linear(3, 3), 4, 3), StreamHead(4, 3)):
        with pytest.raises(error, match=message.replace("MHC", type(module).__name__)):
            module(x)


@pytest.mark.parametrize("kwargs,message", [
    (dict(n=0), r"n \(number of streams\) must be an integer >= 1, got 0"),
    (dict(dim=0), r"dim \(channels per stream, C\) must be an integer >= 1, got 0"),
    (dict(variant="mhc2"), r"variant must be one of \('mhc', 'hc', 'residual', 'mhc-lite'\), got 'mhc2'"),
    (dict(variant="residual"), r"the residual variant has one stream: n must be 1, got n=4"),
    (dict(iters=0), r"iters must be an integer >= 1, got 0"),
    (dict(rms_eps=-1.0), r"rms_eps must be a finite number >= 0, got -1.0"),
], ids=["n", "dim", "variant", "residual-n", "iters", "rms_eps"])
def test_bad_constructor_arguments(kwargs, message):
    args = {"n": 4, "dim": 3, **kwargs}
    n, dim = args.pop("n"), args.pop("dim")
    with pytest.raises(ValueError, match=message):
        MHC(torch.nn.Linear(3, 3), n, dim, **args)


# --- torch.compile -------------------------------------------------------------------------


@pytest.mark.parametrize("variant", ["mhc", "hc"])
def test_compile_fullgraph_matches_eager(variant, random_state, assert_close, caplog):
    """fullgraph=True: the whole reference step (checks, shim, 20 Sinkhorn rounds) traces
    into one graph, silently (no warning, no log record at WARNING). aot_eager runs dynamo +
    AOTAutograd (forward and backward graphs) without inductor's C++ compile, which takes
    ~25 s per graph on the CI's 2 cores."""
    n, c = 4, 6
    module = build(n, c, variant, "mlp", random_state(n, c, variant, "mlp", seed=11))
    x = torch.randn(2, 3, n, c)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught, caplog.at_level(logging.WARNING):
        warnings.simplefilter("always")
        compiled = torch.compile(module, fullgraph=True, backend="aot_eager")
        xs = [x.clone().requires_grad_(True) for _ in range(2)]
        outs = [compiled(xs[0]), module(xs[1])]
    assert not caught, [str(w.message)[:200] for w in caught]
    assert not caplog.records, [r.getMessage()[:200] for r in caplog.records]
    assert_close(outs[0], outs[1], 1e-6, f"compiled forward {variant}")
    grads = [torch.autograd.grad(o.square().sum(), [xi, *module.parameters()]) for o, xi in zip(outs, xs)]
    for name, g_c, g_e in zip(["x"] + [k for k, _ in module.named_parameters()], *grads):
        assert_close(g_c, g_e, 1e-5, f"compiled grad {variant} {name}")
