"""MHC(impl='triton') under hostile input, forward and every gradient against the float64
oracle (mhc_core.step under torch autograd on the module's float32 weights), as
tests/test_hostile_cpu_paths.py checks the reference path:

- one element of x near float32's limit: the forward and the true gradients are finite
  (the cotangent of res grows with |x| through post_residual); the kernels' Sinkhorn
  backward divided it by each step's denominator and gave NaN for the token's dx and for
  phi / bias / alpha from |x| ~ 3e37; and the projection backward's u = rho * dz and
  c = rho^2 / K * sum(dz * z) overflowed before the 1/m scale was applied (dx NaN for 'hc'
  at 3e37 and for 'mhc' at 1e38). A gradient whose float64 value is past float32's range
  is not compared.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

import mhc_core
from mhc_core_torch import MHC

N, C = 4, 8


def _init(variant: str = "mhc") -> dict[str, torch.Tensor]:
    """Weights far from the init, so every coefficient matters."""
    rng = np.random.default_rng(0)
    base = mhc_core.init_params(N, C, variant=variant, dtype=np.float64)
    return {"phi": torch.from_numpy(rng.normal(0.0, 0.5, base["phi"].shape)),
            "bias": torch.from_numpy(base["bias"] + rng.normal(0.0, 0.5, base["bias"].shape)),
            "alpha": torch.from_numpy(rng.uniform(0.5, 1.5, 3))}


def _oracle(module: MHC, x: torch.Tensor, cot: torch.Tensor):
    """(out, {name: gradient of sum(out * cot)}) through mhc_core in float64, 'x' included."""
    p = {k: v.detach().double().cpu().clone().requires_grad_() for k, v in module.named_parameters()}
    x64 = x.detach().double().cpu().clone().requires_grad_()

    def layer(h):
        return torch.nn.functional.linear(h, p["layer.weight"], p["layer.bias"])

    out = mhc_core.step(x64, layer, p["phi"], p["bias"], p["alpha"], variant=module.variant, **module._cfg)
    (out * cot.double().cpu()).sum().backward()
    return out.detach(), {"x": x64.grad, **{k: v.grad for k, v in p.items()}}


@pytest.mark.parametrize("variant,magnitude", [("mhc", 1e30), ("mhc", 3e37), ("mhc", 1e38), ("hc", 1e30),
                                               ("hc", 3e37)])
def test_one_huge_element_gives_finite_oracle_gradients(variant, magnitude, device, assert_close):
    torch.manual_seed(0)
    module = MHC(torch.nn.Linear(C, C), N, C, variant=variant, init=_init(variant), impl="triton").to(device)
    x = torch.randn(3, N, C, generator=torch.Generator().manual_seed(3))
    x[1, 2, 3] = magnitude
    x = x.to(device).requires_grad_()
    out = module(x)
    cot = torch.ones_like(out)
    want, grads = _oracle(module, x, cot)
    assert_close(out.detach(), want, 1e-5, f"{variant} {magnitude:.0e} forward")
    (out * cot).sum().backward()
    got = {"x": x.grad, **{name: param.grad for name, param in module.named_parameters()}}
    for name, ref in grads.items():
        if ref.abs().max() <= torch.finfo(torch.float32).max:  # representable in float32
            assert_close(got[name], ref, 1e-5, f"{variant} {magnitude:.0e} d{name}")
