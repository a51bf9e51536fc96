"""Weight interchange: flat dotted names -> arrays, as numpy dicts or safetensors files.

Names are the canonical ones of `mhc_core.portable` (torch's `state_dict` naming): those
of `mlx.utils.tree_flatten(module.parameters())` (`phi`, `bias`, `alpha`, `layer.weight`,
`layer.fc1.bias`, list items as `blocks.0.weight`) except that an `nn.Sequential`'s
children are `layer.0.weight`, not MLX's own `layer.layers.0.weight`. `module_state` and
`save_state` write canonical names, `load_state` reads canonical names (or this module's
own MLX names), so a file written by one backend loads into the other for the layers both
frameworks share; a file written by torch into a module holding a layer whose layout
differs (e.g. Conv1d) is refused with the layer's name.

- `module_state(m)` -> {name: np.ndarray}; bfloat16 comes out as float32 (numpy has no
  bfloat16).
- `save_state(m, path)` writes a safetensors file with the arrays' own dtypes
  (bfloat16 stays bfloat16), via `mx.save_safetensors`.

float64: MLX's safetensors I/O has no F64 (mlx 0.32: `mx.save_safetensors` raises
"invalid dtype", `mx.load` "unsupported dtype F64"), so float64 modules and files go
through the `safetensors` package's numpy functions instead. numpy has no bfloat16, so a
single file holding both float64 and bfloat16 tensors is refused with a clear error.
- `load_state(m, state_or_path)` is strict: missing names, unexpected names and shape
  mismatches raise one ValueError listing all of them. Values are cast to the dtype the
  module's parameter has (so a float32 file loads into a float64 module); integer values
  load only into integer parameters of their own dtype (the uint32 weights of
  `nn.quantize`'s layers, so a quantized model round-trips).
"""
from __future__ import annotations

import os
import uuid
from typing import Mapping

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

import mhc_core
from mhc_core import portable

from .modules import MHC


def _native(module: nn.Module) -> dict[str, mx.array]:
    """Every parameter under its MLX name (tree_flatten of `parameters()`)."""
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an mlx.nn.Module, got {type(module).__module__}.{type(module).__name__}")
    return dict(tree_flatten(module.parameters()))


def canonical_name(module: nn.Module, name: str) -> str:
    """The canonical (torch state_dict) name of MLX parameter `name` of `module`: the
    `layers` step inside every nn.Sequential is dropped ('layer.layers.0.weight' ->
    'layer.0.weight')."""
    obj, out = module, []
    for part in name.split("."):
        if isinstance(obj, nn.Sequential) and part == "layers":
            obj = obj.layers
            continue
        out.append(part)
        obj = obj[int(part)] if isinstance(obj, (list, tuple)) else obj[part]
    return ".".join(out)


def _variants(module: nn.Module) -> dict[str, str]:
    """Canonical path -> variant of every MHC step in `module`."""
    return {canonical_name(module, name) if name else "": m.variant
            for name, m in module.named_modules() if isinstance(m, MHC)}


def _params(module: nn.Module) -> dict[str, mx.array]:
    """Every parameter under its canonical name."""
    return {canonical_name(module, k): v for k, v in _native(module).items()}


def _to_numpy(a: mx.array) -> np.ndarray:
    return np.array(a.astype(mx.float32) if a.dtype == mx.bfloat16 else a)


def module_state(module: nn.Module) -> dict[str, np.ndarray]:
    """Every parameter of `module` (trainable or frozen) as numpy, keyed by dotted name."""
    return {name: _to_numpy(value) for name, value in _params(module).items()}


def _safetensors_numpy(why: str):
    try:
        import safetensors.numpy
    except ImportError:
        raise ImportError(f"the 'safetensors' package is needed to {why} (MLX's own safetensors "
                          "I/O has no float64): pip install safetensors") from None
    return safetensors.numpy


def _refuse_mixed_f64_bf16(dtypes, where: str) -> None:
    if mx.bfloat16 in dtypes:
        raise ValueError(f"{where} mixes float64 and bfloat16 tensors: MLX cannot store float64 "
                         "and numpy cannot hold bfloat16; cast the module to one of them first")


