"""Multi-history skip mixing as mlx.nn modules (the math is mhc_core/history.py).

    x_{l+1} = layers[l](x_l) + g_l * sum_{k in window} a_{l,k} x_k     window: last K states

The torch backend's `HistorySequential` / `HistorySkip` with the same arguments and the
same parameter names (`layers.{i}.*`, `skips.{i}.logits` float32 [K] or [K, K],
`skips.{i}.gate` float32 [] when gated), so one state loads into both.
detach_history=True stores the window through `mx.stop_gradient`. stochastic=True draws
Gumbel noise in training mode from `seed` (a key split at every draw: reproducible; the
key is part of `model.state`, so `mx.compile(f, inputs=model.state, outputs=model.state)`
draws the eager sequence), or from MLX's global RNG (`mx.random.seed`) when seed is None.
"""
from __future__ import annotations

from typing import Iterable

import mlx.core as mx
import mlx.nn as nn

import mhc_core
from mhc_core import checks, history as hist
from mhc_core.config import MHCConfig

_DEFAULT = MHCConfig()


def check_seed(seed) -> int:
    """The Gumbel seed: an integer >= 0 (Python, numpy or a 0-d array)."""
    return checks.integer(seed, "seed", minimum=0, meaning="of the Gumbel noise")


class HistorySkip(nn.Module):
    """One layer's skip: `y + g * sum_k w_k states[k]` (see mhc_core_torch.HistorySkip)."""

    def __init__(self, history: int = 4, *, constraint: str = "softmax", temperature: float = 1.0,
                 epsilon: float = 0.1, init: str = "identity", gate: bool = False,
                 prune_threshold: float = 0.0, stochastic: bool = False, mixing: str = "vector",
                 iters: int = _DEFAULT.iters, sinkhorn_eps: float = _DEFAULT.sinkhorn_eps,
                 seed: int | None = None):
        super().__init__()
        settings = hist.skip_settings(history, constraint=constraint, temperature=temperature, epsilon=epsilon,
                                      mixing=mixing, prune_threshold=prune_threshold, stochastic=stochastic,
                                      gate=gate, iters=iters, sinkhorn_eps=sinkhorn_eps)
        settings.store_on(self)
        if seed is not None:
            # an array member named with "_": in `model.state` (so mx.compile with the model's
            # state as inputs / outputs carries each split key to the next call), not among
            # the parameters (no gradient, not saved with the weights)
            self._gumbel_key = mx.random.key(check_seed(seed))
        self.logits = mx.array(hist.init_skip_logits(self.history, init=init, mixing=self.mixing))
        if self.gated:
            self.gate = mx.array(hist.GATE_INIT, dtype=mx.float32)

    def _extra_repr(self) -> str:
        return (f"history={self.history}, mixing={self.mixing!r}, constraint={self.constraint!r}, "
                f"temperature={self.temperature}, gate={self.gated}")

    def weights(self, k: int) -> mx.array:
        """Weights [k] of the k newest states (oldest first); Gumbel-perturbed in training
        when stochastic."""
        hist.check_skip_logits(self.logits, self.history, self.mixing)
        noise = None
        if self.stochastic and self.training:
            shape = (k,) if self.mixing == "vector" else (k, k)
            noise = mx.random.gumbel(shape, key=self._next_key())
        return mhc_core.skip_weights(self.logits, k, mixing=self.mixing, constraint=self.constraint,
                                     temperature=self.temperature, epsilon=self.epsilon, noise=noise,
                                     iters=self.iters, sinkhorn_eps=self.sinkhorn_eps)

    def _next_key(self):
        """A fresh key split off this skip's chain; None draws from MLX's global RNG."""
        if "_gumbel_key" not in self:
            return None
        self._gumbel_key, sub = mx.random.split(self._gumbel_key)
        return sub

    def __call__(self, y: mx.array, states: list) -> mx.array:
        window = list(states)[-self.history:]
        return mhc_core.history_skip(y, window, self.weights(len(window)),
                                     gate=self.gate if self.gated else None,
                                     prune_threshold=self.prune_threshold)


def check_layers(layers) -> list:
    """A non-empty list of mlx.nn.Modules (TypeError naming the first that is not one)."""
    return hist.layer_list(layers, nn.Module, "mlx.nn.Module", ())


class HistorySequential(nn.Module):
    """Layers with multi-history skip mixing (see mhc_core_torch.HistorySequential).

    __call__(x [...]) -> [...]: window = [x_0]; x_{l+1} = skips[l](layers[l](x_l), window);
    window += [x_{l+1}] (stop_gradient when detach_history), the last `history` kept.
    `seed` seeds each skip's Gumbel key (seed + l for layer l).
    """

    def __init__(self, layers: Iterable, history: int = 4, *, constraint: str = "softmax",
                 temperature: float = 1.0, epsilon: float = 0.1, init: str = "identity", gate: bool = False,
                 prune_threshold: float = 0.0, stochastic: bool = False, detach_history: bool = False,
                 mixing: str = "vector", iters: int = _DEFAULT.iters,
                 sinkhorn_eps: float = _DEFAULT.sinkhorn_eps, seed: int | None = None):
        super().__init__()
        self.layers = check_layers(layers)
        self.history = hist.check_history(history)
        self.detach_history = hist.check_flag(detach_history, "detach_history")
        seed = None if seed is None else check_seed(seed)
        self.skips = [
            HistorySkip(history, constraint=constraint, temperature=temperature, epsilon=epsilon, init=init,
                        gate=gate, prune_threshold=prune_threshold, stochastic=stochastic, mixing=mixing,
                        iters=iters, sinkhorn_eps=sinkhorn_eps, seed=None if seed is None else seed + l)
            for l in range(len(self.layers))]

    def _extra_repr(self) -> str:
        return f"history={self.history}, detach_history={self.detach_history}"

    def _keep(self, x: mx.array) -> mx.array:
        return mx.stop_gradient(x) if self.detach_history else x

    def __call__(self, x: mx.array) -> mx.array:
        """x [...] -> [...] (each layer keeps the shape); TypeError for a non-mlx x."""
        if not isinstance(x, mx.array):
            raise TypeError(f"HistorySequential expects an mlx.core.array, got {type(x).__module__}.{type(x).__name__}")
        return hist.run_history_stack(x, self.layers, self.skips, self.history, self._keep)

    def skip_weights(self) -> list:
        """Each layer's noise-free weights (gate and pruning included), [min(K, l + 1)]:
        the input of `mhc_core.history_composite`."""
        out = []
        for l, skip in enumerate(self.skips):
            was = skip.training
            skip.train(False)
            w = mx.stop_gradient(skip.weights(min(self.history, l + 1)))
            skip.train(was)
            out.append(hist.applied_weights(w, gate=skip.gate if skip.gated else None,
                                                        prune_threshold=skip.prune_threshold))
        return out
