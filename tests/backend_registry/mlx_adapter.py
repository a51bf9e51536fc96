"""The mlx backend's conformance adapter (`backend_registry.BackendAdapter`).

Builds the two conformance layers of `backend_registry.numpy_adapter` as mlx.nn modules, with the
same parameter names ('layer.weight', 'layer.fc1.weight', ...):
- 'linear': nn.Linear(C, C)                       y = h W^T + b
- 'mlp':    fc1 = nn.Linear(C, 2C), silu, fc2 = nn.Linear(2C, C)

dtypes:
- float64: CPU only (Metal has no float64). Every float64 call here runs under
  `mx.stream(mx.cpu)`, so the adapter also works where the default device is a GPU.
- float32: everything float32.
- bfloat16: activations and the layer in bfloat16; the mixing parameters (phi, bias,
  alpha) stay float32, as DeepSeek-V4 keeps its hc_* weights, and mhc_core computes the
  mixing in float32 anyway. Gradients of those parameters come back float32.
"""
from __future__ import annotations

import contextlib

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten

import mhc_core
from mhc_core import coefficients, post_residual, pre_aggregate, sinkhorn
from backend_registry.numpy_adapter import LAYERS

from mhc_core_mlx.modules import MHC
from mhc_core_mlx.state import load_state

DTYPES = {"float64": mx.float64, "float32": mx.float32, "bfloat16": mx.bfloat16}
_MIXING = ("phi", "bias", "alpha")


class MLP(nn.Module):
    """The conformance 'mlp' layer: fc2(silu(fc1(h))), hidden width 2C. [..., C] -> [..., C]."""

    def __init__(self, c: int):
        super().__init__()
        self.fc1 = nn.Linear(c, 2 * c)
        self.fc2 = nn.Linear(2 * c, c)

    def __call__(self, h: mx.array) -> mx.array:
        u = self.fc1(h)
        # silu through the shim's sigmoid: nn.silu's mx.sigmoid is float32-accurate even in
        # float64 on MLX's CPU (see mhc_core/xp.py), which would cap float64 checks at ~1e-8.
        return self.fc2(u * mhc_core.namespace(u).sigmoid(u))


def make_layer(kind: str, c: int) -> nn.Module:
    if kind == "linear":
        return nn.Linear(c, c)
    if kind == "mlp":
        return MLP(c)
    raise ValueError(f"layer must be one of {LAYERS}, got {kind!r}")


def device_for(*arrays) -> contextlib.AbstractContextManager:
    """`mx.stream(mx.cpu)` when any array is float64 (only the CPU has it), else a no-op."""
    f64 = any(isinstance(a, mx.array) and a.dtype == mx.float64 for a in arrays)
    return mx.stream(mx.cpu) if f64 else contextlib.nullcontext()


class Adapter:
    name = "mlx"
    dtypes = ("float64", "float32", "bfloat16")
    differentiable = True

    def asarray(self, a, dtype: str) -> mx.array:
        # Cast in numpy: mx.array(float64 ndarray) silently makes float32 unless told otherwise.
        if dtype == "bfloat16":
            return mx.array(np.asarray(a, dtype=np.float32)).astype(mx.bfloat16)
        return mx.array(np.asarray(a, dtype=np.float64 if dtype == "float64" else np.float32), dtype=DTYPES[dtype])

    def to_numpy(self, a: mx.array) -> np.ndarray:
        return np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a).astype(np.float64)

    def core_fn(self, name: str):
        fns = {"sinkhorn": sinkhorn, "coefficients": coefficients,
               "pre_aggregate": pre_aggregate, "post_residual": post_residual}
        fn = fns[name]

        def run(*args, **kwargs):  # float64 inputs must run on the CPU stream
            with device_for(*args, *kwargs.values()):
                out = fn(*args, **kwargs)
                mx.eval(out)
            return out

        return run

    def make_mhc(self, n, c, variant, layer, state, dtype, **cfg) -> MHC:
        module = MHC(make_layer(layer, c), n, c, variant=variant, **cfg)
        dt = DTYPES[dtype]
        if dt == mx.bfloat16:
            module.layer.set_dtype(dt)  # mixing parameters stay float32 (see module doc)
        else:
            module.set_dtype(dt)
        if variant == "residual":  # no mixing parameters to load, whatever the case carries
            state = {k: v for k, v in state.items() if k not in _MIXING}
        return load_state(module, state)  # cast to each parameter's dtype

    def run(self, module: MHC, x: mx.array) -> mx.array:
        with device_for(x):
            out = module(x)
            mx.eval(out)
        return out

    def step_and_grads(self, module: MHC, x: mx.array, cotangent: mx.array):
        """(out, grads) of sum(out * cotangent): grads keyed 'x' and every dotted parameter name."""
        params = module.trainable_parameters()

        def loss(p, x):
            module.update(p)
            out = module(x)
            acc = mx.float64 if out.dtype == mx.float64 else mx.float32  # bf16 sums in float32
            return (out.astype(acc) * cotangent.astype(acc)).sum(), out

        with device_for(x):
            try:
                (_, out), (g_params, g_x) = mx.value_and_grad(loss, argnums=(0, 1))(params, x)
                mx.eval(out, g_params, g_x)
            finally:
                module.update(params)  # put the original arrays back
        grads = dict(tree_flatten(g_params))
        grads["x"] = g_x
        return out, grads
