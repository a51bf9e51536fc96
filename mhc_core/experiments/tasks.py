"""Synthetic next-token tasks for the depth sweep (numpy, framework-free).

Each batch is a pure function of (task, seed, batch index), so a stream can be resumed
at any position and torch and MLX runs see the same tokens.

- incrementing: `seq[i] = (start + i) mod vocab`, start uniform per row (seed 002's
  task). Every target is predictable from the current token.
- copy: k random tokens, then the same k again (k = ceil((T + 1) / 2)). Only targets in
  the second copy are predictable (they need attention back k positions), so the loss
  mask keeps those alone.

A batch is `(inputs [B, T] int32, targets [B, T] int32, mask [T] float32)` with
`targets[:, j] = seq[:, j + 1]`; the loss is the mask-weighted mean cross-entropy.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .. import checks

TASKS = ("incrementing", "copy")


def _sequences(task: str, rng: np.random.Generator, batch: int, length: int, vocab: int) -> np.ndarray:
    if task == "incrementing":
        start = rng.integers(0, vocab, size=(batch, 1))
        return (start + np.arange(length)[None, :]) % vocab
    if task == "copy":
        k = (length + 1) // 2
        half = rng.integers(0, vocab, size=(batch, k))
        return np.concatenate([half, half], axis=1)[:, :length]
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def loss_mask(task: str, seq_len: int) -> np.ndarray:
    """[T] float32: 1 where the target is predictable, 0 elsewhere."""
    if task == "incrementing":
        return np.ones(seq_len, dtype=np.float32)
    if task == "copy":
        k = (seq_len + 2) // 2  # first index of the second copy in a length-(T+1) sequence
        return (np.arange(1, seq_len + 1) >= k).astype(np.float32)
    raise ValueError(f"task must be one of {TASKS}, got {task!r}")


@dataclass
class TaskStream:
    """Batches of `task`; `next()` returns batch `position` and advances it.

    Resume by constructing with the saved `position` (see `state()`); `batch(i)` reads
    any batch without moving the position.
    """

    task: str = "incrementing"
    vocab: int = 64
    seq_len: int = 32
    batch_size: int = 16
    seed: int = 0
    position: int = 0

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        for name, low in (("vocab", 1), ("seq_len", 1), ("batch_size", 1), ("seed", 0), ("position", 0)):
            # numpy integers are accepted and stored as int (state() is written to JSON)
            setattr(self, name, checks.integer(getattr(self, name), f"TaskStream.{name}", minimum=low))
        if self.task == "copy" and self.seq_len < 2:
            raise ValueError(f"the copy task needs seq_len >= 2, got {self.seq_len}")
        self._mask = loss_mask(self.task, self.seq_len)

    def batch(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, index])
        seq = _sequences(self.task, rng, self.batch_size, self.seq_len + 1, self.vocab)
        seq = seq.astype(np.int32)
        return seq[:, :-1], seq[:, 1:], self._mask

    def next(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        out = self.batch(self.position)
        self.position += 1
        return out

    def state(self) -> dict:
        """Every field (what `TaskStream(**state)` needs to resume here)."""
        return asdict(self)


def shard_batch(arrays, info) -> list:
    """This rank's equal slice (axis 0) of each array (numpy, torch or mlx) of a global batch.

    `info` has `.rank` and `.world` (each backend's `training.distributed.DistInfo`). The
    global batch must split evenly over the ranks (otherwise the averaged gradient would
    weight the ranks' rows unequally): ValueError naming both sizes. `arrays` is a sequence
    (`(x, y)`; `(x,)` for one array) whose arrays all have the same number of rows.
    """
    if hasattr(arrays, "shape"):
        raise TypeError(f"shard_batch takes a sequence of arrays (e.g. (x, y)), got one array of shape "
                        f"{tuple(arrays.shape)}; pass (x,) for a single array")
    world = checks.integer(info.world, "world", meaning="number of ranks")
    rank = checks.integer(info.rank, "rank", minimum=0)
    if rank >= world:
        raise ValueError(f"rank must be in [0, world) = [0, {world}), got {rank}")
    arrays = list(arrays)
    for i, a in enumerate(arrays):
        if not hasattr(a, "shape"):
            raise TypeError(f"every item must be an array (numpy, torch or mlx) with a shape; item {i} is a "
                            f"{type(a).__name__}: convert it first (e.g. np.asarray)")
    if any(len(a.shape) == 0 for a in arrays):
        raise ValueError("every array must have the same number of rows (axis 0), got a 0-d array")
    rows = [a.shape[0] for a in arrays]
    if len(set(rows)) > 1:
        raise ValueError(f"every array must have the same number of rows (axis 0), got {rows}")
    out = []
    for a in arrays:
        b = a.shape[0]
        if b % world:
            raise ValueError(f"global batch of {b} rows cannot be split evenly over {world} ranks; "
                             f"use a batch size divisible by the world size")
        k = b // world
        out.append(a[rank * k:(rank + 1) * k])
    return out
