"""Compiled MHC steps and MHC.coefficients under hostile use.

Compiled MHC steps (dynamic token counts, checkpointing, threads, huge |x|, the hc and
mhc-lite variants, torch.export) match the eager path in float64; and MHC.coefficients'
outputs are the caller's own (an in-place change after the call leaves
the gradient alone) with gradients equal to torch autograd through mhc_core.coefficients.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from torch import nn

import mhc_core
from mhc_core_torch import MHC

N, C = 4, 8


def _module(variant: str = "mhc", dtype=torch.float64) -> MHC:
    torch.manual_seed(0)
    return MHC(nn.Linear(C, C, dtype=dtype), N, C, seed=1, variant=variant).to(dtype)


def _grads(fn, x, module, g):
    out = fn(x)
    return out, torch.autograd.grad(out, [x, *module.parameters()], g)


def _assert_step_matches_eager(compiled, module, x, tol=1e-11):
    """Forward and all gradients of `compiled` against the eager module (float64)."""
    g = torch.randn(x.shape, dtype=x.dtype)
    out, got = _grads(compiled, x, module, g)
    want_out, want = _grads(module, x, module, g)
    torch.testing.assert_close(out, want_out, rtol=tol, atol=tol)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=tol, atol=tol)


# ---- compiled modules against the eager path ----------------------------------------------

def test_compiled_mhc_with_symbolic_token_count_matches_eager():
    """dynamic=True: one graph for every T (the shim's matmul rules see a symbolic T),
    T = 1 and T = 0 included, x with batch dims [B, T, n, C]."""
    from torch._dynamo.utils import counters
    module = _module()
    torch._dynamo.reset()
    counters.clear()
    compiled = torch.compile(module, dynamic=True, fullgraph=True)
    for t in (3, 5, 7, 1, 0):
        x = torch.randn(2, t, N, C, dtype=torch.float64, requires_grad=True)
        _assert_step_matches_eager(compiled, module, x)
        if t == 7:  # one graph for T >= 2 (torch specialises sizes 0 and 1)
            assert counters["stats"]["unique_graphs"] == 1


@pytest.mark.parametrize("variant", ["hc", "mhc-lite"])
def test_compiled_variants_match_eager(variant):
    """hc's projection and mhc-lite's Birkhoff product [T, n!] @ [n!, n*n] take the shim's
    narrow-product rule too."""
    module = _module(variant)
    torch._dynamo.reset()
    x = torch.randn(5, N, C, dtype=torch.float64, requires_grad=True)
    _assert_step_matches_eager(torch.compile(module, fullgraph=True), module, x)


def test_compiled_mhc_on_a_strided_view_under_checkpointing_matches_eager():
    module = _module()
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)
    base = torch.randn(C, N, 5, dtype=torch.float64, requires_grad=True)
    x = base.permute(2, 1, 0)  # [5, n, C], no unit stride on C

    def checkpointed(x):
        return torch.utils.checkpoint.checkpoint(compiled, x, use_reentrant=False)
    _assert_step_matches_eager(checkpointed, module, x)


def test_compiled_mhc_under_inference_mode_matches_eager():
    module = _module()
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)
    x = torch.randn(5, N, C, dtype=torch.float64)
    want = module(x)
    with torch.inference_mode():
        torch.testing.assert_close(compiled(x), want, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        torch.testing.assert_close(compiled(x), want, rtol=1e-12, atol=1e-12)


def test_compiled_mhc_from_two_threads_matches_eager():
    """A compiled MHC called from several Python threads at once (torch with 2 threads)."""
    module = _module()
    torch._dynamo.reset()
    compiled = torch.compile(module, fullgraph=True)
    xs = [torch.randn(64, N, C, dtype=torch.float64, requires_grad=True) for _ in range(2)]
    compiled(xs[0]).sum().backward()  # compile once before the threads start
    results, errors = {}, []

    def work(i):
        try:
            for _ in range(3):
                out = compiled(xs[i])
                results[i] = (out, *torch.autograd.grad(out.sum(), xs[i]))
        except Exception as e:  # noqa: BLE001  (re-raised in the main thread)
            errors.append(e)
    threads_before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        workers = [threading.Thread(target=work, args=(i,)) for i in range(2)]
        for w in workers:
            w.start()
        for w in workers:
            w.join()
    finally:
        torch.set_num_threads(threads_before)
    assert not errors, errors
    for i, x in enumerate(xs):
        want = module(x)
        torch.testing.assert_close(results[i][0], want, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(results[i][1], torch.autograd.grad(want.sum(), x)[0], rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("scale", [1e30, 3e38])
def test_compiled_float32_mhc_at_huge_scale_matches_float64_oracle(scale):
    """|x| near float32's limit through the compiled path (rms-norm before the projection):
    the coefficients equal the float64 oracle's, the output is x's scale times them."""
    module = _module(dtype=torch.float32)
    torch._dynamo.reset()
    compiled = torch.compile(lambda x: module.coefficients(x), fullgraph=True)
    x = (torch.randn(5, N, C, dtype=torch.float64) * scale).clamp(-3e38, 3e38).float()
    got = compiled(x)
    params = (module.phi, module.bias, module.alpha)
    want = mhc_core.coefficients(x.double().numpy(), *(p.detach().double().numpy() for p in params),
                                 **module._cfg)
    for g, w in zip(got, want):
        assert torch.isfinite(g).all()
        np.testing.assert_allclose(g.detach().double().numpy(), w, rtol=2e-5, atol=2e-6)  # as the eager test


# ---- MHC.coefficients -----------------------------------------------------------------------

def _oracle_grads(module, x, cots, variant="mhc"):
    """Gradients w.r.t. (x, phi, bias, alpha) of mhc_core.coefficients by torch autograd."""
    params = (module.phi, module.bias, module.alpha)
    outs = mhc_core.coefficients(x, *params, variant=variant, **module._cfg)
    return outs, torch.autograd.grad(outs, (x, *params), cots)


@pytest.mark.parametrize("path", ["eager numpy", "eager torch", "compiled"])
@pytest.mark.parametrize("tokens", [1, 5])
@pytest.mark.parametrize("changed", [0, 1, 2])
def test_coefficients_outputs_do_not_alias_saved_tensors(path, tokens, changed, monkeypatch):
    """Changing pre, post or res in place after the call leaves the gradient alone (the
    compiled graph returned res in the saved Sinkhorn iterate's buffer: phi's gradient
    moved by 0.1 and bias's by 3 after `res += 1`)."""
    from mhc_core_torch import autograd as torch_autograd
    module = _module()
    if path == "eager torch":
        monkeypatch.setattr(torch_autograd, "NUMPY_MAX_ELEMENTS", 0)
    fn = module.coefficients
    if path == "compiled":
        torch._dynamo.reset()
        fn = torch.compile(module.coefficients, fullgraph=True)
    x = torch.randn(tokens, N, C, dtype=torch.float64, requires_grad=True)
    outs = fn(x)
    cots = [torch.randn_like(t) for t in outs]
    want_outs, want = _oracle_grads(module, x, cots)
    for o, w in zip(outs, want_outs):
        torch.testing.assert_close(o, w, rtol=1e-12, atol=1e-12)
    with torch.no_grad():
        outs[changed].add_(1.0)
    got = torch.autograd.grad(outs, [x, module.phi, module.bias, module.alpha], cots)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("variant", ["mhc", "hc", "mhc-lite"])
def test_coefficients_float64_gradients_match_torch_autograd_of_the_oracle(variant):
    module = _module(variant)
    x = torch.randn(2, 3, N, C, dtype=torch.float64, requires_grad=True)
    outs = module.coefficients(x)
    cots = [torch.randn_like(t) for t in outs]
    want_outs, want = _oracle_grads(module, x, cots, variant)
    got = torch.autograd.grad(outs, [x, module.phi, module.bias, module.alpha], cots)
    for o, w in zip(outs, want_outs):
        assert o.dtype == torch.float64
        torch.testing.assert_close(o, w, rtol=1e-12, atol=1e-12)
    for a, b in zip(got, want):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-11)


def test_coefficients_under_no_grad_match_the_numpy_oracle():
    module = _module()
    x = torch.randn(2, 3, N, C, dtype=torch.float64)
    with torch.no_grad():
        got = module.coefficients(x)
    params = (p.detach().numpy() for p in (module.phi, module.bias, module.alpha))
    want = mhc_core.coefficients(x.numpy(), *params, **module._cfg)
    for g, w in zip(got, want):
        assert not g.requires_grad
        np.testing.assert_allclose(g.numpy(), w, rtol=1e-13, atol=1e-13)


def test_exported_mhc_with_a_dynamic_token_count_matches_eager():
    """torch.export (strict) with T dynamic and unbounded: the saved and reloaded program
    matches the eager module at other T (the eager path's size test had added the guard
    T <= 2**40 / (n*C) to every exported program)."""
    import io
    module = _module(dtype=torch.float32)
    t = torch.export.Dim("T", min=2)
    program = torch.export.export(module, (torch.randn(5, N, C),), dynamic_shapes={"x": {0: t}}, strict=True)
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    buffer.seek(0)
    loaded = torch.export.load(buffer).module()
    for tokens in (2, 9):
        x = torch.randn(tokens, N, C)
        torch.testing.assert_close(loaded(x), module(x), rtol=1e-5, atol=1e-6)
