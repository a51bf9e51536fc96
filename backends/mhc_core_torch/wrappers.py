"""The model inside torch's wrappers: torch.compile's (`_orig_mod`) and the data-parallel
ones (`.module`). Their state_dict names carry the wrapper's prefix (`_orig_mod.`,
`module.`); what this library records or saves names the plain model's modules."""
from __future__ import annotations

from torch import nn


def compiled_inner(model: nn.Module) -> nn.Module:
    """The model a torch.compile wrapper holds (its `_orig_mod`, however nested), else `model`."""
    while isinstance(getattr(model, "_orig_mod", None), nn.Module):
        model = model._orig_mod
    return model


def unwrapped(model: nn.Module) -> nn.Module:
    """The module inside DistributedDataParallel / nn.DataParallel (`.module`) and
    torch.compile (`._orig_mod`) wrappers, however nested; other models as they are."""
    while True:
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            model = model.module
        elif isinstance(getattr(model, "_orig_mod", None), nn.Module):
            model = compiled_inner(model)
        else:
            return model
