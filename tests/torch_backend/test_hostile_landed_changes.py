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


class _SeededNet(nn.Module):
    """A model holding the generator its stochastic history skips draw from."""

    def __init__(self, seed: int):
        super().__init__()
        from mhc_core_torch import HistorySequential

        self.generator = torch.Generator().manual_seed(seed)
        self.body = HistorySequential([nn.Linear(3, 3) for _ in range(2)], history=2, stochastic=True,
                                      generator=self.generator)


def _wrapped_names(tensors: dict, attr: str) -> dict:
    """A capture's names as an older capture through DDP ('module') or torch.compile
    ('_orig_mod') wrote them: the wrapper's names, the model under `attr`."""
    out = {}
    for k, v in tensors.items():
        for kind in ("model/", "rng/generator/"):
            if k.startswith(kind):
                rest = k[len(kind):]
                k = kind + (f"{attr}.{rest}" if rest else attr)
        out[k] = v
    return out


@pytest.mark.parametrize("attr", ["module", "_orig_mod"])
def test_restore_reads_a_wrapped_capture_of_a_generator_held_by_the_root(attr):
    """The root's generator is named 'module' / '_orig_mod' (no dot) under the wrappers."""
    saved = _SeededNet(7)
    saved.generator.manual_seed(11)
    tensors, meta = checkpoint.capture(saved)
    tensors = _wrapped_names(tensors, attr)
    assert f"rng/generator/{attr}" in tensors and f"model/{attr}.body.layers.0.weight" in tensors
    fresh = _SeededNet(8)
    checkpoint.restore(fresh, None, tensors, meta)
    assert torch.equal(fresh.generator.get_state(), saved.generator.get_state())
    for k, v in saved.state_dict().items():
        assert torch.equal(fresh.state_dict()[k], v), k


class _TwoLinears(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x):
        return self.b(torch.relu(self.a(x)))


def test_history_injected_model_deepcopies_after_a_training_forward():
    """copy.deepcopy (an EMA copy, a best-model snapshot) after a step: the windows held
    the forward's non-leaf outputs, which deepcopy refuses. The copy computes what the
    model computes, and copying leaves the model's own windows alone."""
    import copy

    from mhc_core_torch.integrations.inject import inject

    torch.manual_seed(0)
    model = inject(_TwoLinears(), "Linear", history=2, init="uniform")
    model(torch.randn(3, 4)).sum().backward()
    windows = [m.window for m in model.modules() if hasattr(m, "window")]
    twin = copy.deepcopy(model)
    assert [m.window for m in model.modules() if hasattr(m, "window")] == windows
    x = torch.randn(3, 4)
    for _ in range(2):
        assert torch.equal(twin(x), model(x))
