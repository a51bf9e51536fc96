"""What a torch training checkpoint holds: model, optimizer, RNG (and the caller's meta).

`capture(model, optimizer)` -> (tensors, meta) for `mhc_core.experiments.checkpoints` (safetensors +
JSON, atomic, checksummed); `restore(model, optimizer, tensors, meta)` puts it all back,
so that training continues bit for bit as if never stopped (on a deterministic backend).

    tensors  model/<name>            every state_dict entry (bfloat16 stored as float32,
                                     exact; its dtype is in meta["dtypes"])
             optim/<index>/<key>     optimizer state tensors (Adam: step, exp_avg, exp_avg_sq)
             optim_group/<i>/<key>   tensor-valued param-group settings (a tensor lr, betas
                                     of tensors: .../betas/<j>); meta holds {"tensor": name}
             optim_value/<index>/<key>/<j>  tensors inside list-valued optimizer state (LBFGS)
             rng/torch, rng/cuda/<i>, rng/numpy
             rng/generator/<module>  the torch.Generator a module draws from (a stochastic
                                     HistorySkip's generator); restored where the model has one
    meta     optim_param_groups, optim_scalars, rng_python, rng_numpy, dtypes

Data position, step counters and anything else of the caller's go in the meta it passes.
Single-process (or DDP, saved by rank 0) models; FSDP2-sharded parameters are DTensors:
save those with torch.distributed.checkpoint. A model wrapped in DistributedDataParallel,
nn.DataParallel or torch.compile is captured and restored as the module it wraps, so the
names are the plain model's: a checkpoint of a DDP run restores on one process (where
`wrap_ddp` returns the model itself) or under another world size, and the other way round.
Checkpoints that hold the wrapped names (`module.`, `_orig_mod.` prefixes) still restore.
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn

from mhc_core.experiments.checkpoints import CheckpointStore, Loaded, RunCheckpointer  # noqa: F401 (re-export)

from ..wrappers import unwrapped

_DTYPES = {str(d).removeprefix("torch."): d for d in (torch.float64, torch.float32, torch.bfloat16,
                                                     torch.float16, torch.int64, torch.int32, torch.uint8, torch.bool)}


def _to_numpy(t: torch.Tensor, name: str, dtypes: dict) -> np.ndarray:
    t = t.detach().cpu()
    if hasattr(t, "full_tensor"):
        raise TypeError(f"{name} is a sharded DTensor (FSDP2): use torch.distributed.checkpoint for sharded runs")
    dtypes[name] = str(t.dtype).removeprefix("torch.")
    if t.dtype == torch.bfloat16:
        t = t.float()  # numpy has no bfloat16; the upcast is exact and undone on restore
    return t.numpy().copy()


def _to_torch(a: np.ndarray, name: str, dtypes: dict) -> torch.Tensor:
    t = torch.from_numpy(np.array(a))
    want = dtypes.get(name)
    return t.to(_DTYPES[want]) if want in _DTYPES else t


def _encode(value, name: str, tensors: dict, dtypes: dict):
    """A param-group or optimizer-state value as JSON: tensors (a tensor lr, betas of
    tensors, LBFGS's lists of tensors) go to `tensors` under `name` and leave
    {"tensor": name} in their place."""
    if isinstance(value, torch.Tensor):
        tensors[name] = _to_numpy(value, name, dtypes)
        return {"tensor": name}
    if isinstance(value, (tuple, list)):
        return [_encode(v, f"{name}/{j}", tensors, dtypes) for j, v in enumerate(value)]
    return value


def _decode(value, tensors: dict, dtypes: dict):
    if isinstance(value, dict) and set(value) == {"tensor"}:
        return _to_torch(tensors[value["tensor"]], value["tensor"], dtypes)
    if isinstance(value, list):
        return [_decode(v, tensors, dtypes) for v in value]
    return value


_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_WRAPPER_ROOTS = tuple(p[:-1] for p in _WRAPPER_PREFIXES)


def _plain_names(state: dict, expected: set) -> dict:
    """`state` with the wrapper prefixes of an older checkpoint (captured through DDP or
    torch.compile) removed, when that is what makes its names the model's, one name for
    one name (a state where two names strip to the same one is returned as it is)."""
    if set(state) == expected:
        return state
    stripped = {}
    for k, v in state.items():
        # the wrapped root itself is 'module' / '_orig_mod' (a generator the root holds)
        while k not in expected and (k.startswith(_WRAPPER_PREFIXES) or k in _WRAPPER_ROOTS):
            k = k.split(".", 1)[1] if "." in k else ""
        stripped[k] = v
    return stripped if set(stripped) == expected and len(stripped) == len(state) else state


def _generators(model: nn.Module) -> dict[str, torch.Generator]:
    """Module name -> the torch.Generator a module draws from (a stochastic HistorySkip's
    `generator`): run-time RNG state the state_dict does not hold. A generator shared by
    several modules (HistorySequential gives its skips one) is listed once, under the
    first module's name."""
    found: dict[str, torch.Generator] = {}
    for name, m in model.named_modules():
        g = getattr(m, "generator", None)
        if isinstance(g, torch.Generator) and all(g is not seen for seen in found.values()):
            found[name] = g
    return found


def capture(model: nn.Module, optimizer: torch.optim.Optimizer | None = None, meta: dict | None = None):
    """(tensors: name -> numpy array, meta: JSON-able dict) of model, optimizer and RNG.
    A wrapped model (DDP, nn.DataParallel, torch.compile) is captured under its plain names."""
    model = unwrapped(model)
    dtypes: dict[str, str] = {}
    tensors = {f"model/{k}": _to_numpy(v, f"model/{k}", dtypes) for k, v in model.state_dict().items()}
    out_meta = dict(meta or {})
    if optimizer is not None:
        sd = optimizer.state_dict()
        scalars = {}
        for pid, state in sd["state"].items():
            for key, value in state.items():
                name = f"optim/{pid}/{key}"
                if isinstance(value, torch.Tensor):
                    tensors[name] = _to_numpy(value, name, dtypes)
                else:  # numbers, None, or lists of tensors (LBFGS's history)
                    scalars[name] = _encode(value, f"optim_value/{pid}/{key}", tensors, dtypes)
        out_meta["optim_param_groups"] = [{k: _encode(v, f"optim_group/{i}/{k}", tensors, dtypes) for k, v in group.items()}
                                          for i, group in enumerate(sd["param_groups"])]
        out_meta["optim_scalars"] = scalars
    tensors["rng/torch"] = torch.get_rng_state().numpy().copy()
    for name, generator in _generators(model).items():
        tensors[f"rng/generator/{name}"] = generator.get_state().numpy().copy()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = s.numpy().copy()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    tensors["rng/numpy"] = np.asarray(keys)
    out_meta["rng_numpy"] = [kind, int(pos), int(has_gauss), float(cached)]
    version, internal, gauss = random.getstate()
    out_meta["rng_python"] = [version, list(internal), gauss]
    out_meta["dtypes"] = dtypes
    return tensors, out_meta


def restore(model: nn.Module, optimizer: torch.optim.Optimizer | None, tensors: dict, meta: dict) -> None:
    """Put back what `capture` took (strict: the model's names must match exactly; a wrapped
    model is restored as the module it wraps)."""
    model = unwrapped(model)
    dtypes = meta.get("dtypes", {})
    state = {k[len("model/"):]: _to_torch(v, k, dtypes) for k, v in tensors.items() if k.startswith("model/")}
    model.load_state_dict(_plain_names(state, set(model.state_dict())), strict=True)
    if optimizer is not None:
        if "optim_param_groups" not in meta:
            raise ValueError("this checkpoint holds no optimizer state (captured without an optimizer)")
        opt_state: dict[int, dict] = {}
        for k, v in tensors.items():
            if k.startswith("optim/"):
                _, pid, key = k.split("/", 2)
                opt_state.setdefault(int(pid), {})[key] = _to_torch(v, k, dtypes)
        for k, v in meta.get("optim_scalars", {}).items():
            _, pid, key = k.split("/", 2)
            opt_state.setdefault(int(pid), {})[key] = _decode(v, tensors, dtypes)
        groups = [{k: _decode(v, tensors, dtypes) for k, v in group.items()} for group in meta["optim_param_groups"]]
        optimizer.load_state_dict({"state": dict(sorted(opt_state.items())), "param_groups": groups})
    torch.set_rng_state(torch.from_numpy(np.array(tensors["rng/torch"], dtype=np.uint8)))
    saved = {k[len("rng/generator/"):]: v for k, v in tensors.items() if k.startswith("rng/generator/")}
    generators = _generators(model)
    saved = _plain_names(saved, set(generators))
    for name, generator in generators.items():
        if name in saved:
            generator.set_state(torch.from_numpy(np.array(saved[name], dtype=np.uint8)))
    cuda = sorted(k for k in tensors if k.startswith("rng/cuda/"))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.from_numpy(np.array(tensors[k], dtype=np.uint8)) for k in cuda])
    kind, pos, has_gauss, cached = meta["rng_numpy"]
    np.random.set_state((kind, np.asarray(tensors["rng/numpy"], dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = meta["rng_python"]
    random.setstate((version, tuple(internal), gauss))
