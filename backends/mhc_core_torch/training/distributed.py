"""Data-parallel training of mHC models on torch's own engines: DDP and FSDP2.

No communication code of ours: gradients are averaged by `DistributedDataParallel`'s
reducer, or reduce-scattered by FSDP2 (`torch.distributed.fsdp.fully_shard`). The mHC
modules are ordinary nn.Modules whose parameters (phi, bias, alpha, layer.*) shard and
all-reduce like any others; this file only sets the process group up and wraps.

    # torchrun --nproc_per_node 2 train.py
    info = init_from_env()                     # rank / world from torchrun's variables
    model = TinyLM(cfg)
    model = wrap_ddp(model, info)              # or: apply_fsdp(model) (shards in place)
    x, y = shard_batch((x, y), info)           # this rank's slice of the global batch

With equal slices and a loss that is a mean over rows, the averaged gradient equals the
single-process gradient of the global batch, up to float32 rounding of the sum order.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.distributed as dist
from torch import nn

from mhc_core.experiments.tasks import shard_batch  # noqa: F401 (re-exported: D.shard_batch)

from ..wrappers import unwrapped


@dataclass(frozen=True)
class DistInfo:
    """Where this process sits: rank in [0, world), local_rank on its node, its device."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: str = "cpu"

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    if value is None:
        return default
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name} must be an integer, got {value!r}") from None


def launched_by_torchrun() -> bool:
    """True when torchrun (or another launcher) set WORLD_SIZE > 1 for this process."""
    return _env_int("WORLD_SIZE", 1) > 1


def init_from_env(backend: str | None = None) -> DistInfo:
    """Join the process group torchrun describes (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR/PORT); a plain `python script.py` gets a single-process DistInfo.

    backend: default 'nccl' when CUDA is available, else 'gloo'. On CUDA each process
    uses GPU `LOCAL_RANK`.
    """
    if not launched_by_torchrun():
        return DistInfo(device="cuda" if torch.cuda.is_available() else "cpu")
    cuda = torch.cuda.is_available()
    local = _env_int("LOCAL_RANK", 0)
    if cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend or ("nccl" if cuda else "gloo"))
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local,
                    device=f"cuda:{local}" if cuda else "cpu")


def wrap_ddp(model: nn.Module, info: DistInfo, **ddp_kwargs) -> nn.Module:
    """`DistributedDataParallel(model)` on this rank's device (the model itself when world = 1)."""
    if not info.distributed:
        return model
    from torch.nn.parallel import DistributedDataParallel

    model.to(info.device)
    ids = [info.local_rank] if info.device.startswith("cuda") else None
    return DistributedDataParallel(model, device_ids=ids, **ddp_kwargs)


