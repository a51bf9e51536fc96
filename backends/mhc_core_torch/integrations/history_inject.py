"""`inject(model, target, history=K)`: history skip mixing around every matching module.

Each matching module m becomes `HistoryInjected(m)`, with its own window of earlier
outputs (one buffer per wrapped module, as the `mhc` package's default "module" scope):

    out = m(x); window = states of earlier calls in this forward (oldest first)
    empty window: seed it with x when out has x's shape (then out = skip(out, [x]) with
                  x itself, not detached: the first call's skip is a live residual);
                  otherwise keep out as is and start the window from it
    out = skip(out, window); window += [out]            (last K kept; detached if asked)

A window whose states no longer match out's shape is cleared first. Every window is
cleared when the model's forward starts, so calls in one forward share it and separate
forwards do not. A module called once per forward thus gets `m(x) + g * x`.
"""
from __future__ import annotations

import torch
from torch import nn

from mhc_core import history as hist

from ..history import HistorySkip

HISTORY_OPTIONS = ("constraint", "temperature", "epsilon", "init", "gate", "prune_threshold",
                   "stochastic", "detach_history", "mixing", "iters", "sinkhorn_eps", "generator")


class HistoryInjected(nn.Module):
    """`module` followed by a HistorySkip over its own window of earlier outputs."""

    def __init__(self, module: nn.Module, history: int, *, detach_history: bool = False, **skip_kwargs):
        super().__init__()
        self.module = module
        self.skip = HistorySkip(history, **skip_kwargs)
        self.detach_history = hist.check_flag(detach_history, "detach_history")
        self.window: list[torch.Tensor] = []

    def clear_history(self) -> None:
        self.window = []

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach() if self.detach_history else x

    def forward(self, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        out = self.module(x, *args, **kwargs)
        if self.window and any(s.shape != out.shape for s in self.window):
            self.window = []
        if not self.window:
            if not isinstance(x, torch.Tensor) or x.shape != out.shape:
                self.window = [self._keep(out)]
                return out
            self.window = [self._keep(x)]
            out = self.skip(out, [x])  # the module's own input mixes live, as in the package
        else:
            out = self.skip(out, self.window)
        self.window = (self.window + [self._keep(out)])[-self.skip.history:]
        return out


def _clear_all(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, HistoryInjected):
            m.clear_history()


def inject_history(model: nn.Module, match, history: int, target, **options) -> nn.Module:
    """Wrap every module for which `match(module)` holds in a HistoryInjected, in place."""
    unknown = sorted(set(options) - set(HISTORY_OPTIONS))
    if unknown:
        raise TypeError(f"unknown history-mixing options {unknown}; expected some of {list(HISTORY_OPTIONS)}")
    if match(model):
        raise ValueError(f"inject(history=...): target {target!r} matches the model itself; wrap its children")
    wrapped = 0

    def replace(parent: nn.Module) -> None:
        nonlocal wrapped
        for name, child in parent.named_children():
            if isinstance(child, HistoryInjected):
                continue
            if match(child):
                setattr(parent, name, HistoryInjected(child, history, **options))
                wrapped += 1
            else:
                replace(child)

    replace(model)
    if not wrapped:
        raise ValueError(f"inject: no module of {model.__class__.__name__} matches target {target!r}")
    if not getattr(model, "_history_clear_hook", False):
        model.register_forward_pre_hook(lambda m, _inputs: _clear_all(m))
        model._history_clear_hook = True
    return model
