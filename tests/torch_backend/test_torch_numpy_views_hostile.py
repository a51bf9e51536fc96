"""The eager CPU path (mhc_core on numpy views of the tensors) under hostile use: outputs
changed in place, several graphs alive at once, threads, input dtypes and layouts. Each
result is compared with autograd through the spec's plain torch ops (mhc_core on torch
tensors, float64) or with the same Function run on torch tensors."""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

import mhc_core
from mhc_core_torch import autograd as ag


def _leaves(n=4, c=8, lead=(2, 3), seed=0, x_dtype=torch.float64, param_dtype=torch.float64, res_scale=1.0):
    """x [*lead, n, C] random; phi / bias random, their res columns scaled by res_scale
    (0: equal res logits, which stop Sinkhorn at a fixed point at once)."""
    rng = np.random.default_rng(seed)
    m = n * n + 2 * n
    phi, bias = rng.normal(0.0, 0.5, (n * c, m)), rng.normal(0.0, 0.5, m)
    phi[:, 2 * n :] *= res_scale
    bias[2 * n :] *= res_scale
    vals = (rng.normal(size=lead + (n, c)), phi, bias, np.array([0.7, 0.9, 1.1]))
    dtypes = (x_dtype, param_dtype, param_dtype, param_dtype)
    return [torch.tensor(v, dtype=dt, requires_grad=True) for v, dt in zip(vals, dtypes)]


def _weights(shapes, seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(s, generator=gen, dtype=torch.float64) for s in shapes]


def _spec_coefficients_grads(leaves, weights, res_factor=1.0, iters=20):
    """Outputs and gradients of sum(w * out) (res scaled by res_factor) through the spec's
    plain torch ops in float64."""
    leaves64 = [t.detach().double().requires_grad_() for t in leaves]
    pre, post, res = mhc_core.coefficients(*leaves64, variant="mhc", iters=iters)
    loss = (pre * weights[0]).sum() + (post * weights[1]).sum() + (res * res_factor * weights[2]).sum()
    return (pre, post, res), torch.autograd.grad(loss, leaves64)


@pytest.mark.parametrize("n,lead", [(4, (1,)), (4, (1, 1)), (1, (2, 3)), (3, (2, 3))])
def test_res_changed_in_place_does_not_alter_the_saved_iterates(monkeypatch, assert_close, n, lead):
    """One token (or n = 1) makes res a view of Sinkhorn's last iterate, which the backward
    reads: the output must not share it, or res.mul_() silently changes the gradient."""
    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20)
    leaves = _leaves(n=n, lead=lead)
    pre, post, res = ag.coefficients(*leaves, variant="mhc")
    weights = _weights([pre.shape, post.shape, res.shape])
    res.mul_(2.0)
    loss = (pre * weights[0]).sum() + (post * weights[1]).sum() + (res * weights[2]).sum()
    grads = torch.autograd.grad(loss, leaves)
    _, want = _spec_coefficients_grads(leaves, weights, res_factor=2.0)
    for got, ref, name in zip(grads, want, ("dx", "dphi", "dbias", "dalpha")):
        assert_close(got, ref, 1e-12, case=f"n={n} lead={lead} {name}")


def _step_grads(leaves, numpy_path: bool, monkeypatch, x_view=lambda x: x):
    """out and the gradients of sum(w * out) for the step around tanh, on numpy views or
    on torch tensors."""
    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20 if numpy_path else 0)
    out = ag.step(x_view(leaves[0]), torch.tanh, *leaves[1:], variant="mhc")
    (w,) = _weights([out.shape], seed=2)
    return out.detach(), torch.autograd.grad((out.double() * w).sum(), leaves)


@pytest.mark.parametrize("x_dtype,param_dtype,tol", [
    (torch.float64, torch.float64, 1e-12), (torch.float32, torch.float32, 1e-5),
    (torch.bfloat16, torch.float32, 1e-5), (torch.float16, torch.float32, 1e-5),
    (torch.bfloat16, torch.bfloat16, 1e-5), (torch.float32, torch.float64, 1e-5)])
