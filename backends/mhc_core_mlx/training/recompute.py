"""Memory: keep only each block-of-layers' input stream, recompute the rest in backward (MLX).

Same scheme and block size as `mhc_core_torch.training.recompute` (paper §4.3,
L_r* = sqrt(n L / (n + 2))), built on `mlx.nn.utils.checkpoint`, which wraps
`mx.checkpoint` so that the gradient also flows to the group's parameters: a group of
`block` consecutive layers becomes one checkpointed call that keeps its input and
recomputes its intermediates when the gradient is taken.

MLX is lazy: nothing is computed until `mx.eval`, and the graph it evaluates holds
whatever the transforms keep; `mx.checkpoint` marks the group so its VJP recomputes the
forward instead of holding its intermediates. The recomputation reruns the group's Python
code, so each group starts from the global random key it had in the forward (the same
dropout masks; torch's checkpoint does this with preserve_rng_state) and leaves the key
where the plain run would.
"""
from __future__ import annotations

from types import SimpleNamespace
from typing import Callable, Sequence

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mhc_core import checks
from mhc_core.recompute import block_size, paper_block_size, resolve_block  # noqa: F401 (re-exported)


class _Group(nn.Module):
    """Consecutive layers as one module, so nn.utils.checkpoint sees all their parameters."""

    def __init__(self, layers: Sequence[Callable], record_rows: int):
        super().__init__()
        self.layers = list(layers)
        self.record_rows = record_rows
        self.run = SimpleNamespace(calls=0, key_after=None)  # not an array: no parameter of the group

    def __call__(self, x: mx.array):
        recorded = []
        for layer in self.layers:
            if self.record_rows:
                recorded.append(mx.stop_gradient(x[: self.record_rows]))  # [rows, T, n, C]
            x = layer(x)
        return (x, *recorded)

    def _untrainable(self) -> list[tuple[str, mx.array]]:
        """The frozen arrays of the layers (BatchNorm's running statistics, ...)."""
        trainable = {k for k, _ in tree_flatten(self.trainable_parameters())}
        return [(k, v) for k, v in tree_flatten(self.parameters()) if k not in trainable]

    def seeded(self, x: mx.array, seed: int):
        """self(x) drawing its random numbers (dropout, ...) from the global key `seed`
        stands for; the global key is put back as it was, and the key the group left in
        the forward is kept in `self.run.key_after`.

        mx.checkpoint calls this again in backward to recompute the group: starting from the
        same key draws the same dropout masks as the forward did (so the gradient is the
        plain run's), and putting the key back keeps the recomputation from consuming
        random numbers the rest of the program would have drawn. `seed` is a Python int,
        not an input array: in backward the inputs are tied to the incoming gradient, and
        reading one there would evaluate the whole backward at once. The recomputation also
        leaves the frozen arrays as the forward left them (running statistics update once)."""
        recomputing = self.run.calls > 0
        self.run.calls += 1
        frozen = self._untrainable() if recomputing else []
        before = key_seed(mx.random.state[0])
        mx.random.seed(seed)
        try:
            out = self(x)
            if not recomputing:
                self.run.key_after = mx.random.state[0]
        finally:
            mx.random.seed(before)
            if frozen:
                self.update(tree_unflatten(frozen))
        return out


def key_seed(key) -> int:
    """The seed s with mx.random.seed(s) setting the global key to `key` ([2] uint32, mlx or
    numpy): MLX's key cannot be assigned, but seed(s) sets it to [s >> 32, s & 0xffffffff]."""
    hi, lo = (int(v) for v in np.array(key).astype(np.uint64))
    return (hi << 32) | lo


def _current_seed() -> int | None:
    """key_seed of the global random key, or None where it cannot be read: inside mx.compile
    with `mx.random.state` among the compiled function's inputs, the key is a placeholder."""
    try:
        return key_seed(mx.random.state[0])
    except ValueError:  # "[eval] Attempting to eval an array during function transformations ..."
        return None


def run_layers(layers: Sequence[Callable], x: mx.array, *, block: int = 0,
               record_rows: int = 0) -> tuple[mx.array, list[mx.array]]:
    """Apply `layers` in order to x [..., n, C]; returns (output, recorded inputs).

    block = 0 (or None): plain. block = k >= 1: groups of k layers, each under nn.utils.checkpoint
    (an integer: negative, float or string blocks are a ValueError). Random layers (dropout)
    draw the same numbers in the recomputation as in the forward, except under mx.compile with
    `mx.random.state` as an input, where the key cannot be read while tracing.
    record_rows > 0: also each layer's input for the first rows (stop_gradient), as in torch.
    """
    layers, block = list(layers), block_size(block)
    record_rows = checks.integer(record_rows, "record_rows", minimum=0)
    if not block:
        out = _Group(layers, record_rows)(x)
        return out[0], list(out[1:])
    recorded: list[mx.array] = []
    for start in range(0, len(layers), block):
        group = _Group(layers[start:start + block], record_rows)
        seed = _current_seed()
        if seed is None:  # the recomputation draws afresh (random layers: not the forward's masks)
            out = nn.utils.checkpoint(group)(x)
        else:
            out = nn.utils.checkpoint(group, lambda x, group=group, seed=seed: group.seeded(x, seed))(x)
            mx.random.seed(key_seed(group.run.key_after))  # where the plain run's key would be now
        x, recorded = out[0], recorded + list(out[1:])
    return x, recorded
