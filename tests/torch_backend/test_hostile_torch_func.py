"""MHC modules in training code that differentiates twice or traces the forward: gradient
penalties and Hessian-vector products with only some inputs requiring grad (data x, frozen
mixing) or with tied weights, vectorized jacobian / hessian, gradcheck's forward-AD and
batched checks, non-strict torch.export and torch.compile(dynamic=True, fullgraph=True) of
MHC and HistorySequential. Every number is compared with float64 torch autograd through the
spec's plain ops (mhc_core on torch tensors), finite differences, or the eager module."""
from __future__ import annotations

import pytest
import torch

import mhc_core
from mhc_core_torch import MHC, HistorySequential
from mhc_core_torch import autograd as ag

N, C = 3, 4


@pytest.fixture(params=["numpy", "torch"])
def where(request, monkeypatch):
    """The nodes' math on numpy views (eager CPU default) or on torch tensors."""
    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 40 if request.param == "numpy" else 0)
    return request.param


def _module(variant="mhc", seed=0):
    """A float64 MHC around Linear + tanh with mixing weights far from the init."""
    gen = torch.Generator().manual_seed(seed)
    n = 1 if variant == "residual" else N
    module = MHC(torch.nn.Sequential(torch.nn.Linear(C, C), torch.nn.Tanh()), n=n, dim=C, variant=variant,
                 impl="reference").double()
    with torch.no_grad():
        for p in module.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=gen, dtype=p.dtype))
    return module


def _spec(module, x, params=None):
    """The module's step through mhc_core's plain torch ops (torch autograd differentiates
    it), with `params` (a name -> tensor dict) in place of the module's own."""
    p = dict(module.named_parameters()) if params is None else params
    layer_p = {k[len("layer."):]: v for k, v in p.items() if k.startswith("layer.")}

    def layer(h):
        return torch.func.functional_call(module.layer, layer_p, (h,))

    if module.variant == "residual":
        return mhc_core.residual_step(x, layer)
    return mhc_core.step(x, layer, p["phi"], p["bias"], p["alpha"], variant=module.variant, **module._cfg)