def test_numpy_views_give_the_torch_path_numbers_for_every_dtype(monkeypatch, assert_close, x_dtype, param_dtype,
                                                                  tol):
    """Same outputs and gradients (to rounding, in the output's dtype) and the same dtypes."""
    leaves = _leaves(x_dtype=x_dtype, param_dtype=param_dtype)
    out_np, grads_np = _step_grads(leaves, True, monkeypatch)
    out_t, grads_t = _step_grads(leaves, False, monkeypatch)
    assert out_np.dtype == out_t.dtype == x_dtype
    for got, want, name in zip((out_np,) + grads_np, (out_t,) + grads_t, ("out", "dx", "dphi", "dbias", "dalpha")):
        assert got.dtype == want.dtype, name
        assert_close(got, want, tol, case=f"{x_dtype} {param_dtype} {name}")


@pytest.mark.parametrize("view", ["transposed", "expanded", "strided"])
def test_numpy_views_of_non_contiguous_x_give_the_spec_numbers(monkeypatch, assert_close, view):
    leaves = _leaves(c=8, lead=(3, 2))
    x_view = {"transposed": lambda x: x.transpose(0, 1),
              "expanded": lambda x: x[:1].expand(4, 2, 4, 8),
              "strided": lambda x: x[..., ::2]}[view]
    if view == "strided":
        leaves[1] = leaves[1].detach()[: 4 * 4].clone().requires_grad_()  # phi for C = 4
    out_np, grads_np = _step_grads(leaves, True, monkeypatch, x_view)
    leaves64 = [t.detach().clone().requires_grad_() for t in leaves]
    out = mhc_core.step(x_view(leaves64[0]), torch.tanh, *leaves64[1:], variant="mhc")
    (w,) = _weights([out.shape], seed=2)
    want = torch.autograd.grad((out * w).sum(), leaves64)
    for got, ref, name in zip((out_np,) + grads_np, (out.detach(),) + want, ("out", "dx", "dphi", "dbias", "dalpha")):
        assert_close(got, ref, 1e-12, case=f"{view} {name}")


@pytest.mark.parametrize("res_scale", [0.0, 1.0])
def test_graphs_alive_together_and_backward_in_reverse_order(monkeypatch, assert_close, res_scale):
    """Four forwards alive at once (their Sinkhorn iterates held by saved tensors), many
    forwards recycling the pool in between, then backwards newest first: each gradient
    equals the spec's."""
    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20)
    runs = [_leaves(seed=k, res_scale=res_scale) for k in range(4)]
    outs = [ag.coefficients(*leaves, variant="mhc") for leaves in runs]
    for _ in range(20):
        pre, post, res = ag.coefficients(*runs[0], variant="mhc")
        torch.autograd.grad(res.sum() + pre.sum(), runs[0])
    for k in reversed(range(4)):
        weights = _weights([o.shape for o in outs[k]], seed=k)
        loss = sum((o * w).sum() for o, w in zip(outs[k], weights))
        got = torch.autograd.grad(loss, runs[k])
        _, want = _spec_coefficients_grads(runs[k], weights)
        for g, ref, name in zip(got, want, ("dx", "dphi", "dbias", "dalpha")):
            assert_close(g, ref, 1e-12, case=f"run {k} {name}")


def test_threads_running_forward_and_backward_get_their_own_numbers(monkeypatch):
    """Threads share the iterate pool: each thread's outputs and gradients equal those of
    the same call made alone, bit for bit, while other threads run forwards and backwards."""
    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20)
    runs = [_leaves(seed=k, res_scale=0.0 if k % 2 else 1.0) for k in range(4)]

    def forward_backward(k):
        pre, post, res = ag.coefficients(*runs[k], variant="mhc")
        other = ag.coefficients(*runs[(k + 1) % 4], variant="mhc")  # a second graph alive  # noqa: F841
        weights = _weights([pre.shape, post.shape, res.shape], seed=k)
        loss = sum((o * w).sum() for o, w in zip((pre, post, res), weights))
        return [pre.detach(), post.detach(), res.detach(), *torch.autograd.grad(loss, runs[k])]

    alone = [forward_backward(k) for k in range(4)]
    mismatches, errors = [], []

    def worker(k):
        try:
            for _ in range(30):
                if not all(torch.equal(a, b) for a, b in zip(forward_backward(k), alone[k])):
                    mismatches.append(k)
        except Exception as err:  # surfaced below: a thread's exception is otherwise lost
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert not mismatches, f"threads with other numbers than alone: {sorted(set(mismatches))}"


