"""`inject(model, target, history=K)`: history skip mixing around every matching module.

Each matching module m becomes `HistoryInjected(m)`, with its own window of earlier
outputs (one buffer per wrapped module, as the `mhc` package's default "module" scope):

    out = m(x); window = states of earlier calls in this forward (oldest first)
    empty window: seed it with x when out has x's shape (then out = skip(out, [x]) with
                  x itself, not detached: the first call's skip is a live residual);
                  otherwise keep out as is and start the window from it
    out = skip(out, window); window += [out]            (last K kept; detached if asked)

x is the module's first input, given by position or by name (transformers calls
`self_attn(hidden_states=...)`). A module returning a tuple / list (transformers'
attention: hidden state, weights) has its first item mixed and the rest passed through.
A window whose states no longer match out's shape is cleared first. Every window is
cleared when the model's forward starts (and those under a transformers model inside it when
that one's forward starts: `model.model(...)`), so calls in one forward share it and separate
forwards do not. A module called once per forward thus gets `m(x) + g * x`.

Gradient checkpointing reruns a checkpointed layer in backward, and with it a wrapped module
inside that layer: the rerun mixes the window the module had when the forward called it
(kept for its first call) and leaves the window as the forward left it, so it computes what the forward
computed. Which forward call a rerun repeats is known only for a module called once per
forward; a module called more often inside a checkpointed layer is refused in backward.
"""
from __future__ import annotations

import inspect
import re
import sys

import torch
from torch import nn

from mhc_core import history as hist

from ..history import HistorySkip

_NAMED = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)

HISTORY_OPTIONS = ("constraint", "temperature", "epsilon", "init", "gate", "prune_threshold",
                   "stochastic", "detach_history", "mixing", "iters", "sinkhorn_eps", "generator")


def _in_backward() -> bool:
    """Whether autograd's backward is running (gradient checkpointing reruns layers there).
    Traced code (torch.compile) is a forward: the graph does not rerun this Python."""
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


class HistoryInjected(nn.Module):
    """`module` followed by a HistorySkip over its own window of earlier outputs."""

    _calls, _first_window = 0, ()  # calls in this forward, the window the first one had

    def __init__(self, module: nn.Module, history: int, *, detach_history: bool = False, **skip_kwargs):
        super().__init__()
        self.module = module
        self.skip = HistorySkip(history, **skip_kwargs)
        self.detach_history = hist.check_flag(detach_history, "detach_history")
        self.window: list[torch.Tensor] = []
        self._input_name: str | None = None  # the module's first forward parameter, found on first use

    def clear_history(self) -> None:
        self.window = []
        self._calls, self._first_window = 0, []

    def __getstate__(self) -> dict:
        """The module without its windows (run-time states of the last forward, cleared when
        the next one starts): copy.deepcopy after a training forward (an EMA copy) would
        otherwise meet their non-leaf tensors, and pickles would carry them."""
        state = dict(super().__getstate__())
        state.update(window=[], _calls=0, _first_window=[])
        return state

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach() if self.detach_history else x

    def _input(self, args, kwargs):
        """The module's first input, given by position or by its name (transformers calls
        `self_attn(hidden_states=...)`); None when the call gives neither."""
        if args:
            return args[0]
        if self._input_name is None:
            params = list(inspect.signature(self.module.forward).parameters.values())
            self._input_name = params[0].name if params and params[0].kind in _NAMED else ""
        return kwargs.get(self._input_name)

    def forward(self, *args, **kwargs):
        x = self._input(args, kwargs)
        out = self.module(*args, **kwargs)
        if isinstance(out, torch.Tensor):
            return self._mixed(x, out)
        if isinstance(out, (tuple, list)) and out and isinstance(out[0], torch.Tensor):
            # (hidden, extras...) as transformers' attention returns: the hidden state mixes
            items = [self._mixed(x, out[0]), *out[1:]]
            return out._make(items) if hasattr(out, "_make") else type(out)(items)
        raise TypeError(f"history mixing around {type(self.module).__name__}: it returned "
                        f"{type(out).__name__}; expected a tensor, or a tuple / list whose first item is one")

    def _mixed(self, x, out: torch.Tensor) -> torch.Tensor:
        if not _in_backward():  # a forward, not a rerun inside backward
            if self._calls == 0:
                self._first_window = list(self.window)
            self._calls += 1
            return self._mix(x, out)
        # gradient checkpointing reruns this call in backward: mix the window it had then
        if self._calls != 1:
            raise RuntimeError(
                f"history mixing around {type(self.module).__name__}: backward reran it (gradient "
                f"checkpointing) after {self._calls} calls in the forward, and which call it repeats, "
                "so which window it mixed, is unknown; wrap the checkpointed layers themselves "
                "(e.g. the decoder layers) or turn gradient checkpointing off")
        left = self.window
        self.window = list(self._first_window)
        try:
            return self._mix(x, out)
        finally:
            self.window = left

    def _mix(self, x, out: torch.Tensor) -> torch.Tensor:
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


