"""torch.nn modules around the mhc_core math: `MHC` (one residual step) and `StreamHead`.

    x [..., n, C]  --MHC(layer)-->  [..., n, C]        (DESIGN §1, paper Eq. 3-8)
    x [..., n, C]  --StreamHead-->  [..., C]           (DeepSeek-V4 hc_head)

The math is `mhc_core`'s, run on torch tensors through the array-API shim, as three
autograd nodes whose backward is mhc_core's explicit one (autograd.py; the reference path).
`impl` picks the path (dispatch.py):
'auto' (the Triton kernels for CUDA tensors they take, else reference), 'reference' or
'triton'.

Parameters are float32 `nn.Parameter`s named `phi`, `bias`, `alpha` (none for the
'residual' variant); the wrapped layer is `self.layer`, so its parameters are named
`layer.weight`, ... exactly as on the mlx backend: one state loads into both.
Mixed precision: keep phi / bias / alpha float32 and cast only `module.layer` to bf16
(as DeepSeek-V4 keeps its hc_* weights); the coefficients are computed in float32 anyway.
The reference path works under `torch.compile(module, fullgraph=True)`.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

import mhc_core
from mhc_core import checks
from mhc_core.module_args import head_args, mhc_args

from . import autograd, dispatch, triton_gate

# torch's array types enter mhc_core's namespace cache now, so that even the first trace of
# a compiled model finds them by a plain dict lookup (mhc_core.xp.namespace).
mhc_core.namespace(torch.empty(0), nn.Parameter(torch.empty(0)))


def _as_param(value) -> nn.Parameter:
    """A float32 CPU parameter from a numpy array or tensor (its shape checked by mhc_core),
    in torch-owned memory: a `torch.from_numpy` storage cannot be resized, which FSDP does
    to free and re-gather parameters."""
    if isinstance(value, torch.Tensor):
        return nn.Parameter(value.detach().to(dtype=torch.float32, device="cpu").clone())
    return nn.Parameter(torch.tensor(np.asarray(value, dtype=np.float32)))


@triton_gate.passed_checks  # a forward with x's shape, dtype and device seen before skips it
def _check_input(x, n: int, c: int, owner: str) -> None:
    """x must be a floating torch.Tensor [..., n, C] with this module's n and C."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{owner} expects a torch.Tensor x [..., n, C], got "
                        f"{type(x).__module__}.{type(x).__name__}")
    checks.module_input(mhc_core.namespace(x), x, n, c, owner)


class MHC(nn.Module):
    """One mHC / HC / residual step around `layer: [..., C] -> [..., C]`.

    Args:
        layer: the wrapped sub-layer (an attention or MLP block), registered as `self.layer`.
        n: number of residual streams; dim: their width C.
        variant: 'mhc' (Sinkhorn-constrained), 'mhc-lite' (res a convex combination of the
            n! permutation matrices, n <= 6, reference path only), 'hc' (unconstrained
            Hyper-Connections) or 'residual' (plain x + f(x); n must be 1 and there are no
            mixing parameters).
        iters, rms_eps, pre_eps, sinkhorn_eps, post_scale: see `mhc_core.MHCConfig`.
            Numbers may be Python, numpy or 0-d array scalars; eps and scales must be
            finite and >= 0. All arguments are checked by `mhc_core.module_args`.
        init: optional {'phi', 'bias', 'alpha'} (numpy arrays or tensors) instead of the
            default `mhc_core.init_params(n, dim, variant=variant, seed=seed)`.
        impl: 'auto' | 'reference' | 'triton' (see dispatch.py).

    Forward: `x [..., n, C] -> [..., n, C]`; extra keyword arguments of `forward` are
    passed to `layer` (attention masks, position embeddings, ...).

    Gradients: the reference path supports any order (when a gradient of a gradient is
    asked for, its nodes recompute mhc_core's ops under autograd). The
    Triton path computes first derivatives only: a gradient of a gradient (backward of
    a `create_graph=True` gradient, e.g. a gradient penalty) raises a RuntimeError saying
    so; use impl='reference' for it. Under forward-mode AD, torch.func transforms and
    torch.jit.trace the kernels cannot run: impl='auto' takes the reference path there,
    impl='triton' raises.
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
    ):
        super().__init__()
        args = mhc_args(layer, n, dim, variant=variant, iters=iters, rms_eps=rms_eps, pre_eps=pre_eps,
                        sinkhorn_eps=sinkhorn_eps, post_scale=post_scale, init=init, seed=seed, impl=impl,
                        impls=dispatch.IMPLS, framework="torch")
        self.n, self.dim, self.variant, self.impl, self.config = args.n, args.dim, args.variant, args.impl, args.config
        self._cfg = self.config.as_dict()
        self.layer = layer
        for name, value in args.params.items():  # phi [n*C, n*n+2n], bias [n*n+2n], alpha [3]
            self.register_parameter(name, _as_param(value))

    def extra_repr(self) -> str:
        return f"n={self.n}, dim={self.dim}, variant={self.variant!r}, impl={self.impl!r}"

    def _mixing(self):
        if self.variant == "residual":
            return None, None, None
        return self.phi, self.bias, self.alpha

    def forward(self, x: torch.Tensor, **layer_kwargs) -> torch.Tensor:
        """x [..., n, C] -> [..., n, C] in x's dtype (float32, bfloat16, float16 or float64;
        the coefficients are computed in float32, float64 for float64 x). `layer_kwargs`
        go to the wrapped layer. TypeError for a non-tensor or integer x, ValueError
        naming the expected shape when x is not [..., n, C] with this module's n and C."""
        _check_input(x, self.n, self.dim, "MHC")  # [..., n, C]
        phi, bias, alpha = self._mixing()
        return dispatch.mhc_step(x, self.layer, phi, bias, alpha, variant=self.variant, cfg=self._cfg,
                                 impl=self.impl, layer_kwargs=layer_kwargs)

    def coefficients(self, x: torch.Tensor):
        """(pre [..., n], post [..., n], res [..., n, n]) for x [..., n, C] (reference math),
        e.g. to feed `mhc_core.gain_report` with each layer's `res`. Differentiable, as one
        autograd node with mhc_core's explicit backward (as the step's coefficients are)."""
        _check_input(x, self.n, self.dim, "MHC")
        if self.variant == "residual":
            raise ValueError("variant 'residual' has no coefficients")
        return autograd.coefficients(x, self.phi, self.bias, self.alpha, variant=self.variant, **self._cfg)


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
            self.register_parameter(name, _as_param(value))

    def extra_repr(self) -> str:
        return f"n={self.n}, dim={self.dim}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., n, C] -> [..., C] in x's dtype (weights computed in float32, also under
        autocast). TypeError / ValueError as `MHC.forward`."""
        _check_input(x, self.n, self.dim, "StreamHead")  # [..., n, C]
        with torch.autocast(x.device.type, enabled=False):  # float32 weights even under autocast
            return mhc_core.head(x, self.phi, self.bias, self.alpha, rms_eps=self.rms_eps, eps=self.eps)
