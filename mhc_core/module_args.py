"""The constructor arguments of every backend's `MHC` and `StreamHead`, checked once.

A backend's module calls `mhc_args(...)` / `head_args(...)` and only registers the returned
initial values as parameters of its framework, so a bad argument gets the same error on
every backend. Numbers arrive as Python, numpy or 0-d array scalars and leave as Python
int / float (`checks.integer`, `checks.non_negative`).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from . import checks
from .config import MHCConfig
from .init import init_head_params, init_params, param_shapes
from .xp import namespace


@dataclass(frozen=True)
class MHCArgs:
    """Validated `MHC` arguments. params: name -> initial value (numpy or a framework's
    array, shape already checked) for each entry of `param_shapes(n, dim, variant)`."""

    n: int
    dim: int
    variant: str
    impl: str
    config: MHCConfig
    params: dict[str, Any]


@dataclass(frozen=True)
class HeadArgs:
    """Validated `StreamHead` arguments and its initial parameters phi [n*C, n], bias [n],
    alpha [1] (numpy float32)."""

    n: int
    dim: int
    rms_eps: float
    eps: float
    params: dict[str, np.ndarray]


def _shape(value) -> tuple[int, ...]:
    """The shape of an array of any library (or of a nested list, as numpy reads it)."""
    shape = value.shape if hasattr(value, "shape") else np.shape(value)
    return tuple(int(s) for s in shape)


def _initial_params(init, shapes: dict, n: int, dim: int, variant: str, pre_eps: float, seed, owner: str) -> dict:
    """`init` checked against `shapes` (exactly those names, those shapes), or fresh
    `init_params` when init is None."""
    if init is None:
        return init_params(n, dim, variant=variant, pre_eps=pre_eps, seed=seed) if shapes else {}
    if not isinstance(init, dict):
        raise TypeError(f"{owner} init must be a dict {{'phi', 'bias', 'alpha'}} of arrays, got {type(init).__name__}")
    missing, unexpected = set(shapes) - set(init), set(init) - set(shapes)
    if missing or unexpected:
        raise ValueError(
            f"{owner} init for variant {variant!r} must hold exactly {sorted(shapes)}; "
            f"missing {sorted(missing)}, unexpected {sorted(unexpected)}"
        )
    for name, shape in shapes.items():  # phi [n*C, n*n+2n], bias [n*n+2n], alpha [3]
        if not _real_numbers(init[name]):
            raise TypeError(f"{owner} init[{name!r}] must be an array of real numbers, got dtype "
                            f"{_dtype(init[name])}")
        got = _shape(init[name])
        if got != shape:
            raise ValueError(f"{owner} init[{name!r}] must have shape {list(shape)}, got {list(got)}")
        if not _all_finite(init[name]):
            raise ValueError(f"{owner} init[{name!r}] must hold finite numbers (a NaN or inf parameter "
                             "makes every output NaN), got a non-finite entry")
    return dict(init)


def _dtype(value):
    return value.dtype if hasattr(value, "dtype") else np.asarray(value).dtype


def _real_numbers(value) -> bool:
    """Whether an array of any library (or a nested list) holds real floating or integer
    numbers (bools, complex numbers and strings are not parameter values)."""
    if hasattr(value, "shape") and not isinstance(value, np.ndarray):
        return namespace(value).is_real_number(value)
    return np.asarray(value).dtype.kind in "iuf"


def _all_finite(value) -> bool:
    """Whether every entry of an array of any library (or a nested list) is finite."""
    if hasattr(value, "shape") and not isinstance(value, np.ndarray):
        ops = namespace(value)
        return bool(ops.xp.all(ops.isfinite(value)))
    return bool(np.all(np.isfinite(np.asarray(value, dtype=np.float64))))


def mhc_args(layer: Callable, n, dim, *, variant: str, iters, rms_eps, pre_eps, sinkhorn_eps, post_scale,
             init: dict | None, seed, impl: str, impls: tuple[str, ...], owner: str = "MHC",
             framework: str | None = None) -> MHCArgs:
    """Check the arguments of `MHC(layer, n, dim, ...)` (see the backends' docstrings).

    impls: the `impl` names this backend offers. 'residual' needs n = 1 and has no kernel,
    so with it only 'auto' and 'reference' are accepted. framework: the backend's module
    library ('torch' | 'mlx'); a layer of the other one is refused.
    """
    checks.layer(layer, "layer", framework)
    n, dim, variant = checks.streams(n), checks.channels(dim, "dim"), checks.variant(variant)
    if impl not in impls:
        raise ValueError(f"impl must be one of {impls}, got {impl!r}")
    if variant == "residual" and n != 1:
        raise ValueError(f"the residual variant has one stream: n must be 1, got n={n}")
    if variant == "residual" and impl not in ("auto", "reference"):
        raise ValueError(f"impl={impl!r} has no kernel for variant 'residual' (a plain x + f(x))")
    if variant == "mhc-lite" and impl not in ("auto", "reference"):
        raise ValueError(f"impl={impl!r} has no kernel for variant 'mhc-lite' (a convex combination of "
                         "permutation matrices); use impl='reference' or 'auto'")
    config = MHCConfig(iters=iters, rms_eps=rms_eps, pre_eps=pre_eps, sinkhorn_eps=sinkhorn_eps,
                       post_scale=post_scale)
    shapes = param_shapes(n, dim, variant)
    params = _initial_params(init, shapes, n, dim, variant, config.pre_eps, seed, owner)
    return MHCArgs(n=n, dim=dim, variant=variant, impl=impl, config=config, params=params)


def head_args(n, dim, *, rms_eps, eps) -> HeadArgs:
    """Check the arguments of `StreamHead(n, dim, rms_eps=, eps=)`; the initial parameters
    make the head the mean over streams (`init_head_params`)."""
    n, dim = checks.streams(n), checks.channels(dim, "dim")
    rms_eps, eps = checks.non_negative(rms_eps, "rms_eps"), checks.non_negative(eps, "eps")
    return HeadArgs(n=n, dim=dim, rms_eps=rms_eps, eps=eps, params=init_head_params(n, dim, eps=eps))