def _clear_all(model: nn.Module, _inputs=None) -> None:
    """Empty every HistoryInjected window in `model` (its forward pre-hook: a module-level
    function, so the model still pickles). Not while backward runs: gradient checkpointing
    reruns a layer there, and its wrapped modules need the windows of the forward."""
    if _in_backward():
        return
    for m in model.modules():
        if isinstance(m, HistoryInjected):
            m.clear_history()


_PLAIN_NAME = re.compile(r"^[A-Za-z0-9_.]+$")


def _retarget_tied_keys(holders, wrapped: list[str]) -> None:
    """Rename the tied-parameter names transformers keeps (`_tied_weights_keys`,
    `all_tied_weights_keys`: {target: source}, relative to the module holding them) through
    the new wraps: a parameter of a wrapped module `w` is now `w.module.<name>`, so
    save_pretrained still stores a tied pair once and from_pretrained ties it again.
    Regular-expression entries are left as they are."""
    def renamed(full: str) -> str:
        for w in sorted(wrapped, key=len, reverse=True):
            if full.startswith(w + "."):
                return f"{w}.module.{full[len(w) + 1:]}"
        return full

    def through(prefix: str, name: str) -> str:
        if not _PLAIN_NAME.match(name):
            return name
        if not prefix:
            return renamed(name)
        # a holder inside a wrapped module moves with it: names stay relative to its new place
        return renamed(f"{prefix}.{name}")[len(renamed(prefix + ".")):]

    for prefix, holder in holders:
        for attr in ("_tied_weights_keys", "all_tied_weights_keys"):
            keys = getattr(holder, attr, None)
            if isinstance(keys, dict) and keys:
                setattr(holder, attr, {through(prefix, k): through(prefix, v) for k, v in keys.items()})


def history_settings(wrapped: HistoryInjected, init: str = "identity") -> dict:
    """The JSON-ready options that rebuild `wrapped`'s skip (config.mhc's history entries;
    a generator is run-time state and is not among them)."""
    skip = wrapped.skip
    return {"history": skip.history, "constraint": skip.constraint, "temperature": float(skip.temperature),
            "epsilon": float(skip.epsilon), "init": init, "gate": skip.gated,
            "prune_threshold": float(skip.prune_threshold), "stochastic": skip.stochastic,
            "detach_history": wrapped.detach_history, "mixing": skip.mixing, "iters": skip.iters,
            "sinkhorn_eps": float(skip.sinkhorn_eps)}


def inject_history(model: nn.Module, match, history: int, target, **options) -> list[str]:
    """Wrap every module for which `match(module)` holds in a HistoryInjected, in place;
    returns the wrapped modules' names (as `model.named_modules()` gave them before)."""
    unknown = sorted(set(options) - set(HISTORY_OPTIONS))
    if unknown:
        raise TypeError(f"unknown history-mixing options {unknown}; expected some of {list(HISTORY_OPTIONS)}")
    if match(model):
        raise ValueError(f"inject(history=...): target {target!r} matches the model itself; wrap its children")
    wrapped: list[str] = []
    holders = [(prefix, m) for prefix, m in model.named_modules()
               if isinstance(getattr(m, "_tied_weights_keys", None), dict)
               or isinstance(getattr(m, "all_tied_weights_keys", None), dict)]

    def replace(parent: nn.Module, prefix: str) -> None:
        for name, child in parent.named_children():
            if isinstance(child, HistoryInjected):  # not wrapped twice; its module's children may be
                replace(child.module, f"{prefix}{name}.module.")
                continue
            if match(child):
                setattr(parent, name, HistoryInjected(child, history, **options))
                wrapped.append(prefix + name)
            else:
                replace(child, f"{prefix}{name}.")

    replace(model, "")
    if not wrapped:
        if any(isinstance(m, HistoryInjected) and match(m.module) for m in model.modules()):
            raise ValueError(f"inject(history=...): every module matching target {target!r} is history-wrapped "
                             "already; a module gets one window")
        raise ValueError(f"inject: no module of {model.__class__.__name__} matches target {target!r}")
    _retarget_tied_keys(holders, wrapped)
    for owner in _forward_owners(model, wrapped):
        if not getattr(owner, "_history_clear_hook", False):
            owner.register_forward_pre_hook(_clear_all)
            owner._history_clear_hook = True
    return wrapped


def _forward_owners(model: nn.Module, wrapped: list[str]) -> list[nn.Module]:
    """`model` and each transformers model inside it that holds a wrapped module (a causal
    LM's base model `model.model`): a forward of one of them is a forward of its own
    (model.model(...) or get_decoder() for hidden states) and starts with empty windows
    under it. Other modules (a decoder layer, one shared layer run several times) are not:
    calls in one forward share the windows."""
    transformers = sys.modules.get("transformers")
    owners = {id(model): model}
    if transformers is not None:
        for name in wrapped:
            module = model
            for part in name.split(".")[:-1]:
                module = module.get_submodule(part)
                if isinstance(module, transformers.PreTrainedModel):
                    owners.setdefault(id(module), module)
    return list(owners.values())
