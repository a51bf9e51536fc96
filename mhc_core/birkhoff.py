"""mHC-lite (arXiv 2601.05732): `res` as a convex combination of permutation matrices.

    w   = softmax(alpha2 * z_res + b_res)        [..., n!]
    res = sum_p w_p P_p                          [..., n, n]

By Birkhoff-von Neumann every doubly-stochastic matrix is such a combination, and every
such combination is doubly stochastic: rows and columns sum to sum_p w_p = 1 up to
rounding, with no iteration. n! logits, so n <= 6 (720 columns of phi).

Order of the permutations (fixed, the layout of the n! logits): `itertools.permutations
(range(n))`, lexicographic, so p = 0 is the identity. Permutation perm sends input stream
i to output stream perm[i]: P[i, o] = 1 if o == perm[i], in our `res[i, o]` layout.
"""
from __future__ import annotations

import itertools
import math

import numpy as np

from . import checks
from .xp import namespace

MAX_STREAMS = 6


def check_streams(n) -> int:
    """n for mHC-lite: an integer in [1, 6] (n! logits per token)."""
    n = checks.streams(n)
    if n > MAX_STREAMS:
        raise ValueError(f"mhc-lite mixes the n! permutation matrices and supports n <= {MAX_STREAMS} "
                         f"streams ({MAX_STREAMS}! = {math.factorial(MAX_STREAMS)} logits), got n={n}")
    return n


# Caches are plain dicts, not functools.lru_cache: birkhoff_res runs while torch.compile
# traces a model, and dynamo warns on every lru_cache-wrapped call it meets.
_PERMUTATIONS: dict[int, tuple[tuple[int, ...], ...]] = {}
_FLAT: dict[int, np.ndarray] = {}


def permutation_list(n: int) -> tuple[tuple[int, ...], ...]:
    """The n! permutations of range(n) in the order of the logits (identity first)."""
    n = check_streams(n)
    if n not in _PERMUTATIONS:
        _PERMUTATIONS[n] = tuple(itertools.permutations(range(n)))
    return _PERMUTATIONS[n]


def permutation_matrices(n: int) -> np.ndarray:
    """float64 [n!, n, n]: P[p, i, o] = 1 where o == permutation_list(n)[p][i] (a fresh copy)."""
    return _flat_permutations(n).reshape(-1, n, n).copy()


def _flat_permutations(n: int) -> np.ndarray:
    """permutation_matrices(n) as [n!, n*n], cached (private: never modified in place)."""
    if n not in _FLAT:
        perms = permutation_list(n)
        out = np.zeros((len(perms), n, n))
        for p, perm in enumerate(perms):
            out[p, np.arange(n), perm] = 1.0
        _FLAT[n] = out.reshape(len(perms), n * n)
    return _FLAT[n]


def birkhoff_res(logits, n: int):
    """res [..., n, n] = sum_p softmax(logits)_p P_p for `logits [..., n!]`.

    Float32 out (float64 stays float64); exactly doubly stochastic up to rounding for any
    finite logits (the softmax is max-shifted).
    """
    ops = namespace(logits)
    checks.float_array(ops, logits, "logits")
    n = check_streams(n)
    shape = checks.shape_of(logits)
    count = checks.factorial(n)
    if len(shape) < 1 or shape[-1] != count:
        raise ValueError(f"logits must have shape [..., n!] = [..., {count}] for n={n}, got {list(shape)}")
    cdt = ops.compute_dtype(logits)
    w = ops.softmax(ops.astype(logits, cdt), axis=-1)  # [..., n!]
    perms = ops.constant_like(w, _flat_permutations(n))  # [n!, n*n]
    return ops.reshape(ops.matmul(w, perms), shape[:-1] + (n, n))