def shard_units(model: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards as units: every mixing layer (`model.mixing_layers()`, or
    every `mhc_core_torch.MHC` inside the model). Each unit must be *called* in forward: FSDP2
    gathers a unit's parameters in its forward pre-hook."""
    if hasattr(model, "mixing_layers"):
        return list(model.mixing_layers())
    from ..modules import MHC

    return [m for m in model.modules() if isinstance(m, MHC)]


def apply_fsdp(model: nn.Module, info: DistInfo | None = None, *, units: Sequence[nn.Module] | None = None,
               **fsdp_kwargs) -> nn.Module:
    """Shard `model` in place with FSDP2: `fully_shard` each unit, then the root.

    units: default `shard_units(model)` (one per mixing layer: an MHC and the attention /
    MLP it wraps share one all-gather). fsdp_kwargs go to `fully_shard` (mesh,
    reshard_after_forward, mp_policy, ...). Mixed precision: an `mp_policy` with
    param_dtype=bfloat16 would also cast phi / bias / alpha; mhc_core computes the
    coefficients in float32 either way, but keep those weights float32 by passing
    per-unit policies if their precision matters to you. A model in several dtypes (bf16 with
    the mixing weights float32, `cast_except_mixing`) works as it is: FSDP2 flattens one
    dtype per unit, so a unit of mixed dtypes has its children sharded as units first.

    0-d parameters (the history skips' `gate`), which fully_shard cannot shard, stay
    replicated plain tensors (`ignored_params`), and their gradient is averaged over the
    ranks (an all-reduce as it is accumulated), as DDP would. They are plain tensors, not
    DTensors (`torch.nn.utils.clip_grad_norm_` takes the mix). Every rank must then give
    each of them a gradient in the same backwards (the history gate gets one in every
    forward): a rank that leaves one out would not join that all-reduce.

    With a single-process `info` (world 1, a plain `python script.py`) the model itself is
    returned unsharded, as `wrap_ddp` does; without `info`, the current process group is used.
    """
    if info is not None and not info.distributed:
        return model
    from torch.distributed.fsdp import fully_shard

    if info is not None and info.device.startswith("cuda"):
        model.to(info.device)
    scalars = [p for p in model.parameters() if p.dim() == 0]
    if scalars:
        _average_gradients(scalars, _mesh_group(fsdp_kwargs.get("mesh")))
        fsdp_kwargs["ignored_params"] = set(fsdp_kwargs.get("ignored_params") or ()) | set(scalars)
    for unit in shard_units(model) if units is None else units:
        _shard_uniform(unit, fully_shard, fsdp_kwargs)
    _shard_uniform(model, fully_shard, fsdp_kwargs)
    return model


def _managed(module: nn.Module, ignored) -> list[nn.Parameter]:
    """The parameters `fully_shard(module)` would take: those of module and its submodules,
    except submodules already sharded and `ignored`."""
    from torch.distributed.fsdp import FSDPModule

    out, stack = [], [module]
    while stack:
        m = stack.pop()
        out += [p for p in m.parameters(recurse=False) if p not in ignored]
        stack += [c for c in m.children() if not isinstance(c, FSDPModule)]
    return out


def _shard_uniform(module: nn.Module, fully_shard, fsdp_kwargs: dict) -> None:
    """fully_shard(module), after sharding its children first where its parameters are of
    several dtypes (FSDP2 flattens one dtype per unit): a bf16 model whose mixing weights
    `cast_except_mixing` kept float32 gets the wrapped layers as their own units."""
    from torch.distributed.fsdp import FSDPModule

    ignored = fsdp_kwargs.get("ignored_params") or set()
    if len({p.dtype for p in _managed(module, ignored)}) > 1:
        for child in module.children():
            if not isinstance(child, FSDPModule) and _managed(child, ignored):
                _shard_uniform(child, fully_shard, fsdp_kwargs)
        own = sorted({str(p.dtype) for p in _managed(module, ignored)})
        if len(own) > 1:
            raise ValueError(f"apply_fsdp: {type(module).__name__} holds parameters of dtypes {own} itself, and "
                             f"FSDP2 shards one dtype per unit; give its parameters one dtype")
    fully_shard(module, **fsdp_kwargs)


def _mesh_group(mesh):
    """The process group of a 1-D device mesh (None: the default group)."""
    if mesh is None:
        return None
    if mesh.ndim != 1:
        raise ValueError(f"apply_fsdp keeps 0-d parameters replicated and averages their gradients over a "
                         f"1-D mesh; got a {mesh.ndim}-D mesh: shard this model with fully_shard yourself")
    return mesh.get_group()


def _average_gradients(params: Sequence[nn.Parameter], group) -> None:
    """After each accumulation into p.grad, replace it by its mean over the group's ranks
    (averaging is linear, so accumulating several backwards stays the mean of the sums)."""
    world = dist.get_world_size(group)

    def average(p: torch.Tensor) -> None:
        dist.all_reduce(p.grad, group=group)
        p.grad.div_(world)

    for p in params:
        if p.requires_grad:
            p.register_post_accumulate_grad_hook(average)


def full_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """Every parameter as a full (unsharded) CPU tensor, on every rank (FSDP2 DTensors are
    gathered with `full_tensor()`; plain and DDP parameters are copied). Names are those
    of the unwrapped model (DDP's 'module.' and torch.compile's '_orig_mod.' prefixes removed)."""
    inner = unwrapped(model)
    out = {}
    for name, p in inner.named_parameters():
        t = p.full_tensor() if hasattr(p, "full_tensor") else p
        out[name] = t.detach().cpu().clone()
    return out


def mean_over_ranks(value: float, info: DistInfo) -> float:
    """A scalar averaged over ranks with `dist.all_reduce` (for logging a global loss)."""
    if not info.distributed:
        return float(value)
    t = torch.tensor([float(value)], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return float(t.item()) / info.world


def shutdown() -> None:
    """Leave the process group if one was joined, all ranks together.

    The barrier first: a rank that destroys its group while a peer is still in its last
    collective (or writing results) can take gloo's connection threads down mid-use, which
    aborts the peer ("terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def _first_rows(local, rows: int, info: DistInfo):
    """The global batch's first `rows` rows of a per-rank numpy array (every rank holds its
    slice's first rows, all the same count): the ranks' arrays gathered in rank order."""
    import numpy as np

    t = torch.from_numpy(np.ascontiguousarray(local)).to(info.device)
    parts = [torch.empty_like(t) for _ in range(info.world)]
    dist.all_gather(parts, t)
    return torch.cat(parts)[:rows].cpu().numpy()


class _RecordingForward(nn.Module):
    """forward(tokens, rows) = model.forward_recording(tokens, rows), so that DDP (which
    hooks a module's forward) wraps the sweep's recording forward."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, tokens, rows: int = 0):
        return self.model.forward_recording(tokens, rows)


class DataParallelTrainer:
    """`mhc_core_torch.lm.Trainer` under DDP, same `step` contract as the plain one.

    The trainer's forward goes through DistributedDataParallel (its reducer averages the
    gradients in backward); `step` takes the *global* batch, trains on this rank's slice,
    and reports the loss averaged over ranks. Gradient norms, clipping and the non-finite
    check see the averaged gradients, so every rank skips or updates together. Recorded
    metric rows are the global batch's first rows on every rank (the ranks' recorded rows
    gathered in rank order: rank 0's, then the next ranks' when `record_rows` exceeds one
    rank's slice).
    """

    def __init__(self, trainer, info: DistInfo, **ddp_kwargs):
        if not hasattr(trainer, "forward"):
            raise TypeError("the trainer has no `forward` attribute to route through DDP")
        self.inner, self.info = trainer, info
        trainer.forward = wrap_ddp(_RecordingForward(trainer.model), info, **ddp_kwargs)

    def __getattr__(self, name):
        return getattr(self.inner, name)

    def step(self, inputs, targets, mask, **kwargs) -> dict:
        inputs, targets = shard_batch((inputs, targets), self.info)
        out = self.inner.step(inputs, targets, mask, **kwargs)
        rows = kwargs.get("record_rows", 0)
        if self.info.distributed and rows > 0 and "layer_inputs" in out:
            out["layer_inputs"] = [_first_rows(a, rows, self.info) for a in out["layer_inputs"]]
        out["loss"] = mean_over_ranks(out["loss"], self.info)
        out["nonfinite_loss"] = out["loss"] != out["loss"] or abs(out["loss"]) == float("inf")
        return out