@pytest.mark.parametrize("iters", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("eps", [0.0, 1e-6])
@pytest.mark.parametrize("n,res_scale", [(4, 0.0), (4, 1e-30), (4, 30.0), (1, 1.0)])
def test_sinkhorn_fixed_point_stop_edges_give_the_spec_numbers(monkeypatch, assert_close, iters, eps, n, res_scale):
    """Few iterations around the every-4-steps stop check, the log-domain eps = 0 path,
    equal / tiny / large res logits and one stream: the numpy path's outputs and
    gradients equal autograd through the spec's plain ops (no early stop)."""
    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20)
    leaves = _leaves(n=n, res_scale=res_scale)
    outs = ag.coefficients(*leaves, variant="mhc", iters=iters, sinkhorn_eps=eps)
    weights = _weights([o.shape for o in outs])
    got = torch.autograd.grad(sum((o * w).sum() for o, w in zip(outs, weights)), leaves)
    leaves64 = [t.detach().clone().requires_grad_() for t in leaves]
    ref = mhc_core.coefficients(*leaves64, variant="mhc", iters=iters, sinkhorn_eps=eps)
    want = torch.autograd.grad(sum((o * w).sum() for o, w in zip(ref, weights)), leaves64)
    names = ("pre", "post", "res", "dx", "dphi", "dbias", "dalpha")
    for g, r, name in zip(tuple(outs) + got, tuple(ref) + want, names):
        assert_close(g, r, 1e-10, case=f"iters={iters} eps={eps} n={n} scale={res_scale} {name}")


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy-views", "torch"])
def test_module_parameters_survive_an_fsdp_style_free_and_regather(monkeypatch, assert_close, numpy_path):
    """FSDP frees a parameter's storage after the forward (resize to 0) and re-gathers it
    before the backward: the module's parameters must be in resizable (torch-owned) memory,
    and the gradients afterwards equal the spec's."""
    from mhc_core_torch.history import HistorySkip
    from mhc_core_torch.modules import MHC

    module = MHC(torch.nn.Tanh(), 4, 8, impl="reference")
    for p in [*module.parameters(), *HistorySkip(3).parameters()]:  # as constructed
        assert p.untyped_storage().resizable()
    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20 if numpy_path else 0)
    module = module.double()
    x = torch.tensor(np.random.default_rng(0).normal(size=(2, 3, 4, 8)), requires_grad=True)
    out = module(x)
    params = list(module.parameters())
    gathered = [p.detach().clone() for p in params]
    for p in params:  # free, then re-gather without a version bump (as FSDP does)
        assert p.untyped_storage().resizable()
        nbytes = p.untyped_storage().nbytes()
        p.untyped_storage().resize_(0)
        p.untyped_storage().resize_(nbytes)
    with torch.no_grad():
        for p, g in zip(params, gathered):
            with torch.autograd._unsafe_preserve_version_counter(p):
                p.copy_(g)
    (w,) = _weights([out.shape], seed=2)
    got = torch.autograd.grad((out * w).sum(), [x, *params])
    leaves = [x.detach().clone().requires_grad_()] + [g.clone().requires_grad_() for g in gathered]
    ref = mhc_core.step(leaves[0], torch.tanh, *leaves[1:], variant="mhc")
    want = torch.autograd.grad((ref * w).sum(), leaves)
    assert_close(out, ref, 1e-12, case="out")
    for g, r, name in zip(got, want, ("dx", "dphi", "dbias", "dalpha")):
        assert_close(g, r, 1e-12, case=name)


