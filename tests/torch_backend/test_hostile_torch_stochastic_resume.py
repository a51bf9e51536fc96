"""A stochastic torch HistorySequential drawing from its own torch.Generator, trained,
checkpointed (mhc_core_torch.training.checkpoint capture / restore) and resumed in a
rebuilt model: the resumed steps must be the uninterrupted run's, bit for bit (the
generator's state is run-time RNG state, not in the state_dict)."""
from __future__ import annotations

import torch
from torch import nn

import mhc_core_torch
from mhc_core_torch.training import checkpoint


def _build():
    torch.manual_seed(3)
    layers = [nn.Linear(4, 4) for _ in range(3)]
    model = mhc_core_torch.HistorySequential(layers, history=2, stochastic=True, init="uniform",
                                             generator=torch.Generator().manual_seed(11))
    return model.train(), None


def _step(model, opt, x):
    loss = (model(x) ** 2).mean()
    opt.zero_grad()
    loss.backward()
    opt.step()
    return loss.detach()


def test_resumed_stochastic_history_run_is_the_uninterrupted_one():
    x = torch.randn(2, 4, generator=torch.Generator().manual_seed(0))
    model, _ = _build()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    want = [_step(model, opt, x) for _ in range(4)]

    model, _ = _build()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    first = [_step(model, opt, x) for _ in range(2)]
    tensors, meta = checkpoint.capture(model, opt)
    model, _ = _build()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    checkpoint.restore(model, opt, tensors, meta)
    got = first + [_step(model, opt, x) for _ in range(2)]
    assert torch.equal(torch.stack(got), torch.stack(want))
