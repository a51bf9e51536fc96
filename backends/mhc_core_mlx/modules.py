"""mlx.nn modules around the mhc_core math: `MHC` (one residual step) and `StreamHead`.

The math is `mhc_core`'s, run on mlx arrays through the shim (`mhc_core.xp._MLXOps`);
gradients come from MLX's autodiff (`mx.grad`, `nn.value_and_grad`) through it.

    x   [..., n, C]  --MHC(layer)-->  [..., n, C]        (DESIGN §1)
    x   [..., n, C]  --StreamHead-->  [..., C]           (DeepSeek-V4 hc_head)

Parameters are float32 `mx.array`s named `phi`, `bias`, `alpha`; the wrapped layer is
`self.layer`, so its parameters flatten to `layer.weight`, ... as on the torch backend.

Compilation. `MHC(..., compiled=True)` runs the mixing math (coefficients + pre-aggregate,
then post + residual: the 20-round Sinkhorn loop is dozens of tiny ops) through
`mx.compile`d pure functions of arrays, while the layer itself runs as written (it may
hold a KV cache or other state that must not be traced). The compiled graphs are cached
per configuration, so every layer of a model with the same config shares them. To
compile a whole model instead, use MLX's usual pattern, which tracks the parameters as
implicit inputs so later `load_state` / optimizer updates are seen:

    forward = mx.compile(model, inputs=model.state)

float64 runs on the CPU only (Metal has no float64): wrap float64 work in
`with mx.stream(mx.cpu):` or `mx.set_default_device(mx.cpu)` on a Mac.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Callable

import mlx.core as mx
import mlx.nn as nn
import numpy as np

import mhc_core
from mhc_core import checks
from mhc_core.module_args import head_args, mhc_args

from . import autograd as mlx_autograd

IMPLS = ("auto", "reference", "custom_vjp")
# impl='auto' takes the custom vjp from this many elements of x up: measured faster for
# large x (x [2048, 4, 512]), slower for the depth sweep's small ones
# (benchmarks/results/cpu_ratios.md, mlx section).
AUTO_CUSTOM_VJP_MIN_ELEMENTS = 1 << 20


def _as_param(value) -> mx.array:
    """A float32 parameter from a numpy / mlx array (its shape checked by mhc_core)."""
    if isinstance(value, mx.array):
        with mx.stream(mx.cpu):  # the value may be float64, which only the CPU has
            arr = value.astype(mx.float32)
            mx.eval(arr)
        return arr
    return mx.array(np.asarray(value, dtype=np.float32))


def _check_input(x, n: int, c: int, owner: str) -> None:
    """x must be a floating mlx array [..., n, C] with this module's n and C."""
    if not isinstance(x, mx.array):
        raise TypeError(f"{owner} expects an mlx.core.array x [..., n, C], got {type(x).__module__}.{type(x).__name__}")
    checks.module_input(mhc_core.namespace(x), x, n, c, owner)


# --- compiled mixing math (pure functions of arrays; config bound per cache entry) ---------


@lru_cache(maxsize=None)
def _compiled_mixing(variant: str, cfg: tuple, custom_vjp: bool = False) -> tuple[Callable, Callable]:
    """(mix_in, mix_out) compiled for one variant and config (a sorted items tuple).

    mix_in(x, phi, bias, alpha) -> (h [..., C], post [..., n], res [..., n, n])
    mix_out(x, y, post, res)    -> out [..., n, C]
    custom_vjp: the coefficients with mhc_core's explicit vjp (autograd.py) instead of
    MLX differentiating their ops.
    """
    kw = dict(cfg)
    coefficients = mlx_autograd.coefficients if custom_vjp else mhc_core.coefficients

    def mix_in(x, phi, bias, alpha):
        pre, post, res = coefficients(x, phi, bias, alpha, variant=variant, **kw)
        return mhc_core.pre_aggregate(x, pre), post, res

    return mx.compile(mix_in), mx.compile(mhc_core.post_residual)


