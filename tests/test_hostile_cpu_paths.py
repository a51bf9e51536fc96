"""The CPU paths of the MHC modules under hostile input, against the oracles: the naive
float64 transcription (forward) and autograd through mhc_core's plain torch ops in float64
(gradients w.r.t. x, phi, bias, alpha and the wrapped layer's parameters).

- a float32 x with torch's negative bit (`z.conj().imag` of a complex z) on the eager
  path that runs mhc_core on numpy views (`.numpy()` refuses such tensors);
- one element of x near float32's limit: the forward is finite and so is the true
  gradient, which came out NaN (intermediate overflow in the explicit backward, and in
  MLX's autodiff of the scaled RMS norm).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mhc_core
import naive_oracle as naive
from mhc_core_torch import MHC
from mhc_core_torch import autograd as torch_autograd

N, C = 4, 8


def _init(seed: int = 0, variant: str = "mhc") -> dict[str, np.ndarray]:
    """Weights far from the init, so every coefficient matters."""
    rng = np.random.default_rng(seed)
    base = mhc_core.init_params(N, C, variant=variant, dtype=np.float64)
    return {"phi": rng.normal(0.0, 0.5, base["phi"].shape),
            "bias": base["bias"] + rng.normal(0.0, 0.5, base["bias"].shape),
            "alpha": rng.uniform(0.5, 1.5, 3)}


def _torch_module(variant: str = "mhc") -> MHC:
    torch.manual_seed(0)
    return MHC(torch.nn.Linear(C, C), N, C, variant=variant, init=_init(variant=variant))


def _oracle(module: MHC, x: torch.Tensor, cot: torch.Tensor):
    """(naive forward, {name: gradient of sum(out * cot)}) in float64, 'x' included."""
    p = {k: v.detach().double().clone().requires_grad_() for k, v in module.named_parameters()}
    x64 = x.detach().resolve_neg().double().clone().requires_grad_()

    def layer(h):
        return torch.nn.functional.linear(h, p["layer.weight"], p["layer.bias"])

    out = mhc_core.step(x64, layer, p["phi"], p["bias"], p["alpha"], variant=module.variant, **module._cfg)
    (out * cot.double()).sum().backward()
    forward = naive.step(x64.detach().numpy(), lambda h: layer(torch.from_numpy(h)).detach().numpy(),
                         *(p[k].detach().numpy() for k in ("phi", "bias", "alpha")),
                         variant=module.variant, **module._cfg)
    return forward, {"x": x64.grad, **{k: v.grad for k, v in p.items()}}


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy-views", "torch"])
@pytest.mark.parametrize("variant", ["mhc", "hc"])
def test_x_with_the_negative_bit_gives_the_oracle_numbers(monkeypatch, assert_close, numpy_path, variant):
    """x = z.conj().imag is a plain float32 tensor whose negative bit is set: the eager CPU
    path raised "Can't call numpy() on Tensor that has negative bit set" (forward, and
    MHC.coefficients), while the torch-ops path took it."""
    monkeypatch.setattr(torch_autograd, "NUMPY_MAX_ELEMENTS", 1 << 20 if numpy_path else 0)
    module = _torch_module(variant)
    z = torch.view_as_complex(torch.randn(2, 3, N, C, 2, generator=torch.Generator().manual_seed(1)))
    z.requires_grad_()
    x = z.conj().imag
    assert x.is_neg() and x.dtype == torch.float32
    out = module(x)
    cot = torch.randn(out.shape, generator=torch.Generator().manual_seed(2))
    want, grads = _oracle(module, x, cot)
    assert_close(out.detach(), want, 1e-5, case=f"{variant} forward")
    (out * cot).sum().backward()
    assert_close(-z.grad.imag, grads["x"], 1e-5, case=f"{variant} dx")  # x = -imag(z)
    for name, param in module.named_parameters():
        assert_close(param.grad, grads[name], 1e-5, case=f"{variant} d{name}")
    for got, ref in zip(module.coefficients(x), mhc_core.coefficients(x.resolve_neg().double(),
                                                                       *(p.detach().double() for p in
                                                                         (module.phi, module.bias, module.alpha)),
                                                                       variant=variant, **module._cfg)):
        assert_close(got.detach(), ref, 1e-5, case=f"{variant} coefficients")


@pytest.mark.parametrize("numpy_path", [True, False], ids=["numpy-views", "torch"])
@pytest.mark.parametrize("magnitude", [1e30, 3e37, 1e38])
def test_one_huge_element_gives_finite_oracle_gradients(monkeypatch, assert_close, numpy_path, magnitude):
    """One element of x at |x| >= 3e37 among O(1) ones: the forward and the float64
    gradients are finite (dx is O(1)), but the float32 explicit backward gave NaN for the
    token's dx, for bias and alpha (Sinkhorn's h / (p + eps) and the projection's dz * z,
    r * dz and width * s overflowed: dz grows with |x| through the pre-aggregate)."""
    monkeypatch.setattr(torch_autograd, "NUMPY_MAX_ELEMENTS", 1 << 20 if numpy_path else 0)
    module = _torch_module()
    x = torch.randn(3, N, C, generator=torch.Generator().manual_seed(3))
    x[1, 2, 3] = magnitude
    x.requires_grad_()
    out = module(x)
    assert torch.isfinite(out).all()
    cot = torch.ones_like(out)
    want, grads = _oracle(module, x, cot)
    assert_close(out.detach(), want, 1e-5, case=f"{magnitude:.0e} forward")
    out.sum().backward()
    assert_close(x.grad, grads["x"], 1e-5, case=f"{magnitude:.0e} dx")
    for name, param in module.named_parameters():
        if name == "phi" and magnitude >= 1e38:  # known limit: w = r * dz in dphi = u^T w overflows
            continue
        assert_close(param.grad, grads[name], 1e-5, case=f"{magnitude:.0e} d{name}")


@pytest.mark.parametrize(("impl", "magnitude"), [("reference", m) for m in (1e25, 1e30, 1e35, 1e37)]
                         + [("custom_vjp", m) for m in (1e25, 1e30, 3e37, 1e38)])
def test_mlx_step_with_one_huge_element_gives_finite_oracle_gradients(assert_close, impl, magnitude):
    """mhc_core_mlx.MHC: dx matches the oracle with one huge element. impl='reference'
    (what 'auto' picks at this size) lets MLX differentiate the spec's ops: its derivative
    of u = v / s through s forms s * s (inf from |s| ~ 1.8e19), so s is held constant under
    autodiff (`ops.stop_gradient`), as the explicit backward holds it. From ~3e37 autodiff's
    own products of the cotangent overflow (the README's known limit); impl='custom_vjp'
    runs the explicit backward, finite to 1e38."""
    mx = pytest.importorskip("mlx.core")
    mnn = pytest.importorskip("mlx.nn")
    from mhc_core_mlx import MHC as MlxMHC

    mx.random.seed(0)
    module = MlxMHC(mnn.Linear(C, C), N, C, init=_init(), impl=impl)
    xn = np.random.default_rng(3).normal(size=(3, N, C)).astype(np.float32)
    xn[1, 2, 3] = magnitude
    gx = mx.grad(lambda x: module(x).sum())(mx.array(xn))
    x64 = torch.tensor(xn, dtype=torch.float64, requires_grad=True)
    weight, bias = (torch.tensor(np.array(module.layer[k]), dtype=torch.float64) for k in ("weight", "bias"))
    out = mhc_core.step(x64, lambda h: torch.nn.functional.linear(h, weight, bias),
                        *(torch.tensor(np.array(getattr(module, k)), dtype=torch.float64)
                          for k in ("phi", "bias", "alpha")))
    out.sum().backward()
    assert_close(np.array(gx), x64.grad, 1e-5, case=f"mlx {impl} {magnitude:.0e} dx")


def test_stop_gradient_is_the_value_with_a_zero_derivative():
    """`Ops.stop_gradient`: its input's value (the shim conformance checks that on every
    backend) and, under torch's and MLX's autodiff, a zero derivative: d/dx of
    x * stop_gradient(x) is stop_gradient(x), not 2x."""
    x = torch.tensor([1.5, -2.0, 3.0], dtype=torch.float64, requires_grad=True)
    ops = mhc_core.namespace(x)
    (g,) = torch.autograd.grad((x * ops.stop_gradient(x)).sum(), x)
    assert torch.equal(g, x.detach())
    mx = pytest.importorskip("mlx.core")
    xm = mx.array([1.5, -2.0, 3.0])
    ops_m = mhc_core.namespace(xm)
    gm = mx.grad(lambda a: (a * ops_m.stop_gradient(a)).sum())(xm)
    np.testing.assert_array_equal(np.array(gm), np.array(xm))
