"""Realistic shapes on a CUDA GPU (marked `gpu`: skipped without one).

The compiled kernels use the GPU's approximate exp2 / division / sqrt and tf32x3 dots,
which the interpreter (exact numpy) never exercises; these tests run them at the sizes
training uses, bf16 activations, float32 mixing parameters:

- the whole step fwd+bwd at n = 4, C in {4096, 7168}, 4096 tokens and at 65536 tokens
  (C = 4096), vs mhc_core run by torch on the same GPU in float64 from the same bf16
  inputs (a float32 reference's own error in sums over 65536 tokens is of the size being
  checked), with the layer's input h, output y and their gradients rounded to bf16 where
  the kernels round them (the kernels hand the layer a bf16 h; `_bf16_layer`). Without
  those roundings the reference is a different function: the mixing-parameter gradients
  are sums over all tokens with heavy cancellation, and bf16 rounding of dh / y (2^-9
  relative per element) moved grad-phi by 2.7e-3 of its largest entry on an H200.
  Tolerance 2e-2 of max(1, max|ref|) for the output and dx (each rounded to bf16 once,
  relative 2^-9 = 2e-3; the bf16 bound of tests/conftest.py TOL); 1e-3 for the float32
  mixing-parameter gradients (tf32x3 dots ~ float32, sums over 4096..65536 tokens in
  different orders). `test_step_rounding_model` runs the same comparison at a small shape
  on any device (interpreter on the CPU), so the rounding model itself is checked in CI
  (without `_bf16_layer` it fails there too).
- 64-bit offsets: T * n * C > 2^31 (T = 131,088 at n = 4, C = 4096); the last tokens'
  outputs and dx (which land past 2^31 elements) vs mhc_core on those tokens alone
  (tokens are independent in the step's output and dx).
"""
import numpy as np
import pytest
import torch

import mhc_core
from mhc_core_torch.kernels import ops


def _bf16_layer(f):
    """f as the reference sees it: its input rounded to bf16 (the kernels' h), its float32
    output and the gradient flowing back into h rounded to bf16 at the same points."""
    return lambda h: f(h.bfloat16()).to(h.dtype)


def _params(n, c, device, mixing_params):
    p = mixing_params(n, c, seed=5)
    return [torch.from_numpy(p[k]).float().to(device).requires_grad_(True) for k in ("phi", "bias", "alpha")]


def _step_and_grads(step, x, w, params, cot):
    x = x.detach().clone().requires_grad_(True)
    out = step(x, lambda h: torch.tanh(h.float() @ w).to(h.dtype), *params)
    grads = torch.autograd.grad((out.double() * cot.double()).sum(), [x] + list(params))
    return out, grads


def _check_step_bf16(t, c, device, assert_close, mixing_params):
    n = 4
    g = torch.Generator(device=device).manual_seed(0)
    x = torch.randn(t, n, c, device=device, generator=g).bfloat16()
    cot = torch.randn(t, n, c, device=device, generator=g).bfloat16()
    w = torch.randn(c, c, device=device, generator=g) / c ** 0.5
    params = _params(n, c, device, mixing_params)
    out, grads = _step_and_grads(ops.step, x, w, params, cot)
    ref_params = [p.detach().double().requires_grad_(True) for p in params]
    out_r, grads_r = _step_and_grads(lambda x_, f, *p: mhc_core.step(x_.double(), _bf16_layer(f), *p),
                                     x.double(), w, ref_params, cot)
    cid = f"gpu-step-T{t}-C{c}"
    assert_close(out, out_r, 2e-2, cid + "-out")
    assert_close(grads[0], grads_r[0], 2e-2, cid + "-grad-x")
    for name, a, b in zip(("phi", "bias", "alpha"), grads[1:], grads_r[1:]):
        assert_close(a, b, 1e-3, f"{cid}-grad-{name}")


@pytest.mark.gpu
@pytest.mark.parametrize("t,c", [(4096, 4096), (4096, 7168), (65536, 4096)])
def test_step_realistic_bf16(t, c, device, assert_close, mixing_params):
    _check_step_bf16(t, c, device, assert_close, mixing_params)


def test_step_rounding_model(device, assert_close, mixing_params):
    """The realistic-shape comparison at a small shape, on any device."""
    _check_step_bf16(48, 40, device, assert_close, mixing_params)


@pytest.mark.gpu
def test_offsets_past_2_pow_31(device, assert_close, mixing_params):
    n, c, tail = 4, 4096, 16
    t = (2 ** 31) // (n * c) + tail            # the last `tail` tokens start past element 2^31
    x = torch.empty(t, n, c, device=device, dtype=torch.bfloat16).normal_()
    params = _params(n, c, device, mixing_params)
    x.requires_grad_(True)
    out = ops.step(x, torch.sin, *params)
    cot = torch.ones_like(out)
    (dx,) = torch.autograd.grad((out * cot).sum(), [x])
    xt = x.detach()[-tail:].float().requires_grad_(True)
    ref_params = [p.detach() for p in params]
    want = mhc_core.step(xt, torch.sin, *ref_params)
    (dx_want,) = torch.autograd.grad(want.sum(), [xt])
    assert_close(out[-tail:], want, 2e-2, "gpu-2^31-out")
    assert_close(dx[-tail:], dx_want, 2e-2, "gpu-2^31-dx")
    del x, out, dx
    torch.cuda.empty_cache()