def test_leaf_inputs_get_gradients_in_torch_memory(monkeypatch, assert_close):
    """A leaf input (x a learned parameter, or the mixing functions called on leaves) may
    keep the backward's gradient tensor itself as its .grad: on the numpy path that must be
    a resizable torch-owned tensor, with the spec's numbers, and accumulate correctly."""
    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20)
    rng = np.random.default_rng(4)
    shapes = ((2, 3, 4, 8), (2, 3, 4), (2, 3, 8), (2, 3, 4), (2, 3, 4, 4))  # x, pre, y, post, res
    leaves = [torch.nn.Parameter(torch.tensor(rng.normal(size=s))) for s in shapes]
    x, pre, y, post, res = leaves
    mix_params = _leaves()[1:]
    for _ in range(2):  # the second backward accumulates into the .grad the first left
        coeffs = ag.coefficients(x, *mix_params, variant="mhc")
        loss = (ag.pre_aggregate(x, pre) ** 2).sum() + (ag.post_residual(x, y, post, res) ** 2).sum()
        (loss + sum((c ** 2).sum() for c in coeffs)).backward()
    for t, name in zip(leaves, ("x", "pre", "y", "post", "res")):
        assert t.grad.untyped_storage().resizable(), name
    ref = [t.detach().clone().requires_grad_() for t in leaves]
    coeffs = mhc_core.coefficients(ref[0], *(p.detach() for p in mix_params), variant="mhc")
    loss = (mhc_core.pre_aggregate(ref[0], ref[1]) ** 2).sum() + (mhc_core.post_residual(*ref[:1], *ref[2:]) ** 2).sum()
    want = torch.autograd.grad(loss + sum((c ** 2).sum() for c in coeffs), ref)
    for t, w, name in zip(leaves, want, ("x", "pre", "y", "post", "res")):
        assert_close(t.grad, 2 * w, 1e-12, case=f"d/d{name}")


# torch's own forward-AD decompositions call torch.jit.script, which warns
@pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")
@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy-views", "torch"])
def test_torch_func_transforms_and_forward_ad_run_the_spec(monkeypatch, assert_close, numpy_path):
    """torch.func.grad / vmap / jvp, forward-mode AD and per-sample gradients
    (vmap(grad(functional_call))) over the step: the autograd nodes have no rules for them,
    so the entry points run the spec's plain ops. Each result is checked against an
    independent computation: autograd through the nodes, a loop, float64 central differences."""
    from torch.autograd import forward_ad

    from mhc_core_torch.modules import MHC

    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20 if numpy_path else 0)
    x, phi, bias, alpha = (t.detach() for t in _leaves(lead=(3, 2)))
    tangent = _weights([x.shape], seed=3)[0]

    def step(x_, phi_=phi):
        return ag.step(x_, torch.tanh, phi_, bias, alpha, variant="mhc")

    x_leaf = x.clone().requires_grad_()
    (want_grad,) = torch.autograd.grad(step(x_leaf).pow(2).sum(), x_leaf)  # through the nodes
    assert_close(torch.func.grad(lambda x_: step(x_).pow(2).sum())(x), want_grad, 1e-12, case="func.grad")
    assert_close(torch.func.vmap(step)(x), step(x), 1e-12, case="vmap over x")
    phis = torch.stack([phi, 0.5 * phi])
    assert_close(torch.func.vmap(lambda p: step(x, p))(phis), torch.stack([step(x, p) for p in phis]), 1e-12,
                 case="vmap over phi")
    h = 1e-6
    central = (step(x + h * tangent) - step(x - h * tangent)) / (2 * h)
    assert_close(torch.func.jvp(step, (x,), (tangent,))[1], central, 1e-7, case="jvp")
    with forward_ad.dual_level():
        dual_out = step(forward_ad.make_dual(x, tangent))
        assert_close(forward_ad.unpack_dual(dual_out).tangent, central, 1e-7, case="forward AD")

    module = MHC(torch.nn.Linear(8, 8).double(), 4, 8, impl="reference").double()
    params = {k: v.detach() for k, v in module.named_parameters()}

    def sample_loss(p, xs):
        return torch.func.functional_call(module, p, (xs[None],)).pow(2).sum()

    per_sample = torch.func.vmap(torch.func.grad(sample_loss), in_dims=(None, 0))(params, x)
    for i in range(x.shape[0]):
        module.zero_grad()
        module(x[i : i + 1]).pow(2).sum().backward()
        for name, p in module.named_parameters():
            assert_close(per_sample[name][i], p.grad, 1e-12, case=f"per-sample d/d{name} [{i}]")


class _TaggedTensor(torch.Tensor):
    """A do-nothing tensor subclass (as DTensor or a user's tagging subclass would be):
    `.numpy()` refuses it."""


