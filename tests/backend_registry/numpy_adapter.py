"""The numpy backend's conformance adapter: mhc_core itself, forward only.

Also defines, in numpy, the two layers the conformance suite wraps (every backend builds
the same ones from the same weights):
- 'linear': y = h @ W^T + b                          layer.weight [C, C], layer.bias [C]
- 'mlp':    y = W2 silu(W1 h + b1) + b2, hidden 2C   layer.fc1.{weight,bias}, layer.fc2.{...}
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from mhc_core import coefficients, post_residual, pre_aggregate, sinkhorn, step

LAYERS = ("linear", "mlp")
_DTYPES = {"float64": np.float64, "float32": np.float32}


def layer_shapes(kind: str, c: int) -> dict[str, tuple[int, ...]]:
    """Parameter shapes of a conformance layer, named as inside an MHC module."""
    if kind == "linear":
        return {"layer.weight": (c, c), "layer.bias": (c,)}
    if kind == "mlp":
        h = 2 * c
        return {"layer.fc1.weight": (h, c), "layer.fc1.bias": (h,),
                "layer.fc2.weight": (c, h), "layer.fc2.bias": (c,)}
    raise ValueError(f"layer must be one of {LAYERS}, got {kind!r}")


def numpy_layer(kind: str, state: dict[str, np.ndarray], dtype=np.float64) -> Callable:
    """The conformance layer as a numpy function [..., C] -> [..., C]."""
    w = {k: np.asarray(v, dtype=dtype) for k, v in state.items() if k.startswith("layer.")}
    if kind == "linear":
        return lambda h: h @ w["layer.weight"].T + w["layer.bias"]

    def mlp(h):
        u = h @ w["layer.fc1.weight"].T + w["layer.fc1.bias"]
        u = u / (1.0 + np.exp(-u))  # silu
        return u @ w["layer.fc2.weight"].T + w["layer.fc2.bias"]

    if kind == "mlp":
        return mlp
    raise ValueError(f"layer must be one of {LAYERS}, got {kind!r}")


class _NumpyMHC:
    def __init__(self, variant, layer, state, dtype, cfg):
        self.variant, self.cfg = variant, cfg
        self.params = {k: np.asarray(state[k], dtype=dtype) for k in ("phi", "bias", "alpha") if k in state}
        self.f = numpy_layer(layer, state, dtype)

    def __call__(self, x):
        return step(x, self.f, self.params.get("phi"), self.params.get("bias"),
                    self.params.get("alpha"), variant=self.variant, **self.cfg)


class Adapter:
    name = "numpy"
    dtypes = ("float64", "float32")
    differentiable = False

    def asarray(self, a, dtype):
        return np.asarray(a, dtype=_DTYPES[dtype])

    def to_numpy(self, a):
        return np.asarray(a, dtype=np.float64)

    def core_fn(self, name):
        return {"sinkhorn": sinkhorn, "coefficients": coefficients,
                "pre_aggregate": pre_aggregate, "post_residual": post_residual}[name]

    def make_mhc(self, n, c, variant, layer, state, dtype, **cfg):
        return _NumpyMHC(variant, layer, state, _DTYPES[dtype], cfg)

    def run(self, module, x):
        return module(x)

    def step_and_grads(self, module, x, cotangent):
        raise NotImplementedError("numpy has no autodiff; gradients are checked on torch and mlx")
