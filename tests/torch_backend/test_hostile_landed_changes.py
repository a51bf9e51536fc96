"""Hostile checks of recently landed paths: checkpoint restore of wrapped-model names,
the coefficient node's spec-autograd gradients, MLX's float64 exp at the edges.

Accepted inputs are compared with a reference (the model's own state, float64 autograd,
numpy); refused ones by error type and message.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mhc_core_torch.training import checkpoint


class _One(nn.Module):
    def __init__(self, value: float):
        super().__init__()
        self.w = nn.Parameter(torch.full((2,), value))


class _Two(nn.Module):
    """'w' and 'module.w': stripping the 'module.' prefix maps both names onto 'w'."""

    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.full((2,), 1.0))
        self.module = _One(2.0)


def test_restore_refuses_a_checkpoint_whose_prefixed_names_collide():
    tensors, meta = checkpoint.capture(_Two())
    with pytest.raises(RuntimeError, match="Unexpected key.*module.w"):
        checkpoint.restore(_One(0.0), None, tensors, meta)
