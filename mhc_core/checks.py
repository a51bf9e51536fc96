"""Input validation shared by every public entry point.

Each check raises ValueError / TypeError with a message that names the argument, what was
expected and what arrived, so a user sees the mistake rather than a shape error deep
inside a matmul.
"""
from __future__ import annotations

import math
import numbers

from .xp import Ops

VARIANTS = ("mhc", "hc", "residual", "mhc-lite")


def shape_of(a) -> tuple[int, ...]:
    return tuple(int(s) for s in a.shape)


def float_array(ops: Ops, a, name: str) -> None:
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"{name} must be a floating-point array, got {type(a).__name__}")
    if not ops.is_floating(a):
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")


def stream_input(ops: Ops, x, name: str = "x") -> tuple[int, int]:
    """x must be [..., n, C] and floating; returns (n, C)."""
    float_array(ops, x, name)
    shape = shape_of(x)
    if len(shape) < 2:
        raise ValueError(f"{name} must have shape [..., n, C] (rank >= 2), got shape {shape}")
    n, c = shape[-2], shape[-1]
    if n < 1 or c < 1:
        raise ValueError(f"{name} must have n >= 1 streams and C >= 1 channels, got shape {shape}")
    return n, c


def expect_shape(a, expected: tuple[int, ...], name: str, what: str) -> None:
    got = shape_of(a)
    if got != tuple(expected):
        raise ValueError(f"{name} must have shape {list(expected)} ({what}), got {list(got)}")


def expect_trailing(a, expected: tuple[int, ...], lead: tuple[int, ...], name: str, what: str) -> None:
    got = shape_of(a)
    if got != tuple(lead) + tuple(expected):
        raise ValueError(
            f"{name} must have shape {list(lead) + list(expected)} ({what}), got {list(got)}"
        )


def res_width(n: int, variant: str = "mhc") -> int:
    """Columns of phi that feed `res`: n*n, or n! for mhc-lite (n <= 6)."""
    if variant == "mhc-lite":
        if n > 6:
            raise ValueError(f"mhc-lite mixes the n! permutation matrices and supports n <= 6 streams, got n={n}")
        return math.factorial(n)
    return n * n


def mixing_params(ops: Ops, phi, bias, alpha, n: int, c: int, n_alpha: int = 3, variant: str = "mhc") -> None:
    """phi [n*C, R + 2n], bias [R + 2n], alpha [3], all floating; R = n*n (n! for mhc-lite)."""
    width = res_width(n, variant) + 2 * n
    r = "n!" if variant == "mhc-lite" else "n*n"
    for a, name in ((phi, "phi"), (bias, "bias"), (alpha, "alpha")):
        float_array(ops, a, name)
    expect_shape(phi, (n * c, width), "phi", f"n*C x ({r} + 2n) for n={n}, C={c}")
    expect_shape(bias, (width,), "bias", f"{r} + 2n for n={n}")
    expect_shape(alpha, (n_alpha,), "alpha", "one scale each for pre, post, res")


def _positive_int(value) -> int | None:
    """int(value) for a Python or numpy integer >= 1 (bools excluded), else None."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1:
        return None
    return int(value)


def iters(value) -> int:
    out = _positive_int(value)
    if out is None:
        raise ValueError(f"iters must be an integer >= 1, got {value!r}")
    return out


def non_negative(value, name: str) -> float:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not value >= 0:
        raise ValueError(f"{name} must be a number >= 0, got {value!r}")
    return float(value)


def streams(value, name: str = "n") -> int:
    out = _positive_int(value)
    if out is None:
        raise ValueError(f"{name} (number of streams) must be an integer >= 1, got {value!r}")
    return out


def channels(value, name: str = "C") -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} (channels per stream) must be an integer >= 1, got {value!r}")
    return value


def layer(f, name: str = "f") -> None:
    if not callable(f):
        raise TypeError(f"{name} must be a callable layer [..., C] -> [..., C], got {type(f).__name__}")


def variant(value: str) -> str:
    if value not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {value!r}")
    return value


def state_matches(expected: dict, got: dict, owner: str) -> None:
    """Strict weight loading: `got` must name exactly `expected`'s entries with the same
    shapes (values are anything with `.shape`). One ValueError lists every problem."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    mismatched = [
        f"{k}: state {list(shape_of(got[k]))} vs module {list(shape_of(expected[k]))}"
        for k in sorted(set(expected) & set(got))
        if shape_of(got[k]) != shape_of(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    if mismatched:
        problems.append(f"shape mismatch {mismatched}")
    if problems:
        raise ValueError(f"load_state into {owner} failed: " + "; ".join(problems))
