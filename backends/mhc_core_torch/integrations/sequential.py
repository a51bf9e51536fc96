"""`MHCSequential(layers, n)`: mHC drop-in for a residual stack of f: [..., C] -> [..., C] layers.

    plain residual stack:  x = x + f_1(x); x = x + f_2(x); ...            [..., C]
    MHCSequential:         s = expand(x, n)                               [..., n, C]
                           s = MHC(f_1)(s); s = MHC(f_2)(s); ...          [..., n, C]
                           y = mean over streams of s (or a StreamHead)   [..., C]

At the default (warm-start) initialisation the two compute the same function, so an
existing trained stack can be swapped for `MHCSequential(stack, n)` without changing its
output, and training then learns the mixing.

Parameters: `layers.<i>.phi|bias|alpha` and `layers.<i>.layer.<f's own names>`, and
`head.*` with reduce='head'.
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

import mhc_core

from ..modules import MHC, StreamHead
from .inject import check_settings


def infer_dim(layer: nn.Module) -> int:
    """C from the first Linear (in_features), LayerNorm / RMSNorm (last normalized dim) or
    Conv (in_channels) inside `layer`; ValueError when none says."""
    for m in layer.modules():
        if isinstance(m, nn.Linear):
            return m.in_features
        if isinstance(m, (nn.LayerNorm, nn.RMSNorm)):
            return int(m.normalized_shape[-1])
    raise ValueError(f"cannot infer the channel width C of {type(layer).__name__}: pass dim=C")


class MHCSequential(nn.Module):
    """An mHC residual stack over `layers` (each f: [..., C] -> [..., C]).

    n: streams; dim: C (inferred from the first layer when None); variant 'mhc' | 'hc' |
    'residual' (n=1: exactly the plain stack); reduce 'mean' | 'head'; impl / init / cfg as
    for `MHC`. Forward: x [..., C] -> [..., C].
    """

    def __init__(self, layers: Iterable[nn.Module], n: int = 4, *, dim: int | None = None, variant: str = "mhc",
                 reduce: str = "mean", impl: str = "auto", init: dict | None = None, **cfg):
        super().__init__()
        layers = list(layers)
        if not layers:
            raise ValueError("MHCSequential needs at least one layer")
        for i, f in enumerate(layers):
            if not isinstance(f, nn.Module):
                raise TypeError(f"MHCSequential layers[{i}] must be an nn.Module [..., C] -> [..., C], "
                                f"got {type(f).__module__}.{type(f).__name__}")
        n, full_cfg = check_settings(n, variant, reduce, cfg)
        self.n, self.dim = n, dim if dim is not None else infer_dim(layers[0])
        self.layers = nn.ModuleList(
            MHC(f, n, self.dim, variant=variant, init=init, impl=impl, **full_cfg) for f in layers
        )
        self.head = (StreamHead(n, self.dim, rms_eps=full_cfg["rms_eps"], eps=full_cfg["pre_eps"])
                     if reduce == "head" else None)

    def extra_repr(self) -> str:
        return f"n={self.n}, dim={self.dim}, reduce={'head' if self.head is not None else 'mean'!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [..., C] -> [..., C]: expand to n streams, run every block, reduce (mean or
        the learned head). ValueError when x's last axis is not C."""
        if x.shape[-1] != self.dim:
            raise ValueError(f"MHCSequential expects x [..., C={self.dim}], got shape {list(x.shape)}")
        s = mhc_core.expand_streams(x, self.n).contiguous()  # [..., n, C]
        for step in self.layers:
            s = step(s)  # [..., n, C]
        return self.head(s) if self.head is not None else mhc_core.reduce_streams(s)  # [..., C]

    def residual_streams(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The stream state after each step (for analysis): a list of [..., n, C]."""
        s, out = mhc_core.expand_streams(x, self.n).contiguous(), []
        for step in self.layers:
            s = step(s)
            out.append(s)
        return out