def save_state(module: nn.Module, path: str | os.PathLike) -> None:
    """Write every parameter of `module` to a safetensors file at exactly `path` (any name, as
    the torch backend's save_state)."""
    path = portable.writable_path(path, "save_state")
    if not isinstance(module, nn.Module):
        raise TypeError(f"save_state: module must be an mlx.nn.Module, got {type(module).__name__}")
    params = _params(module)
    canonical_modules = [(canonical_name(module, k) if k else k, m) for k, m in module.named_modules()]
    metadata = portable.metadata("mlx", mhc_core.__version__, _variants(module), portable.unportable_classes(canonical_modules))
    dtypes = {v.dtype for v in params.values()}
    if mx.float64 not in dtypes:
        # mx.save_safetensors appends '.safetensors' to a path without it: write a temporary
        # file that has it, in the same folder (a short unique name: the given name may be at
        # the file system's length limit), then move it to the path asked for
        tmp = os.path.join(os.path.dirname(path), f".{uuid.uuid4().hex}.tmp.safetensors")
        try:
            mx.save_safetensors(tmp, params, metadata=metadata)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.remove(tmp)
        return
    _refuse_mixed_f64_bf16(dtypes, f"save_state({type(module).__name__})")
    _safetensors_numpy("save float64 tensors").save_file({k: np.array(v) for k, v in params.items()}, path,
                                                          metadata=metadata)


def _read(state) -> dict[str, mx.array]:
    """A state given as a safetensors path or a mapping of numpy / mlx arrays -> mlx arrays."""
    if isinstance(state, (str, os.PathLike)):
        path = portable.checked_path(state, "load_state")
        if not os.path.isfile(path):
            raise FileNotFoundError(f"load_state: no safetensors file at {path!r}")
        return _load_file(path)
    if not isinstance(state, Mapping):
        raise TypeError(f"load_state expects a dict of arrays or a safetensors path, got {type(state).__name__}")
    return {portable.checked_key(k): v if isinstance(v, mx.array) else _from_numpy(portable.numeric(k, v, np))
            for k, v in state.items()}


def _load_file(path: str) -> dict[str, mx.array]:
    try:
        return dict(mx.load(path, format="safetensors"))
    except (RuntimeError, ValueError) as err:
        if "F64" not in str(err):  # a truncated or foreign file
            raise portable.unreadable(path, err) from None
    try:  # float64 tensors: mx.load cannot read them, numpy can
        arrays = _safetensors_numpy("read float64 tensors").load_file(path)
    except TypeError as err:
        if "bfloat16" in str(err):  # numpy has no bfloat16
            _refuse_mixed_f64_bf16({mx.bfloat16}, f"load_state: {path!r}")
        raise
    except Exception as err:  # safetensors' SafetensorError
        raise portable.unreadable(path, err) from None
    return {k: _from_numpy(v) for k, v in arrays.items()}


def _from_numpy(a: np.ndarray) -> mx.array:
    # mx.array(float64 ndarray) silently rounds to float32 unless the dtype is given.
    return mx.array(a, dtype=mx.float64) if a.dtype == np.float64 else mx.array(a)


def load_state(module: nn.Module, state) -> nn.Module:
    """Load `state` (dict of numpy / mlx arrays, or a safetensors path) into `module`.

    Strict: the names (canonical, or all of them this module's MLX names) must be exactly
    the module's and every shape must match; values are cast to the module parameter's
    dtype. Returns the module.
    """
    native = _native(module)
    to_native = {canonical_name(module, k): k for k in native}
    incoming = _read(state)
    if set(incoming) == set(native):  # MLX's own names (files written before the canonical naming)
        incoming = {canonical_name(module, k): v for k, v in incoming.items()}
    current = {c: native[k] for c, k in to_native.items()}
    portable.check_incoming(current, incoming, type(module).__name__, module.named_modules(), state, "torch")
    portable.check_variants(state, _variants(module), type(module).__name__)
    for k, v in incoming.items():
        # a floating parameter takes any floating dtype (cast below); an integer one (the
        # uint32 weights nn.quantize packs) only its own dtype
        if mx.issubdtype(current[k].dtype, mx.floating):
            if not mx.issubdtype(v.dtype, mx.floating):
                raise TypeError(f"load_state: {k!r} must be floating point, got dtype {v.dtype}")
        elif v.dtype != current[k].dtype:
            raise TypeError(f"load_state: {k!r} must have dtype {current[k].dtype} (as the module's), got dtype {v.dtype}")
    with mx.stream(mx.cpu):  # float64 casts need the CPU (Metal has no float64)
        cast = [(to_native[k], v.astype(current[k].dtype)) for k, v in incoming.items()]
        mx.eval([v for _, v in cast])
    module.update(tree_unflatten(cast))
    return module
