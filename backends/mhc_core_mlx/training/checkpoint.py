"""What an MLX training checkpoint holds: model, optimizer, RNG (and the caller's meta).

Same file format and contract as `mhc_core_torch.training.checkpoint` (see `mhc_core.experiments.checkpoints`):

    tensors  model/<name>            every parameter (tree_flatten names; bfloat16 stored as
                                     float32, exact; dtype in meta["dtypes"])
             optim/<name>            the optimizer's state tree (Adam: step, learning_rate,
                                     <param>.m, <param>.v)
             state/<name>            model.state's arrays that are not parameters (a seeded
                                     HistorySkip's Gumbel key); restored where the model has them
             rng/mlx                 the global PRNG key [2] uint32
    meta     dtypes

MLX's global key cannot be assigned, but `mx.random.seed(s)` sets it to
[s >> 32, s & 0xffffffff], so restoring seeds with the saved key's two words.
"""
from __future__ import annotations

import mlx.core as mx
import mlx.nn as nn
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

from mhc_core.experiments.checkpoints import CheckpointStore, Loaded, RunCheckpointer  # noqa: F401 (re-export)

from .recompute import key_seed

_DTYPES = {"float32": mx.float32, "bfloat16": mx.bfloat16, "float16": mx.float16, "float64": mx.float64,
           "int32": mx.int32, "int64": mx.int64, "uint32": mx.uint32, "uint64": mx.uint64, "bool": mx.bool_}


def _name(dtype) -> str:
    return str(dtype).removeprefix("mlx.core.")


def _to_numpy(a: mx.array, name: str, dtypes: dict) -> np.ndarray:
    dtypes[name] = _name(a.dtype)
    if a.dtype == mx.bfloat16:
        a = a.astype(mx.float32)  # numpy has no bfloat16; exact, undone on restore
    with mx.stream(mx.cpu):
        return np.array(a)


def _to_mlx(a: np.ndarray, name: str, dtypes: dict) -> mx.array:
    # mx.array(float64 ndarray) rounds to float32 unless the dtype is given
    out = mx.array(a, dtype=mx.float64) if a.dtype == np.float64 else mx.array(a)
    want = _DTYPES.get(dtypes.get(name, ""))
    return out.astype(want) if want is not None and out.dtype != want else out


def _private_arrays(model: nn.Module) -> dict[str, mx.array]:
    """The arrays of model.state that are not parameters (members named with '_', such as
    a seeded HistorySkip's Gumbel key): run-time state a resume must put back."""
    params = {k for k, _ in tree_flatten(model.parameters())}
    return {k: v for k, v in tree_flatten(model.state) if isinstance(v, mx.array) and k not in params}


def capture(model: nn.Module, optimizer=None, meta: dict | None = None):
    """(tensors: name -> numpy array, meta: JSON-able dict) of model, optimizer and RNG."""
    dtypes: dict[str, str] = {}
    mx.eval(model.parameters(), optimizer.state if optimizer is not None else [])
    tensors = {f"model/{k}": _to_numpy(v, f"model/{k}", dtypes) for k, v in tree_flatten(model.parameters())}
    tensors.update({f"state/{k}": _to_numpy(v, f"state/{k}", dtypes) for k, v in _private_arrays(model).items()})
    if optimizer is not None:
        tensors.update({f"optim/{k}": _to_numpy(v, f"optim/{k}", dtypes) for k, v in tree_flatten(optimizer.state)})
    tensors["rng/mlx"] = np.array(mx.random.state[0]).astype(np.uint32)
    return tensors, {**(meta or {}), "dtypes": dtypes, "has_optimizer": optimizer is not None}


def restore(model: nn.Module, optimizer, tensors: dict, meta: dict) -> None:
    """Put back what `capture` took (strict: the model's parameter names must match)."""
    dtypes = meta.get("dtypes", {})
    params = [(k[len("model/"):], _to_mlx(v, k, dtypes)) for k, v in tensors.items() if k.startswith("model/")]
    current = dict(tree_flatten(model.parameters()))
    have = set(current)
    got = {k for k, _ in params}
    if have != got:
        raise ValueError(f"checkpoint does not match the model: missing {sorted(have - got)}, "
                         f"unexpected {sorted(got - have)}")
    shapes = [f"{k}: checkpoint {list(v.shape)} vs model {list(current[k].shape)}"
              for k, v in params if tuple(v.shape) != tuple(current[k].shape)]
    if shapes:
        raise ValueError(f"checkpoint does not match the model: shape mismatch {shapes}")
    model.update(tree_unflatten(params))
    private = _private_arrays(model)
    saved = [(k[len("state/"):], _to_mlx(v, k, dtypes)) for k, v in tensors.items()
             if k.startswith("state/") and k[len("state/"):] in private]
    if saved:
        model.update(tree_unflatten(saved), strict=False)
    if optimizer is not None:
        if not meta.get("has_optimizer"):
            raise ValueError("this checkpoint holds no optimizer state (captured without an optimizer)")
        state = [(k[len("optim/"):], _to_mlx(v, k, dtypes)) for k, v in tensors.items() if k.startswith("optim/")]
        optimizer.state = tree_unflatten(state)
    mx.random.seed(key_seed(np.asarray(tensors["rng/mlx"], dtype=np.uint32)))
    mx.eval(model.parameters(), optimizer.state if optimizer is not None else [])