def test_tensor_subclasses_fake_and_meta_tensors_take_the_torch_ops(monkeypatch, assert_close):
    """A CPU tensor subclass, fake tensors (FakeTensorMode: memory planning, tracing) and
    the meta device cannot be viewed by numpy: the step runs on torch ops there. A subclass
    gives the spec's numbers; fake / meta runs give the real run's shapes and dtypes."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from mhc_core_torch.modules import MHC

    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20)
    x, phi, bias, alpha = (t.detach() for t in _leaves())
    tagged = [t.as_subclass(_TaggedTensor).requires_grad_() for t in (x, phi, bias, alpha)]
    out = ag.step(tagged[0], torch.tanh, *tagged[1:], variant="mhc")
    (w,) = _weights([out.shape], seed=2)
    got = torch.autograd.grad((out * w).sum(), tagged)
    plain = [t.clone().requires_grad_() for t in (x, phi, bias, alpha)]
    ref = mhc_core.step(plain[0], torch.tanh, *plain[1:], variant="mhc")
    want = torch.autograd.grad((ref * w).sum(), plain)
    for g, r, name in zip((out,) + got, (ref,) + want, ("out", "dx", "dphi", "dbias", "dalpha")):
        assert_close(g.as_subclass(torch.Tensor), r, 1e-12, case=f"subclass {name}")

    real_module = MHC(torch.nn.Linear(8, 8), 4, 8, impl="reference")
    real_x = x.float().requires_grad_()
    real_out = real_module(real_x)
    real_out.sum().backward()
    with FakeTensorMode():
        module = MHC(torch.nn.Linear(8, 8), 4, 8, impl="reference")
        fake_x = torch.empty(x.shape).requires_grad_()
        fake_out = module(fake_x)
        fake_out.sum().backward()
        assert (fake_out.shape, fake_out.dtype) == (real_out.shape, real_out.dtype)
        assert (fake_x.grad.shape, module.phi.grad.shape) == (real_x.grad.shape, real_module.phi.grad.shape)
    with torch.device("meta"):
        module = MHC(torch.nn.Linear(8, 8), 4, 8, impl="reference")
        meta_out = module(torch.empty(x.shape))
    assert (meta_out.shape, meta_out.dtype, meta_out.device.type) == (real_out.shape, real_out.dtype, "meta")


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy-views", "torch"])
@pytest.mark.parametrize("changed", ["x", "phi", "bias", "alpha"])
def test_inputs_changed_in_place_after_the_forward_make_backward_raise(monkeypatch, numpy_path, changed):
    """numpy views share x's memory and the parameters are copied: autograd's version
    check must still refuse a backward after any input changed in place."""
    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20 if numpy_path else 0)
    x, phi, bias, alpha = _leaves()
    inputs = {"x": x * 1.0, "phi": phi, "bias": bias, "alpha": alpha}  # x a non-leaf, changeable
    out = ag.step(inputs["x"], torch.tanh, inputs["phi"], inputs["bias"], inputs["alpha"], variant="mhc")
    with torch.no_grad():
        inputs[changed].mul_(1.5)
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        out.sum().backward()


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy-views", "torch"])
def test_no_grad_inference_mode_and_grad_accumulation(monkeypatch, assert_close, numpy_path):
    """Under no_grad / inference_mode: the spec's numbers and no graph. Two backwards
    accumulate into .grad: twice the spec's gradient."""
    monkeypatch.setattr(ag, "NUMPY_MAX_ELEMENTS", 1 << 20 if numpy_path else 0)
    leaves = _leaves()
    want = mhc_core.step(*(t.detach() for t in leaves[:1]), torch.tanh, *(t.detach() for t in leaves[1:]),
                         variant="mhc")
    with torch.no_grad():
        quiet = ag.step(leaves[0], torch.tanh, *leaves[1:], variant="mhc")
    with torch.inference_mode():
        inferred = ag.step(leaves[0], torch.tanh, *leaves[1:], variant="mhc")
    assert not quiet.requires_grad and not inferred.requires_grad and inferred.is_inference()
    assert_close(quiet, want, 1e-12, case="no_grad")
    assert_close(inferred, want, 1e-12, case="inference_mode")
    for _ in range(2):
        ag.step(leaves[0], torch.tanh, *leaves[1:], variant="mhc").pow(2).sum().backward()
    ref = [t.detach().clone().requires_grad_() for t in leaves]
    once = torch.autograd.grad(mhc_core.step(ref[0], torch.tanh, *ref[1:], variant="mhc").pow(2).sum(), ref)
    for t, g, name in zip(leaves, once, ("x", "phi", "bias", "alpha")):
        assert_close(t.grad, 2 * g, 1e-12, case=f"accumulated d/d{name}")
