"""MHC(impl='triton') end to end: same numbers as MHC(impl='reference') (forward and every
gradient, layer weights included), dispatch rules, torch.compile, and the registry record."""
from collections import OrderedDict

import numpy as np
import pytest
import torch
from torch import nn

import backend_registry as registry
from mhc_core_torch import MHC, dispatch, triton_gate
from mhc_core_torch.kernels import ops


def _pair(variant, n, c, dtype, mixing_params, device, seed=0):
    """Two MHC modules (triton, reference) with identical random weights, an MLP layer."""
    torch.manual_seed(seed)
    layer = nn.Sequential(OrderedDict(fc1=nn.Linear(c, 2 * c), act=nn.SiLU(), fc2=nn.Linear(2 * c, c)))
    init = {k: torch.from_numpy(v).float() for k, v in mixing_params(n, c, variant, seed).items()}
    mods = []
    for impl in ("triton", "reference"):
        m = MHC(layer, n, c, variant=variant, init=init, impl=impl, iters=6)
        m.to(device)
        m.layer.to(dtype)  # mixing parameters stay float32 (as DeepSeek-V4 keeps hc_* weights)
        mods.append(m)
    return mods


def _grads(m, x, cot):
    x = x.detach().clone().requires_grad_(True)
    names, params = zip(*m.named_parameters())
    out = m(x)
    gs = torch.autograd.grad((out.float() * cot.float()).sum(), (x,) + params)
    names = tuple(k.removeprefix("_orig_mod.") for k in names)  # torch.compile's wrapper
    return out, dict(zip(("x",) + names, gs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
@pytest.mark.parametrize("variant", ["mhc", "hc"])
def test_triton_module_matches_reference(variant, dtype, device, assert_close, mixing_params):
    n, c = 3, 12
    tri, ref = _pair(variant, n, c, dtype, mixing_params, device)
    rng = np.random.default_rng(1)
    x = torch.from_numpy(rng.normal(size=(2, 3, n, c))).to(device, dtype)
    cot = torch.from_numpy(rng.normal(size=(2, 3, n, c))).to(device, dtype)
    out_t, g_t = _grads(tri, x, cot)
    out_r, g_r = _grads(ref, x, cot)
    cid = f"module-{variant}-{dtype}"
    tol = 1e-5 if dtype == torch.float32 else 2e-2
    assert_close(out_t, out_r, tol, cid + "-out")
    assert set(g_t) == set(g_r) == {"x", "phi", "bias", "alpha", "layer.fc1.weight", "layer.fc1.bias",
                                    "layer.fc2.weight", "layer.fc2.bias"}
    for name in g_r:
        assert_close(g_t[name], g_r[name], tol, f"{cid}-grad-{name}")


def test_dispatch_rules(device):
    x = torch.zeros(2, 3, 4, device=device)
    # CUDA tensors: the kernels; CPU tensors: reference, even when interpreting
    assert dispatch.resolve_impl("auto", x) == ("triton" if device == "cuda" else "reference")
    assert dispatch.resolve_impl("reference", x) == "reference"
    assert dispatch.resolve_impl("triton", x) == "triton"  # on the CPU, the interpreter runs it
    with pytest.raises(RuntimeError, match="float64 runs on impl='reference'"):
        dispatch.resolve_impl("triton", x.double())
    with pytest.raises(RuntimeError, match="n <= 16"):
        dispatch.resolve_impl("triton", torch.zeros(2, 17, 4, device=device))
    with pytest.raises(RuntimeError, match="no Triton kernel"):
        dispatch.resolve_impl("triton", torch.zeros(2, 1, 4, device=device), variant="residual")
    with pytest.raises(ValueError, match="impl must be one of"):
        dispatch.resolve_impl("cuda", x)
    assert "CUDA tensor" in triton_gate.unavailable_reason(torch.zeros(2, 3, 4, device="meta"))


def test_double_backward_is_a_clear_error(mixing_params, assert_close, device):
    """A gradient of a gradient: the kernels have first derivatives only, so backward through
    a create_graph=True gradient raises an error naming impl='reference' (where it works)."""
    tri, ref = _pair("mhc", 2, 4, torch.float32, mixing_params, device)
    x = torch.randn(1, 2, 2, 4, device=device)
    firsts = []
    for m in (tri, ref):
        xi = x.clone().requires_grad_(True)
        (g,) = torch.autograd.grad(m(xi).square().sum(), xi, create_graph=True)
        firsts.append(g)
    assert_close(firsts[0], firsts[1], 1e-5, "first-order grad with create_graph=True")
    with pytest.raises(RuntimeError, match=r"double backward through the Triton kernels .*impl='reference'"):
        firsts[0].square().sum().backward()
    firsts[1].square().sum().backward()  # the reference path differentiates twice
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in (ref.phi, ref.bias, ref.alpha))


@pytest.mark.parametrize("op", ["coefficients", "sinkhorn", "pre_aggregate", "post_residual", "step"])
def test_each_kernel_op_refuses_double_backward(op, mixing_params, device):
    n, c = 2, 4
    p = {k: torch.from_numpy(v).float().to(device).requires_grad_(True) for k, v in mixing_params(n, c).items()}
    x = torch.randn(3, n, c, device=device, requires_grad=True)
    run = {
        "coefficients": lambda: ops.coefficients(x, p["phi"], p["bias"], p["alpha"], iters=2)[2],
        "sinkhorn": lambda: ops.sinkhorn(x[:, :, :n], iters=2),
        "pre_aggregate": lambda: ops.pre_aggregate(x, x[:, :, 0]),
        "post_residual": lambda: ops.post_residual(x, x[:, 0], x[:, :, 1], x[:, :, :n]),
        "step": lambda: ops.step(x, torch.tanh, p["phi"], p["bias"], p["alpha"], iters=2),
    }[op]
    (g,) = torch.autograd.grad(run().square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match=rf"double backward through the Triton kernels \({op}\)"):
        g.sum().backward()


def test_triton_module_float64_is_a_clear_error(device):
    m = MHC(nn.Identity(), 2, 4, impl="triton").to(device).double()
    with pytest.raises(RuntimeError, match="float64"):
        m(torch.zeros(1, 2, 4, dtype=torch.float64, device=device))


def test_triton_module_under_torch_compile(device, assert_close, mixing_params):
    """fullgraph=True: the kernels are custom ops inside autograd.Functions, so dynamo
    traces the module without a graph break; same numbers as eager. (aot_eager keeps
    the test fast; inductor was checked to work too, and is what runs on a GPU.)"""
    tri, _ = _pair("mhc", 2, 8, torch.float32, mixing_params, device)
    x = torch.randn(3, 2, 8, device=device)
    cot = torch.randn(3, 2, 8, device=device)
    out_e, g_e = _grads(tri, x, cot)
    compiled = torch.compile(tri, backend="aot_eager", fullgraph=True)
    out_c, g_c = _grads(compiled, x, cot)
    assert_close(out_c, out_e, 1e-6, "compile-out")
    for name in g_e:
        assert_close(g_c[name], g_e[name], 1e-6, f"compile-grad-{name}")


def test_registry_record_and_adapter():
    rec = registry.get("torch-triton")
    assert rec.runnable(), "torch-triton must be runnable where CUDA or the interpreter is"
    assert "torch-triton" in [b.name for b in registry.available()]
    ad = rec.adapter()
    assert ad.core_fn("coefficients") is ops.coefficients
    assert ad.core_fn("sinkhorn") is ops.sinkhorn
    m = ad.make_mhc(2, 4, "mhc", "linear", {"phi": np.zeros((8, 8)), "bias": np.zeros(8), "alpha": np.ones(3),
                                            "layer.weight": np.eye(4), "layer.bias": np.zeros(4)}, "float32")
    assert m.impl == "triton"


def _transformed_run(transform: str, m, x):
    """What a torch.func / forward-mode AD user computes with module m at x."""
    from torch.autograd import forward_ad

    tangent = torch.linspace(-1.0, 1.0, x.numel(), device=x.device).reshape(x.shape)
    if transform == "func.grad":
        return torch.func.grad(lambda x_: m(x_).square().sum())(x)
    if transform == "vmap":
        return torch.func.vmap(m)(x)
    if transform == "jvp":
        return torch.func.jvp(m, (x,), (tangent,))[1]
    with forward_ad.dual_level():
        return forward_ad.unpack_dual(m(forward_ad.make_dual(x, tangent))).tangent


# torch's own forward-AD decompositions call torch.jit.script, which warns
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("transform", ["func.grad", "vmap", "jvp", "forward-ad"])
def test_func_transforms_and_forward_ad_on_the_triton_path(transform, mixing_params, assert_close, device):
    """The kernels' autograd Functions have no forward-mode or functorch rules: impl='triton'
    under a transform is an error naming impl='reference'; impl='auto' runs the reference
    path there (on CUDA too), with the reference's numbers."""
    tri, ref = _pair("mhc", 2, 4, torch.float32, mixing_params, device)
    x = torch.randn(3, 2, 2, 4, device=device)
    with pytest.raises(RuntimeError, match=r"impl='triton' cannot run under forward-mode AD, a torch\.func "
                                           r"transform.*impl='reference'"):
        _transformed_run(transform, tri, x)
    tri.impl = "auto"
    assert_close(_transformed_run(transform, tri, x), _transformed_run(transform, ref, x), 1e-6, transform)


def test_batched_gradients_through_the_kernels_are_a_clear_error(mixing_params, assert_close, device):
    """jacobian(vectorize=True) runs the backward on legacy-vmap batched gradients, which have
    no storage for the kernels to read: an error naming impl='reference', where it works."""
    tri, ref = _pair("mhc", 2, 4, torch.float32, mixing_params, device)
    x = torch.randn(2, 2, 4, device=device)
    with pytest.raises(RuntimeError, match=r"batched gradients .*vectorize=True.* impl='reference'"):
        torch.autograd.functional.jacobian(tri, x, vectorize=True)
    jac = torch.autograd.functional.jacobian
    assert_close(jac(ref, x, vectorize=True), jac(tri, x), 1e-5, "reference vectorized vs triton jacobian")


# torch.jit.trace is deprecated in this torch (it still works and warns)
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_jit_trace_on_the_triton_path(mixing_params, assert_close, device):
    """torch.jit.trace hands the launchers traced sizes the kernels cannot take: impl='triton'
    is an error naming impl='reference'; impl='auto' traces the reference path, whose
    traced module runs other token counts with the reference's numbers."""
    tri, ref = _pair("mhc", 2, 4, torch.float32, mixing_params, device)
    x = torch.randn(3, 2, 4, device=device)
    with pytest.raises(RuntimeError, match=r"impl='triton' cannot run under .*torch\.jit\.trace.*impl='reference'"):
        torch.jit.trace(tri, (x,), check_trace=False)
    tri.impl = "auto"
    traced = torch.jit.trace(tri, (x,), check_trace=False)
    x5 = torch.randn(5, 2, 4, device=device)
    assert_close(traced(x5), ref(x5), 1e-6, "traced auto vs reference")