def _x(module, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(2, 3, module.n, C, generator=gen, dtype=torch.float64)


@pytest.mark.parametrize("variant", ["mhc", "hc", "mhc-lite"])
def test_parameter_hvp_with_data_x_matches_the_spec(variant, where, assert_close):
    """Hessian-vector product of a loss w.r.t. the parameters with x plain data (no grad):
    the coefficients node's double backward must not differentiate w.r.t. x."""
    module = _module(variant)
    x = _x(module)
    names = [k for k, _ in module.named_parameters()]
    p0 = tuple(p.detach() for _, p in module.named_parameters())
    gen = torch.Generator().manual_seed(5)
    v = tuple(torch.randn(p.shape, generator=gen, dtype=p.dtype) for p in p0)

    def loss(run):
        return lambda *ps: run(dict(zip(names, ps))).pow(2).sum()

    got = torch.autograd.functional.hvp(loss(lambda p: torch.func.functional_call(module, p, (x,))), p0, v)[1]
    want = torch.autograd.functional.hvp(loss(lambda p: _spec(module, x, p)), p0, v)[1]
    for g, w, name in zip(got, want, names):
        assert_close(g, w, 1e-10, case=f"hvp {variant} {where} d/d{name}")


@pytest.mark.parametrize("variant", ["mhc", "hc", "mhc-lite"])
def test_gradient_penalty_with_frozen_mixing_matches_the_spec(variant, where, assert_close):
    """|d loss / dx|^2 differentiated again w.r.t. the layer's weights, with phi / bias /
    alpha frozen (requires_grad_(False))."""
    module = _module(variant)
    for name in ("phi", "bias", "alpha"):
        getattr(module, name).requires_grad_(False)
    layer_params = list(module.layer.parameters())
    results = []
    for run in (module, lambda x_: _spec(module, x_)):
        x = _x(module).requires_grad_()
        (gx,) = torch.autograd.grad(run(x).pow(2).sum(), x, create_graph=True)
        results.append(torch.autograd.grad(gx.pow(2).sum(), [x, *layer_params]))
    for g, w, name in zip(*results, ("x", "layer.weight", "layer.bias")):
        assert_close(g, w, 1e-10, case=f"penalty {variant} {where} d/d{name}")


@pytest.mark.parametrize("variant", ["mhc", "hc", "mhc-lite", "residual"])
def test_non_strict_export_with_a_dynamic_token_count_matches_eager(variant, assert_close):
    """torch.export.export's non-strict mode (the default) with the token axis dynamic: the
    shape checks must not fix it to the example's size; the program runs other token counts."""
    module = _module(variant)
    tokens = torch.export.Dim("T", min=2)
    x = torch.randn(5, module.n, C, dtype=torch.float64)
    program = torch.export.export(module, (x,), dynamic_shapes={"x": {0: tokens}}, strict=False)
    for t in (2, 9):
        x = torch.randn(t, module.n, C, dtype=torch.float64)
        assert_close(program.module()(x), module(x), 1e-12, case=f"export {variant} T={t}")


def _same_output_and_dx(compiled, eager, x, assert_close, case: str) -> None:
    """compiled(x) and its dx (of sum(out^2)) equal the eager module's to 1e-12."""
    x, x_eager = x.clone().requires_grad_(), x.clone().requires_grad_()
    out, want = compiled(x), eager(x_eager)
    assert_close(out, want, 1e-12, case=case)
    out.pow(2).sum().backward()
    want.pow(2).sum().backward()
    assert_close(x.grad, x_eager.grad, 1e-12, case=f"{case} dx")


@pytest.mark.parametrize("variant", ["mhc", "hc", "mhc-lite", "residual"])
def test_compile_dynamic_fullgraph_with_changing_token_counts_matches_eager(variant, assert_close):
    """torch.compile(dynamic=True, fullgraph=True): every size is symbolic, the stream count
    too (mhc-lite's n! must not need a Python int); output and dx equal eager's. The
    aot_eager backend: dynamo and AOTAutograd trace as for inductor, without its codegen."""
    torch._dynamo.reset()
    module = _module(variant)
    compiled = torch.compile(module, dynamic=True, fullgraph=True, backend="aot_eager")
    for t in (2, 3, 7):
        _same_output_and_dx(compiled, module, torch.randn(t, 2, module.n, C, dtype=torch.float64),
                            assert_close, f"compiled {variant} T={t}")


@pytest.mark.parametrize("settings", [{}, {"constraint": "simplex", "init": "uniform"},
                                      {"constraint": "identity", "gate": True}, {"mixing": "matrix"}],
                         ids=["softmax", "simplex", "identity-gated", "matrix"])
def test_history_sequential_compiles_dynamic_fullgraph(settings, assert_close):
    """HistorySequential under torch.compile(dynamic=True, fullgraph=True), which traces its
    float settings (temperature, epsilon) as symbolic floats: output and dx equal eager's."""
    torch._dynamo.reset()
    gen = torch.Generator().manual_seed(0)
    model = HistorySequential([torch.nn.Sequential(torch.nn.Linear(C, C), torch.nn.Tanh()) for _ in range(3)],
                              history=2, temperature=0.7, **settings).double()
    with torch.no_grad():
        for skip in model.skips:
            skip.logits.add_(torch.randn(skip.logits.shape, generator=gen, dtype=torch.float64))
    compiled = torch.compile(model, dynamic=True, fullgraph=True, backend="aot_eager")
    for t in (2, 5):
        _same_output_and_dx(compiled, model, torch.randn(t, 3, C, generator=gen, dtype=torch.float64),
                            assert_close, f"history {settings} T={t}")


@pytest.mark.parametrize("variant", ["mhc", "hc"])
def test_vectorized_jacobian_and_hessian_match_the_spec(variant, where, assert_close):
    """torch.autograd.functional.jacobian / hessian with vectorize=True run the nodes'
    backward on batched gradients (autograd.grad(is_grads_batched=True))."""
    module = _module(variant)
    x = _x(module)[:1]

    def loss(run):
        return lambda x_: run(x_).pow(2).sum()

    jac = torch.autograd.functional.jacobian
    assert_close(jac(module, x, vectorize=True), jac(lambda x_: _spec(module, x_), x), 1e-10,
                 case=f"jacobian {variant} {where}")
    got = torch.autograd.functional.hessian(loss(module), x, vectorize=True)
    want = torch.autograd.functional.hessian(loss(lambda x_: _spec(module, x_)), x)
    assert_close(got, want, 1e-10, case=f"hessian {variant} {where}")


@pytest.mark.parametrize("variant", ["mhc", "hc"])
def test_weight_tied_create_graph_gradients_match_the_spec(variant, where, assert_close):
    """One module applied twice (weight tying): its mixing weights are also upstream of the
    second call's x. Parameter gradients with create_graph=True (MAML inner steps, gradient
    penalties) and their gradient must count each path once."""
    module = _module(variant)
    x = _x(module)
    mixing = [module.phi, module.bias, module.alpha]
    results = []
    for run in (module, lambda x_: _spec(module, x_)):
        firsts = torch.autograd.grad(run(run(x)).pow(2).sum(), mixing, create_graph=True)
        results.append((firsts, torch.autograd.grad(sum(g.pow(2).sum() for g in firsts), mixing)))
    for order, got, want in zip(("first", "second"), *results):
        for g, w, name in zip(got, want, ("phi", "bias", "alpha")):
            assert_close(g, w, 1e-10, case=f"tied {variant} {where} {order} d/d{name}")


# torch's own forward-AD decompositions call torch.jit.script, which warns
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("node", ["coefficients-mhc", "coefficients-hc", "pre_aggregate", "post_residual"])
def test_nodes_pass_gradcheck_with_forward_ad_and_batched_grads(node, where):
    """gradcheck's forward-mode, batched-gradient and forward-over-reverse checks (float64
    finite differences) on each autograd node's entry point."""
    gen = torch.Generator().manual_seed(3)

    def rand(*shape):
        return torch.rand(*shape, generator=gen, dtype=torch.float64).requires_grad_()

    if node.startswith("coefficients"):
        variant = node.split("-")[1]
        p = mhc_core.init_params(N, 2, variant=variant, phi_std=0.5, seed=0)
        inputs = (rand(2, N, 2), *(torch.tensor(p[k], dtype=torch.float64) + rand(*p[k].shape)
                                   for k in ("phi", "bias", "alpha")))
        fn = lambda *a: ag.coefficients(*a, variant=variant, iters=4)  # noqa: E731
    elif node == "pre_aggregate":
        inputs, fn = (rand(2, N, 2), rand(2, N)), ag.pre_aggregate
    else:
        inputs, fn = (rand(2, N, 2), rand(2, 2), rand(2, N), rand(2, N, N)), ag.post_residual
    inputs = tuple(t.detach().requires_grad_() for t in inputs)
    assert torch.autograd.gradcheck(fn, inputs, check_forward_ad=True, check_batched_grad=True,
                                    check_batched_forward_grad=True)
    assert torch.autograd.gradgradcheck(fn, inputs, check_fwd_over_rev=True, check_batched_grad=True)
