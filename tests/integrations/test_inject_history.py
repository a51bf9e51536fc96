"""inject(model, target, history=K): history skip mixing around matching modules, without
the `mhc` package (its comparison is in test_vs_mhc_package.py): one window per wrapped
module, cleared at each forward, and clear errors for bad settings."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mhc_core_torch import inject
from mhc_core_torch.integrations.history_inject import HistoryInjected


class Twice(nn.Module):
    """Calls the same Linear twice per forward, so its window holds two states."""

    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return self.lin(self.lin(x))


def test_one_window_per_module_cleared_each_forward():
    torch.manual_seed(0)
    model = Twice()
    w, b = model.lin.weight.detach().clone(), model.lin.bias.detach().clone()
    inject(model, nn.Linear, history=3, init="uniform")
    assert isinstance(model.lin, HistoryInjected)
    x = torch.randn(2, 4)
    f = lambda t: t @ w.T + b  # noqa: E731
    x1 = f(x) + x  # first call: window [x], weight 1
    x2 = f(x1) + 0.5 * (x + x1)  # second call: window [x, x1], uniform weights
    for _ in range(2):  # the same result on every forward: windows are cleared
        torch.testing.assert_close(model(x), x2, rtol=1e-6, atol=1e-6)


def test_shape_changing_module_passes_through():
    model = nn.Sequential(nn.Linear(4, 6))
    inject(model, nn.Linear, history=2)
    x = torch.randn(3, 4)
    torch.testing.assert_close(model(x), model[0].module(x))


@pytest.mark.parametrize("kwargs,err,msg", [
    (dict(history=0), ValueError, "history"),
    (dict(history=2, temperature=-1.0), ValueError, "temperature"),
    (dict(history=2, epsilon=1.5), ValueError, "epsilon"),
    (dict(history=2, colour="red"), TypeError, "unknown history-mixing options"),
    # stream settings have no meaning with history mixing: refused, not silently ignored
    (dict(history=2, detach_history="yes"), TypeError, "detach_history must be True or False"),
    (dict(history=2, n=2), ValueError, r"history=2\).* \['n'\]"),
    (dict(history=2, variant="hc", reduce="head"), ValueError, r"\['reduce', 'variant'\]"),
    (dict(history=2, impl="triton"), ValueError, r"\['impl'\]"),
    (dict(history=2, recipe="llama"), ValueError, r"\['recipe'\]"),
])
def test_bad_settings(kwargs, err, msg):
    with pytest.raises(err, match=msg):
        inject(nn.Sequential(nn.Linear(4, 4)), nn.Linear, **kwargs)


def test_no_match_and_self_match():
    with pytest.raises(ValueError, match="no module"):
        inject(nn.Sequential(nn.ReLU()), nn.Linear, history=2)
    with pytest.raises(ValueError, match="matches the model itself"):
        inject(nn.Linear(4, 4), nn.Linear, history=2)
