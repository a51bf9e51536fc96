"""The torch backend's conformance adapter (`backend_registry.BackendAdapter`).

Builds the two conformance layers of `backend_registry.numpy_adapter` as torch.nn modules, with the
same parameter names ('layer.weight', 'layer.fc1.weight', ...):
- 'linear': nn.Linear(C, C)                       y = h W^T + b
- 'mlp':    fc1 = nn.Linear(C, 2C), silu, fc2 = nn.Linear(2C, C)

The MHC modules it builds run the reference path (impl='reference') on the CPU, so this
adapter checks the mhc_core math under autograd; the Triton kernels register their own.

dtypes:
- float64, float32: the whole module in that dtype.
- bfloat16: activations and the layer in bfloat16; the mixing parameters (phi, bias,
  alpha) stay float32, as DeepSeek-V4 keeps its hc_* weights, and mhc_core computes the
  mixing in float32 anyway. Gradients of those parameters come back float32.
"""
from __future__ import annotations

from collections import OrderedDict

import numpy as np
import torch
from torch import nn

from mhc_core import coefficients, post_residual, pre_aggregate, sinkhorn
from backend_registry.numpy_adapter import LAYERS

from mhc_core_torch.modules import MHC
from mhc_core_torch.state import load_state

DTYPES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16}
_MIXING = ("phi", "bias", "alpha")


def make_layer(kind: str, c: int) -> nn.Module:
    """The conformance layer `kind` ('linear' or 'mlp') for width C: [..., C] -> [..., C]."""
    if kind == "linear":
        return nn.Linear(c, c)
    if kind == "mlp":  # parameters fc1.weight, fc1.bias, fc2.weight, fc2.bias
        return nn.Sequential(OrderedDict(fc1=nn.Linear(c, 2 * c), act=nn.SiLU(), fc2=nn.Linear(2 * c, c)))
    raise ValueError(f"layer must be one of {LAYERS}, got {kind!r}")


class Adapter:
    name = "torch"
    dtypes = ("float64", "float32", "bfloat16")
    differentiable = True

    def asarray(self, a, dtype: str) -> torch.Tensor:
        # via float64 so bf16 rounds once, from the exact value
        return torch.from_numpy(np.array(a, dtype=np.float64)).to(DTYPES[dtype])

    def to_numpy(self, a: torch.Tensor) -> np.ndarray:
        return a.detach().to(device="cpu", dtype=torch.float64).numpy()

    def core_fn(self, name: str):
        return {"sinkhorn": sinkhorn, "coefficients": coefficients,
                "pre_aggregate": pre_aggregate, "post_residual": post_residual}[name]

    def make_mhc(self, n, c, variant, layer, state, dtype, **cfg) -> MHC:
        module = MHC(make_layer(layer, c), n, c, variant=variant, impl="reference", **cfg)
        dt = DTYPES[dtype]
        if dt == torch.bfloat16:
            module.layer.to(dt)  # mixing parameters stay float32 (see module doc)
        else:
            module.to(dt)
        if variant == "residual":  # no mixing parameters to load, whatever the case carries
            state = {k: v for k, v in state.items() if k not in _MIXING}
        return load_state(module, state)  # cast to each parameter's dtype

    def run(self, module: MHC, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return module(x)

    def step_and_grads(self, module: MHC, x: torch.Tensor, cotangent: torch.Tensor):
        """(out, grads) of sum(out * cotangent): grads keyed 'x' and every dotted parameter name."""
        x = x.detach().clone().requires_grad_(True)
        names, params = zip(*module.named_parameters())
        out = module(x)
        acc = torch.float64 if out.dtype == torch.float64 else torch.float32  # bf16 sums in float32
        loss = (out.to(acc) * cotangent.to(acc)).sum()
        grads = torch.autograd.grad(loss, (x,) + params)
        return out.detach(), {"x": grads[0], **dict(zip(names, grads[1:]))}
