"""Stability metrics of the residual mixing (paper §4, Fig. 3 and 7).

For a mixing matrix in the paper's orientation H = res^T (H[o, i] = res[i, o]):
- forward Amax gain  = max over rows of H of the absolute row sum
                     = max_o sum_i |res[i, o]|  (how much a signal can grow going forward)
- backward Amax gain = max over columns of H of the absolute column sum
                     = max_i sum_o |res[i, o]|  (how much a gradient can grow going back)

The composite mapping after layers 1..l is H_l ... H_1, i.e. res_1 @ res_2 @ ... @ res_l
in our layout. Each transformer block counts as two layers (attention, MLP). Gains are per
token, `aggregate` reduces them to max / mean / min over tokens.
"""
from __future__ import annotations

import math
from typing import Iterable

from . import checks
from .xp import namespace


def _square(ops, res, name="res"):
    checks.float_array(ops, res, name)
    shape = checks.shape_of(res)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ValueError(f"{name} must have shape [..., n, n], got {shape}")
    if shape[-1] < 1:
        raise ValueError(f"{name} must have shape [..., n, n] with n >= 1, got {shape}")
    return shape[-1]


def amax_gain(res):
    """(forward, backward) Amax gains of `res [..., n, n]`, each [...] (one per token)."""
    ops = namespace(res)
    _square(ops, res)
    a = ops.abs(ops.astype(res, ops.compute_dtype(res)))  # float32 sums for bf16 / fp16
    forward = ops.max(ops.sum(a, axis=-2), axis=-1)  # column sums of res = row sums of H
    backward = ops.max(ops.sum(a, axis=-1), axis=-1)  # row sums of res = column sums of H
    return forward, backward


def composite(res_layers: Iterable):
    """Running products res_1, res_1 @ res_2, ... (the composite mapping after each layer).

    Products are float32 (float64 once any layer is float64; bf16 / fp16 layers are
    widened, so a product neither overflows at 65504 nor loses digits per layer):
    float32 holds gains up to ~3e38; pass float64 (CPU) to follow an HC product that
    explodes past that.
    """
    out, acc = [], None
    for l, res in enumerate(res_layers):
        ops = namespace(res) if acc is None else namespace(acc, res)  # one library throughout
        n = _square(ops, res, f"res_layers[{l}]")
        if acc is not None and n != checks.shape_of(acc)[-1]:
            raise ValueError(f"res_layers[{l}] must be [..., n, n] with n = {checks.shape_of(acc)[-1]} "
                             f"like the layers before it, got {checks.shape_of(res)}")
        if acc is not None:
            _same_tokens(checks.shape_of(acc)[:-2], checks.shape_of(res)[:-2], l)
            checks.same_device("composite", (acc, f"res_layers[{l - 1}]"), (res, f"res_layers[{l}]"))
        res = ops.astype(res, ops.compute_dtype(res))
        if acc is not None and acc.dtype != res.dtype:  # float32 and float64 layers: both float64
            acc, res = ops.astype(acc, ops.float64), ops.astype(res, ops.float64)
        acc = res if acc is None else ops.matmul(acc, res)
        out.append(acc)
    return out


def _same_tokens(before: tuple, lead: tuple, l: int) -> None:
    """Leading (token) axes of layer l must broadcast against the product so far: equal,
    or 1 where a layer's res is the same for every token."""
    ok = all(a == b or a == 1 or b == 1 for a, b in zip(before[::-1], lead[::-1]))
    if not ok:
        raise ValueError(f"res_layers[{l}] has leading (token) shape {list(lead)}, which does not match the "
                         f"layers before it ({list(before)}): every layer's res must be [..., n, n] over the "
                         "same tokens (a size-1 axis stands for every token)")


def identity_distance(res):
    """Frobenius distance ||res - I|| per token -> [...]."""
    ops = namespace(res)
    n = _square(ops, res)
    res = ops.astype(res, ops.compute_dtype(res))  # float32 sums for bf16 / fp16
    d = res - ops.eye_like(res, n)
    return ops.sqrt(ops.sum(ops.reshape(d * d, checks.shape_of(d)[:-2] + (n * n,)), axis=-1))


def aggregate(values) -> dict[str, float]:
    """{'max', 'mean', 'min'} over every element (token) of `values`, as Python floats."""
    ops = namespace(values)
    if math.prod(checks.shape_of(values)) == 0:  # max / min of nothing is undefined
        raise ValueError(f"values must hold at least one element (one per token) to aggregate, "
                         f"got shape {list(checks.shape_of(values))}")
    flat = ops.reshape(ops.stop_gradient(values), (-1,))  # read as numbers: no autograd history
    return {
        "max": float(ops.max(flat)),
        "mean": float(ops.mean(flat)),
        "min": float(ops.min(flat)),
    }


def gain_report(res_layers: Iterable) -> list[dict]:
    """Per layer: single-layer and composite forward/backward Amax gains aggregated over
    tokens, and the distance of res from identity. `res_layers[l]` is [..., n, n]."""
    res_layers = list(res_layers)  # an iterator would be used up by `composite` first
    report = []
    for l, (res, comp) in enumerate(zip(res_layers, composite(res_layers))):
        fwd, bwd = amax_gain(res)
        cfwd, cbwd = amax_gain(comp)
        report.append({
            "layer": l,
            "forward_gain": aggregate(fwd),
            "backward_gain": aggregate(bwd),
            "composite_forward_gain": aggregate(cfwd),
            "composite_backward_gain": aggregate(cbwd),
            "identity_distance": aggregate(identity_distance(res)),
        })
    return report
