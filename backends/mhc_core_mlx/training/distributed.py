"""Data-parallel training of mHC models on MLX's own engine: `mx.distributed`.

No communication code of ours: gradients are averaged by `mlx.nn.average_gradients`
(all_sum over the group), which works on any parameter tree, the mHC modules' phi / bias /
alpha included. Backends (mlx 0.32): 'ring' (TCP sockets, any machine: what runs on a
Linux CPU box and over Thunderbolt/Ethernet between Macs), 'mpi' (needs an MPI library;
none installed here), 'jaccl' (RDMA over Thunderbolt 5, macOS) and 'nccl' (CUDA builds).

    # mlx.launch -n 2 --backend ring train.py        (2 processes on this machine)
    info = init_from_env()
    loss, grads = nn.value_and_grad(model, loss_fn)(*shard_batch(batch, info))
    grads = average(grads, info)
    optimizer.update(model, grads)
"""
from __future__ import annotations

from dataclasses import dataclass

import mlx.core as mx
from mlx.nn.utils import average_gradients

from mhc_core.experiments.tasks import shard_batch  # noqa: F401 (re-exported: D.shard_batch)


@dataclass(frozen=True)
class DistInfo:
    """This process's rank in [0, world) and the group (None when running alone)."""

    rank: int = 0
    world: int = 1
    group: object = None

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def init_from_env(backend: str = "any") -> DistInfo:
    """Join the group `mlx.launch` set up (its environment variables); a plain
    `python script.py` gets a single-process DistInfo (MLX's singleton group)."""
    group = mx.distributed.init(backend=backend)
    return DistInfo(rank=group.rank(), world=group.size(), group=group if group.size() > 1 else None)


def average(grads, info: DistInfo):
    """The gradient tree averaged over ranks (`mlx.nn.average_gradients`); as is alone."""
    return average_gradients(grads, group=info.group) if info.distributed else grads


def mean_over_ranks(value: float, info: DistInfo) -> float:
    """A scalar averaged over ranks (for logging a global loss)."""
    if not info.distributed:
        return float(value)
    total = mx.distributed.all_sum(mx.array([float(value)], dtype=mx.float32), group=info.group)
    return float(total.item()) / info.world