class MHC(nn.Module):
    """One mHC / HC / residual step around `layer: [..., C] -> [..., C]`.

    Args:
        layer: the wrapped sub-layer (an attention or MLP block), stored as `self.layer`.
        n: number of residual streams; dim: their width C.
        variant: 'mhc' (Sinkhorn-constrained), 'mhc-lite' (res a convex combination of the
            n! permutation matrices, n <= 6), 'hc' (unconstrained Hyper-Connections) or
            'residual' (plain x + f(x); n must be 1 and there are no mixing parameters).
        iters, rms_eps, pre_eps, sinkhorn_eps, post_scale: see `mhc_core.MHCConfig`.
            Numbers may be Python, numpy or 0-d array scalars; eps and scales must be
            finite and >= 0. All arguments are checked by `mhc_core.module_args`.
        init: optional {'phi', 'bias', 'alpha'} (numpy or mlx arrays) instead of the
            default `mhc_core.init_params(n, dim, variant=variant, seed=seed)`.
        impl: 'reference' (MLX differentiates the mhc_core ops), 'custom_vjp' (the
            coefficients as one `mx.custom_function` with mhc_core's explicit backward) or
            'auto': whichever measured faster for x's size (custom_vjp from
            AUTO_CUSTOM_VJP_MIN_ELEMENTS up; benchmarks/results/cpu_ratios.md). Same math.
            `mx.export_function` cannot serialize the custom function: export with 'reference'.
        compiled: run the mixing math through `mx.compile` (same numbers as eager).

    Forward: `x [..., n, C] -> [..., n, C]`; extra keyword arguments are passed to `layer`
    (attention masks, a KV cache, ...), as on the torch backend.
    """

    def __init__(
        self,
        layer: Callable,
        n: int,
        dim: int,
        *,
        variant: str = "mhc",
        iters: int = 20,
        rms_eps: float = 1e-6,
        pre_eps: float = 1e-6,
        sinkhorn_eps: float = 1e-6,
        post_scale: float = 2.0,
        init: dict | None = None,
        seed: int | None = None,
        impl: str = "auto",
        compiled: bool = False,
    ):
        super().__init__()
        args = mhc_args(layer, n, dim, variant=variant, iters=iters, rms_eps=rms_eps, pre_eps=pre_eps,
                        sinkhorn_eps=sinkhorn_eps, post_scale=post_scale, init=init, seed=seed, impl=impl,
                        impls=IMPLS, framework="mlx")
        self.n, self.dim, self.variant, self.impl = args.n, args.dim, args.variant, args.impl
        self.compiled = checks.flag(compiled, "compiled")
        self.config = args.config  # a dataclass (not a dict): nn.Module does not take it for parameters
        self.layer = layer
        for name, value in args.params.items():  # phi [n*C, n*n+2n], bias [n*n+2n], alpha [3]
            setattr(self, name, _as_param(value))

    def _extra_repr(self) -> str:
        return f"n={self.n}, dim={self.dim}, variant={self.variant!r}, compiled={self.compiled}"

    def _custom_vjp(self, x: mx.array) -> bool:
        """Whether x's coefficients take the explicit vjp (impl, and x's size under 'auto')."""
        return self.impl == "custom_vjp" or (self.impl == "auto" and x.size >= AUTO_CUSTOM_VJP_MIN_ELEMENTS)

    def __call__(self, x: mx.array, **layer_kwargs) -> mx.array:
        """x [..., n, C] -> [..., n, C] in x's dtype (the coefficients in float32, float64
        for float64 x); `layer_kwargs` go to the wrapped layer. TypeError for a non-mlx or
        integer x, ValueError naming the expected shape when x is not [..., n, C] with this
        module's n and C."""
        _check_input(x, self.n, self.dim, "MHC")  # [..., n, C]
        f = (lambda h: self.layer(h, **layer_kwargs)) if layer_kwargs else self.layer
        if self.variant == "residual":
            return mhc_core.residual_step(x, f)
        cfg = self.config.as_dict()
        custom_vjp = self._custom_vjp(x)
        if not self.compiled:
            step = mlx_autograd.step if custom_vjp else mhc_core.step
            return step(x, f, self.phi, self.bias, self.alpha, variant=self.variant, **cfg)
        mix_in, mix_out = _compiled_mixing(self.variant, tuple(sorted(cfg.items())), custom_vjp)
        h, post, res = mix_in(x, self.phi, self.bias, self.alpha)  # [..., C], [..., n], [..., n, n]
        y = f(h)  # [..., C]
        checks.layer_output(x, y)
        return mix_out(x, y, post, res)  # [..., n, C]

    def coefficients(self, x: mx.array):
        """(pre [..., n], post [..., n], res [..., n, n]) for x [..., n, C] (reference math),
        e.g. to feed `mhc_core.gain_report` with each layer's `res`; differentiable, with the
        same path as the step (`impl`: MLX's autodiff or the explicit vjp)."""
        _check_input(x, self.n, self.dim, "MHC")
        if self.variant == "residual":
            raise ValueError("variant 'residual' has no coefficients")
        coefficients = mlx_autograd.coefficients if self._custom_vjp(x) else mhc_core.coefficients
        return coefficients(x, self.phi, self.bias, self.alpha, variant=self.variant, **self.config.as_dict())


class StreamHead(nn.Module):
    """Learned stream reduction (DeepSeek-V4 `hc_head`): x [..., n, C] -> [..., C].

    `w = sigmoid(alpha * (rmsnorm(flatten(x)) @ phi) + bias) + eps`, out = sum_i w[i] x[i].
    Parameters phi [n*C, n], bias [n], alpha [1] (float32), initialised by
    `mhc_core.init_head_params` so the head starts as the mean over streams.
    """

    def __init__(self, n: int, dim: int, *, rms_eps: float = 1e-6, eps: float = 1e-6):
        super().__init__()
        args = head_args(n, dim, rms_eps=rms_eps, eps=eps)
        self.n, self.dim, self.rms_eps, self.eps = args.n, args.dim, args.rms_eps, args.eps
        for name, value in args.params.items():  # phi [n*C, n], bias [n], alpha [1]
            setattr(self, name, _as_param(value))

    def _extra_repr(self) -> str:
        return f"n={self.n}, dim={self.dim}"

    def __call__(self, x: mx.array) -> mx.array:
        """x [..., n, C] -> [..., C] in x's dtype. TypeError / ValueError as `MHC`."""
        _check_input(x, self.n, self.dim, "StreamHead")  # [..., n, C]
        return mhc_core.head(x, self.phi, self.bias, self.alpha, rms_eps=self.rms_eps, eps=self.eps)
