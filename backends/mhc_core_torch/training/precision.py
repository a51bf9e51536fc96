"""Mixed precision for mHC models: bf16 activations, float32 mixing (paper Eq. 10-19).

mhc_core computes the coefficients (RMS norm, projection, gating, Sinkhorn) and the
pre/post mixing in float32 whatever the stream's dtype, and casts the result back to it.
Two ways to get bf16 activations around it:

1. `cast_except_mixing(model, torch.bfloat16)`: every weight in bf16 except the mixing
   parameters (phi, bias, alpha of MHC and StreamHead; logits, gate of HistorySkip), as
   DeepSeek-V4 keeps its hc_* weights in float32. The stream and the layers then run in bf16.
2. `torch.autocast("cuda" | "cpu", dtype=torch.bfloat16)` with float32 weights: the
   layers run in bf16; MHC turns autocast off around the mixing (dispatch._reference_step;
   autocast would otherwise run its matmuls in bf16), so the coefficients stay float32.
"""
from __future__ import annotations

import torch
from torch import nn

MIXING = ("phi", "bias", "alpha")
HISTORY_MIXING = ("logits", "gate")  # HistorySkip: the skip weights' logits and the gate


def is_mixing(name: str, module: nn.Module) -> bool:
    """Whether parameter `name` of `module` is a mixing parameter: phi / bias / alpha of an
    MHC or StreamHead, logits / gate of a HistorySkip (the 'history' variant)."""
    from ..history import HistorySkip
    from ..modules import MHC, StreamHead

    return ((isinstance(module, (MHC, StreamHead)) and name in MIXING)
            or (isinstance(module, HistorySkip) and name in HISTORY_MIXING))


def cast_except_mixing(model: nn.Module, dtype: torch.dtype = torch.bfloat16) -> nn.Module:
    """Cast every floating parameter and buffer to `dtype`, except the mixing parameters
    (which stay float32). In place (parameters keep their identity, so an optimizer built
    before still holds them); returns the model."""
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise TypeError(f"cast_except_mixing: dtype must be a floating torch.dtype (e.g. torch.bfloat16), got {dtype!r}")
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.is_floating_point() and not is_mixing(name, module):
                p.data = p.data.to(dtype)
        for name, b in module.named_buffers(recurse=False):
            if b.is_floating_point():
                setattr(module, name, b.to(dtype))
    return model
