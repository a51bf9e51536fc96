"""Mixed precision for mHC models on MLX: bf16 activations, float32 mixing.

mhc_core computes the coefficients and the pre/post mixing in float32 whatever the
stream's dtype (paper Eq. 10-19). `cast_except_mixing(model, mx.bfloat16)` casts every
weight except the mixing parameters (phi, bias, alpha of MHC and StreamHead; logits, gate
of HistorySkip), so the stream and the layers run in bf16 while the mixing weights stay
float32. MLX has no autocast: the weights' dtype decides.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
from mlx.utils import tree_flatten, tree_unflatten

MIXING = ("phi", "bias", "alpha")
HISTORY_MIXING = ("logits", "gate")  # HistorySkip: the skip weights' logits and the gate


def cast_except_mixing(model: nn.Module, dtype=mx.bfloat16) -> nn.Module:
    """Cast every floating parameter to `dtype` except mixing parameters (phi, bias, alpha
    of MHC and StreamHead; logits, gate of HistorySkip); returns the model."""
    from ..history import HistorySkip
    from ..modules import MHC, StreamHead

    if not (isinstance(dtype, mx.Dtype) and mx.issubdtype(dtype, mx.floating)):
        raise TypeError(f"cast_except_mixing: dtype must be a floating mlx.core.Dtype (e.g. mx.bfloat16), got {dtype!r}")
    mixing = set()
    for prefix, module in model.named_modules():
        names = MIXING if isinstance(module, (MHC, StreamHead)) else HISTORY_MIXING if isinstance(module, HistorySkip) else ()
        mixing.update(f"{prefix}.{k}" if prefix else k for k in names)
    cast = [(k, v.astype(dtype)) for k, v in tree_flatten(model.parameters())
            if k not in mixing and mx.issubdtype(v.dtype, mx.floating)]
    model.update(tree_unflatten(cast))
    return model
