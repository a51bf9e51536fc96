"""Multi-history skip mixing as torch.nn modules (the math is mhc_core/history.py).

    x_{l+1} = layers[l](x_l) + g_l * sum_{k in window} a_{l,k} x_k     window: last K states

`HistorySequential(layers, history=K, ...)` runs the layers and keeps the window (x_0
first); `HistorySkip` holds one layer's parameters: `logits` (float32 [K], or [K, K] for
matrix mixing) and, when gated, `gate` (float32 [], init 2.0). State names
`layers.{i}.*`, `skips.{i}.logits`, `skips.{i}.gate` are the mlx backend's too.

detach_history=True stores the window detached (the `mhc` package's default): constant
memory, but no gradient flows through the skip path, only through the layers. Ours
defaults to False, so the skip carries gradient like a residual connection.
stochastic=True samples Gumbel-softmax weights in training mode, with noise drawn from
`generator` (a torch.Generator on the parameters' device; None uses torch's global RNG,
seeded by torch.manual_seed).
"""
from __future__ import annotations

from typing import Iterable

import torch
from torch import nn

import mhc_core
from mhc_core import history as hist
from mhc_core.config import MHCConfig

_DEFAULT = MHCConfig()


def gumbel_like(logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Standard Gumbel noise shaped like `logits`: -log(E), E ~ Exponential(1)."""
    e = torch.empty_like(logits, memory_format=torch.legacy_contiguous_format)
    return -e.exponential_(generator=generator).log()


class HistorySkip(nn.Module):
    """One layer's skip: `y + g * sum_k w_k states[k]`, w from `logits` (mhc_core.skip_weights).

    Args: history K; constraint 'softmax' | 'simplex' | 'identity'; temperature > 0;
    epsilon in [0, 1) (identity); init 'identity' | 'uniform'; gate (learn g = sigmoid(gate));
    prune_threshold (weights below it are dropped); stochastic (Gumbel-softmax in training);
    mixing 'vector' ([K] logits) | 'matrix' ([K, K], Sinkhorn, last row mixes).
    """

    def __init__(self, history: int = 4, *, constraint: str = "softmax", temperature: float = 1.0,
                 epsilon: float = 0.1, init: str = "identity", gate: bool = False,
                 prune_threshold: float = 0.0, stochastic: bool = False, mixing: str = "vector",
                 iters: int = _DEFAULT.iters, sinkhorn_eps: float = _DEFAULT.sinkhorn_eps,
                 generator: torch.Generator | None = None):
        super().__init__()
        settings = hist.skip_settings(history, constraint=constraint, temperature=temperature, epsilon=epsilon,
                                      mixing=mixing, prune_threshold=prune_threshold, stochastic=stochastic,
                                      gate=gate, iters=iters, sinkhorn_eps=sinkhorn_eps)
        settings.store_on(self)
        if generator is not None and not isinstance(generator, torch.Generator):
            raise TypeError(f"generator must be a torch.Generator (or None for torch's global RNG), got "
                            f"{type(generator).__module__}.{type(generator).__name__}")
        self.generator = generator
        self.logits = nn.Parameter(torch.tensor(  # torch-owned (resizable) memory, not numpy's
            hist.init_skip_logits(self.history, init=init, mixing=self.mixing)))
        self.gate = nn.Parameter(torch.tensor(hist.GATE_INIT, dtype=torch.float32)) if settings.gated else None

    def extra_repr(self) -> str:
        return (f"history={self.history}, mixing={self.mixing!r}, constraint={self.constraint!r}, "
                f"temperature={self.temperature}, gate={self.gate is not None}")

    def weights(self, k: int) -> torch.Tensor:
        """Weights [k] of the k newest states (oldest first); Gumbel-perturbed in training
        when stochastic."""
        hist.check_skip_logits(self.logits, self.history, self.mixing)
        noise = None
        if self.stochastic and self.training:
            if self.generator is not None and torch.compiler.is_compiling():
                raise RuntimeError(
                    "HistorySkip(stochastic=True, generator=...): torch.compile cannot trace a "
                    "torch.Generator; compile with generator=None (noise from torch's global RNG, "
                    "seeded by torch.manual_seed) or run this module uncompiled")
            shape = self.logits[-k:] if self.mixing == "vector" else self.logits[-k:, -k:]
            noise = gumbel_like(shape.detach(), self.generator)
        return mhc_core.skip_weights(self.logits, k, mixing=self.mixing, constraint=self.constraint,
                                     temperature=self.temperature, epsilon=self.epsilon, noise=noise,
                                     iters=self.iters, sinkhorn_eps=self.sinkhorn_eps)

    def forward(self, y: torch.Tensor, states: list[torch.Tensor]) -> torch.Tensor:
        """y [...] (the layer's output) + the mix of `states` (1..K arrays shaped like y)."""
        window = list(states)[-self.history:]
        return mhc_core.history_skip(y, window, self.weights(len(window)), gate=self.gate,
                                     prune_threshold=self.prune_threshold)


def check_layers(layers) -> list:
    """A non-empty list of torch.nn.Modules (TypeError naming the first that is not one)."""
    return hist.layer_list(layers, nn.Module, "torch.nn.Module", (nn.ModuleList, nn.Sequential))


class HistorySequential(nn.Module):
    """Layers `f_l: x -> x` (same shape in and out) with multi-history skip mixing.

    forward(x [...]) -> [...]: window = [x_0]; for each layer l:
    x_{l+1} = skips[l](layers[l](x_l), window); window += [x_{l+1}] (detached when
    detach_history), keeping the last `history` states. Each call starts a new window.
    Arguments as `HistorySkip`, plus detach_history and generator.
    """

    def __init__(self, layers: Iterable[nn.Module], history: int = 4, *, constraint: str = "softmax",
                 temperature: float = 1.0, epsilon: float = 0.1, init: str = "identity", gate: bool = False,
                 prune_threshold: float = 0.0, stochastic: bool = False, detach_history: bool = False,
                 mixing: str = "vector", iters: int = _DEFAULT.iters,
                 sinkhorn_eps: float = _DEFAULT.sinkhorn_eps, generator: torch.Generator | None = None):
        super().__init__()
        self.layers = nn.ModuleList(check_layers(layers))
        self.history = hist.check_history(history)
        self.detach_history = hist.check_flag(detach_history, "detach_history")
        self.skips = nn.ModuleList(
            HistorySkip(history, constraint=constraint, temperature=temperature, epsilon=epsilon, init=init,
                        gate=gate, prune_threshold=prune_threshold, stochastic=stochastic, mixing=mixing,
                        iters=iters, sinkhorn_eps=sinkhorn_eps, generator=generator)
            for _ in self.layers)

    def extra_repr(self) -> str:
        return f"history={self.history}, detach_history={self.detach_history}"

    def _keep(self, x: torch.Tensor) -> torch.Tensor:
        return x.detach() if self.detach_history else x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [...] -> [...] (each layer keeps the shape); TypeError for a non-tensor x."""
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"HistorySequential expects a torch.Tensor, got {type(x).__module__}.{type(x).__name__}")
        return hist.run_history_stack(x, self.layers, self.skips, self.history, self._keep)

    def skip_weights(self) -> list[torch.Tensor]:
        """Each layer's mixing weights (gate and pruning included) in eval mode, [k_l] for
        the k_l = min(K, l + 1) states it sees: the input of `mhc_core.history_composite`."""
        out = []
        for l, skip in enumerate(self.skips):
            with torch.no_grad():
                noise_free = skip.training
                skip.train(False)
                w = skip.weights(min(self.history, l + 1))
                skip.train(noise_free)
                w = hist.applied_weights(w, gate=skip.gate, prune_threshold=skip.prune_threshold)
            out.append(w)
        return out
