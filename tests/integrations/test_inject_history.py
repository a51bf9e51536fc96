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


class Attention(nn.Module):
    """Returns (hidden, weights) as transformers' attention does; `extra` keeps a tuple type."""

    def __init__(self, container=tuple):
        super().__init__()
        self.lin, self.container = nn.Linear(4, 4), container

    def forward(self, hidden_states, scale=1.0):
        return self.container([self.lin(hidden_states) * scale, hidden_states.sum()])


class CallsByName(nn.Module):
    """Calls its attention twice, by keyword (transformers' `self_attn(hidden_states=...)`)."""

    def __init__(self, container=tuple):
        super().__init__()
        self.attn = Attention(container)

    def forward(self, x):
        h, _ = self.attn(hidden_states=x, scale=2.0)
        return self.attn(hidden_states=h)[0]


Pair = __import__("collections").namedtuple("Pair", "hidden weights")


@pytest.mark.parametrize("container", [tuple, list, Pair._make])
def test_module_called_by_name_returning_a_tuple(container):
    """The window is seeded from the input given by name, the tuple's first item mixes and
    the rest passes through: against the formula with uniform weights."""
    torch.manual_seed(0)
    model = CallsByName(container)
    w, b = model.attn.lin.weight.detach().clone(), model.attn.lin.bias.detach().clone()
    inject(model, Attention, history=3, init="uniform")
    x = torch.randn(2, 4)
    f = lambda t, s=1.0: (t @ w.T + b) * s  # noqa: E731
    x1 = f(x, 2.0) + x
    want = f(x1) + 0.5 * (x + x1)
    torch.testing.assert_close(model(x), want, rtol=1e-6, atol=1e-6)
    out = model.attn(hidden_states=x)
    assert type(out) is type(container([0, 0])) and torch.equal(out[1], x.sum())


def test_module_returning_no_tensor_is_refused():
    class Dicty(nn.Module):
        def forward(self, x):
            return {"h": x}

    model = nn.Sequential(Dicty())
    inject(model, Dicty, history=2)
    with pytest.raises(TypeError, match="around Dicty: it returned dict; expected a tensor, or a tuple"):
        model(torch.randn(2, 4))
