"""Misuse of the Triton path meets a clear error that names what was expected, before any
kernel runs:

- ops.step with a layer that is not callable (TypeError naming f, as mhc_core.step);
- MHC(impl='triton') whose mixing parameters cannot go to the kernels (module.double() with
  float32 x, parameters on another device): RuntimeError naming the parameter, and
  impl='auto' takes the reference path instead (on CUDA, where 'auto' picks the kernels);
- a kernel dtype error names the argument that has it (pre, y, res, logits, phi), not just
  the dtype;
- the other misuses checked here: wrong n / C / lead shape of pre, post, res, y, phi, an
  integer or complex dtype, mhc-lite and residual on the kernels.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mhc_core_torch import MHC, dispatch, triton_gate
from mhc_core_torch.kernels import ops

N, C, T = 3, 8, 4


def _params(mixing_params, device, dtype=torch.float32):
    return [torch.from_numpy(mixing_params(N, C)[k]).to(device, dtype) for k in ("phi", "bias", "alpha")]


def test_step_refuses_a_layer_that_is_not_callable(mixing_params, device):
    x = torch.randn(T, N, C, device=device)
    for f in (None, 3, "tanh"):
        with pytest.raises(TypeError, match=r"f must be a callable layer \[\.\.\., C\] -> \[\.\.\., C\], got"):
            ops.step(x, f, *_params(mixing_params, device))


def test_module_with_float64_parameters_is_refused_by_triton_and_auto_falls_back(mixing_params, device):
    """module.double() with float32 x: the kernels would take phi as float64 (on a GPU a
    TypeError from inside the step; in the interpreter silently float32 math): a clear
    RuntimeError naming phi under impl='triton'; impl='auto' gives the reference numbers."""
    init = {k: torch.from_numpy(v) for k, v in mixing_params(N, C).items()}
    x = torch.randn(2, T, N, C, device=device)
    tri = MHC(nn.Identity(), N, C, init=init, impl="triton").to(device).double()
    with pytest.raises(RuntimeError, match=r"impl='triton' .*got phi of dtype torch.float64; float64 runs on "
                                           r"impl='reference'.*impl='auto'"):
        tri(x)
    auto = MHC(nn.Identity(), N, C, init=init, impl="auto").to(device).double()
    ref = MHC(nn.Identity(), N, C, init=init, impl="reference").to(device).double()
    assert torch.equal(auto(x), ref(x))
    assert dispatch.resolve_impl("auto", x, params=(tri.phi, tri.bias, tri.alpha)) == "reference"
    assert "alpha of dtype torch.float64" in triton_gate.unavailable_reason(
        x, "mhc", (tri.phi.float(), tri.bias.float(), tri.alpha))
    # float32 / bf16 / fp16 parameters are the kernels' (module.to(bf16) is tested for numbers elsewhere)
    for dt in triton_gate.KERNEL_DTYPES:
        assert triton_gate.unavailable_reason(x.to(dt), "mhc", (tri.phi.to(dt), tri.bias.to(dt), tri.alpha.to(dt))) \
            is None


def test_module_with_parameters_on_another_device_names_them(device):
    m = MHC(nn.Identity(), N, C, impl="triton").to("meta")
    with pytest.raises(RuntimeError, match=r"impl='triton' .*phi is on meta but x is on"):
        m(torch.randn(T, N, C, device=device))


@pytest.mark.gpu
def test_auto_on_cuda_with_float64_parameters_falls_back_to_reference(mixing_params):
    """On CUDA 'auto' picks the kernels for float32 x: float64 parameters send it to the
    reference path (DESIGN §2: an automatic choice falls back) instead of a TypeError."""
    init = {k: torch.from_numpy(v) for k, v in mixing_params(N, C).items()}
    x = torch.randn(T, N, C, device="cuda")
    auto = MHC(nn.Identity(), N, C, init=init, impl="auto").cuda().double()
    ref = MHC(nn.Identity(), N, C, init=init, impl="reference").cuda().double()
    assert torch.equal(auto(x), ref(x))


def test_kernel_dtype_errors_name_the_argument(mixing_params, device):
    x = torch.randn(T, N, C, device=device)
    bad = torch.float8_e4m3fn  # floating (mhc_core's checks pass it), not a kernel dtype
    phi, bias, alpha = _params(mixing_params, device)
    pre, y, res = torch.rand(T, N, device=device), torch.randn(T, C, device=device), torch.rand(T, N, N, device=device)
    cases = [
        ("pre", lambda: ops.pre_aggregate(x, pre.to(bad))),
        ("x", lambda: ops.pre_aggregate(x.to(bad), pre)),
        ("y", lambda: ops.post_residual(x, y.to(bad), pre, res)),
        ("res", lambda: ops.post_residual(x, y, pre, res.to(bad))),
        ("post", lambda: ops.post_residual(x, y, pre.to(bad), res)),
        ("logits", lambda: ops.sinkhorn(res.to(bad), iters=2)),
        ("phi", lambda: ops.coefficients(x, phi.to(bad), bias, alpha)),
        ("alpha", lambda: ops.step(x, torch.tanh, phi, bias, alpha.to(bad))),
    ]
    for name, call in cases:
        with pytest.raises(TypeError, match=rf"the Triton kernels take float32, bfloat16 or float16, got {name} of "
                                            rf"dtype torch.float8_e4m3fn"):
            call()


def test_kernel_device_errors_name_each_argument(mixing_params, device):
    x = torch.randn(T, N, C, device=device)
    phi, bias, alpha = _params(mixing_params, device)
    with pytest.raises(ValueError, match=r"coefficients: all inputs must be on one device, got x on \w+, "
                                         r"phi on meta, bias on \w+, alpha on \w+"):
        ops.coefficients(x, phi.to("meta"), bias, alpha)
    with pytest.raises(ValueError, match=r"pre_aggregate: all inputs must be on one device, got x on meta, pre on"):
        ops.pre_aggregate(x.to("meta"), torch.rand(T, N, device=device))


@pytest.mark.parametrize("call,error,message", [
    (lambda x, y, pre, res, p: ops.pre_aggregate(x, pre[:, :2]), ValueError, r"pre must have shape \[4, 3\]"),
    (lambda x, y, pre, res, p: ops.pre_aggregate(x, pre[0]), ValueError, r"pre must have shape \[4, 3\]"),
    (lambda x, y, pre, res, p: ops.post_residual(x, y[:, :5], pre, res), ValueError, r"y must have shape \[4, 8\]"),
    (lambda x, y, pre, res, p: ops.post_residual(x, y, pre[:3], res), ValueError, r"post must have shape \[4, 3\]"),
    (lambda x, y, pre, res, p: ops.post_residual(x, y, pre, res[..., :2]), ValueError, r"res must have shape"),
    (lambda x, y, pre, res, p: ops.post_residual(x, y, pre, res.to(torch.complex64)), TypeError,
     "res must be a floating-point array"),
    (lambda x, y, pre, res, p: ops.coefficients(x[:, :2], *p), ValueError, r"phi must have shape \[16, 8\]"),
    (lambda x, y, pre, res, p: ops.coefficients(x, p[0][:-1], *p[1:]), ValueError, r"phi must have shape \[24, 15\]"),
    (lambda x, y, pre, res, p: ops.step(x, lambda h: h[..., :4], *p), ValueError, r"y must have shape \[4, 8\]"),
    (lambda x, y, pre, res, p: ops.step(x, lambda h: h.int(), *p), TypeError, "y must be a floating-point array"),
    (lambda x, y, pre, res, p: ops.step(x, lambda h: (h, None), *p), TypeError,
     r"y must be a floating-point array of one library with x \(the layer's output.*returned a tuple"),
    (lambda x, y, pre, res, p: ops.step(x, torch.tanh, *p, variant="residual"), ValueError,
     "the residual variant has one stream"),
    (lambda x, y, pre, res, p: ops.step(x.int(), torch.tanh, *p), TypeError, "x must be a floating-point array"),
], ids=["pre-n", "pre-lead", "y-C", "post-lead", "res-n", "res-complex", "x-n", "phi-rows", "layer-C",
        "layer-int", "layer-tuple", "residual-n", "x-int"])
def test_public_ops_bad_shapes_and_dtypes(call, error, message, mixing_params, device):
    x = torch.randn(T, N, C, device=device)
    y, pre, res = torch.randn(T, C, device=device), torch.rand(T, N, device=device), torch.rand(T, N, N, device=device)
    with pytest.raises(error, match=message):
        call(x, y, pre, res, _params(mixing_params, device))


def test_public_ops_on_cpu_tensors_without_the_interpreter_say_why(mixing_params, monkeypatch, device):
    """As if mhc_core_torch had been imported without TRITON_INTERPRET=1 and no GPU: every
    public op refuses CPU tensors with a RuntimeError naming the op, the device and the way
    out, before any launch."""
    if device == "cuda":
        pytest.skip("needs CPU tensors")
    monkeypatch.setattr(triton_gate, "INTERPRETED", False)
    x, p = torch.randn(T, N, C), _params(mixing_params, "cpu")
    pre, y, res = torch.rand(T, N), torch.randn(T, C), torch.rand(T, N, N)
    calls = {"coefficients": lambda: ops.coefficients(x, *p), "pre_aggregate": lambda: ops.pre_aggregate(x, pre),
             "post_residual": lambda: ops.post_residual(x, y, pre, res), "sinkhorn": lambda: ops.sinkhorn(res),
             "step": lambda: ops.step(x, torch.tanh, *p)}
    for op, call in calls.items():
        with pytest.raises(RuntimeError, match=rf"{op}: x is on cpu; the Triton kernels need a CUDA tensor "
                                               r"\(or TRITON_INTERPRET=1.*impl='reference'"):
            call()


def test_residual_variant_on_the_kernels(device, assert_close):
    """MHC(variant='residual', impl='triton') is refused at construction (no kernel: a plain
    x + f(x)); ops.step(variant='residual') runs mhc_core.residual_step, gradients included."""
    with pytest.raises(ValueError, match=r"impl='triton' has no kernel for variant 'residual' \(a plain x \+ f\(x\)\)"):
        MHC(nn.Identity(), 1, C, variant="residual", impl="triton")
    x = torch.randn(T, 1, C, device=device, requires_grad=True)
    out = ops.step(x, torch.tanh, variant="residual")
    (g,) = torch.autograd.grad(out.sum(), x)
    x64 = x.detach().double().cpu().requires_grad_()
    want = x64 + torch.tanh(x64[..., 0, :])[..., None, :]
    (g_want,) = torch.autograd.grad(want.sum(), x64)
    assert_close(out, want, 1e-6, "residual-out")
    assert_close(g, g_want, 1e-6, "residual-grad")
