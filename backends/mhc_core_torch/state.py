"""Weight interchange: flat dotted names -> arrays, as numpy dicts or safetensors files.

Names are those of `module.state_dict()` (`phi`, `bias`, `alpha`, `layer.weight`,
`layer.0.weight` for a Sequential child, ...): the canonical naming of `mhc_core.portable`,
which the MLX backend translates to and from, so a file written by one backend loads into
the other for the layers both frameworks share. A file written by MLX into a module
holding a layer whose layout differs (e.g. Conv1d) is refused with the layer's name.

- `module_state(m)` -> {name: np.ndarray}; bfloat16 comes out as float32 (numpy has no
  bfloat16; the upcast is exact).
- `save_state(m, path)` writes a safetensors file with the tensors' own dtypes
  (bfloat16 stays bfloat16).
- `load_state(m, state_or_path)` is strict: missing names, unexpected names and shape
  mismatches raise one ValueError listing all of them. Values are cast to the dtype (and
  device) the module's tensor already has, so a float32 file loads into a float64 module.
"""
from __future__ import annotations

import os
from typing import Mapping

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import mhc_core
from mhc_core import portable

from .modules import MHC


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__module__}.{type(module).__name__}")
    return dict(module.state_dict())


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    t = t.detach().cpu()
    return (t.float() if t.dtype == torch.bfloat16 else t).numpy().copy()


def module_state(module: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter and persistent buffer of `module` as numpy, keyed by dotted name."""
    return {name: _to_numpy(t) for name, t in _tensors(module).items()}


def save_state(module: nn.Module, path: str | os.PathLike) -> None:
    """Write every parameter and persistent buffer of `module` to a safetensors file."""
    path = portable.writable_path(path, "save_state")
    if not isinstance(module, nn.Module):
        raise TypeError(f"save_state: module must be a torch.nn.Module, got {type(module).__name__}")
    tensors = {k: t.detach().cpu().contiguous().clone() for k, t in _tensors(module).items()}
    save_file(tensors, path, metadata=portable.metadata("torch", mhc_core.__version__, _variants(module),
                                                        portable.unportable_classes(module.named_modules())))


def _variants(module: nn.Module) -> dict[str, str]:
    """Canonical path -> variant of every MHC step in `module`."""
    return {name: m.variant for name, m in module.named_modules() if isinstance(m, MHC)}


def _read(state) -> dict[str, torch.Tensor]:
    """A state given as a safetensors path or a mapping of numpy arrays / tensors -> tensors."""
    if isinstance(state, (str, os.PathLike)):
        path = portable.checked_path(state, "load_state")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_state: no safetensors file at {path!r}")
        try:
            return load_file(path)
        except Exception as err:  # safetensors' SafetensorError: a truncated or foreign file
            raise portable.unreadable(path, err) from None
    if not isinstance(state, Mapping):
        raise TypeError(f"load_state expects a dict of arrays or a safetensors path, got {type(state).__name__}")
    return {portable.checked_key(k): v.detach() if isinstance(v, torch.Tensor)
            else torch.from_numpy(np.array(portable.numeric(k, v, np))) for k, v in state.items()}


def from_mlx_name(module: nn.Module, name: str) -> str:
    """`name` with the `layers` step MLX's nn.Sequential puts before its children removed
    where `module` has an nn.Sequential ('layer.layers.0.weight' -> 'layer.0.weight');
    canonical names come back unchanged."""
    obj, out = module, []
    for part in name.split("."):
        if isinstance(obj, nn.Sequential) and part == "layers" and "layers" not in obj._modules:
            continue
        out.append(part)
        obj = getattr(obj, "_modules", {}).get(part) if obj is not None else None
    return ".".join(out)


def load_state(module: nn.Module, state) -> nn.Module:
    """Load `state` (dict of numpy arrays / tensors, or a safetensors path) into `module`.

    Strict: the names (canonical, or MLX's own `layer.layers.0.weight` form of files
    written before the canonical naming) must be exactly the module's and every shape must
    match; values are cast to the module tensor's dtype and device. Returns the module.
    """
    current = _tensors(module)
    incoming = _read(state)
    if set(incoming) != set(current):  # MLX's own names: drop its Sequential `layers` step
        translated = {from_mlx_name(module, k): v for k, v in incoming.items()}
        if len(translated) < len(incoming):
            twice = sorted(k for k in incoming if k not in translated)
            raise ValueError(f"load_state: {twice} name the same tensors as their canonical forms "
                             "(MLX's 'layers.N' and 'N' both given); pass one naming")
        incoming = translated
    portable.check_incoming(current, incoming, type(module).__name__, module.named_modules(), state, "mlx")
    portable.check_variants(state, _variants(module), type(module).__name__)
    for k, v in incoming.items():
        if current[k].is_floating_point() and not v.is_floating_point():
            raise TypeError(f"load_state: {k!r} must be floating point, got dtype {v.dtype}")
    with torch.no_grad():
        for k, v in incoming.items():
            current[k].copy_(v)  # state_dict tensors share storage with the module's
    return module
