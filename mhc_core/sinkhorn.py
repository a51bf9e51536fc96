"""Sinkhorn-Knopp projection onto (approximately) doubly-stochastic matrices.

DESIGN §1: `M = softmax(logits, -1) + eps; M = M / (M.sum(-2) + eps)`, then `iters - 1`
more rounds of row- then column-normalisation, each denominator `+ eps`. This is exactly
DeepSeek-V4's `DeepseekV4HyperConnection` loop, so its checkpoints run unchanged.

Finite logits always give finite output:
- eps > 0: softmax is max-shifted, so every entry is in [eps, 1 + eps] after the first
  step and every denominator is >= eps.
- eps = 0: plain alternating normalisation, run in the log domain (subtracting
  logsumexp over rows, then columns) so that entries which underflow in linear space
  cannot produce 0/0. In exact arithmetic it is the same iteration.
"""
from __future__ import annotations

from . import checks
from .xp import namespace


def sinkhorn(logits, *, iters: int = 20, eps: float = 1e-6):
    """Project `logits [..., n, n]` to a doubly-stochastic matrix `[..., n, n]`.

    Columns sum to s/(s + eps) exactly after the last step (it ends on columns; s is a
    column's sum before it): 1 - 1.3e-6 or closer for eps=1e-6, 1 up to rounding for eps=0.
    Rows are only approximately normalised after finite rounds. Provable: each row sum is
    in [0, n]. Measured (iters=20, n <= 8, worst found by gradient search): max|row - 1|
    ~1.6e-6 for |logits| <= 1, 0.05 for <= 3, 0.27 (eps=1e-6) / 0.81 (eps=0) for <= 10;
    with eps=0 and |logits| >= 30 a row can be off by 1 or more (2 found for n=8). See
    tests/test_sinkhorn_properties.py.
    """
    ops = namespace(logits)
    _, iters, eps = checks.sinkhorn_inputs(ops, logits, iters, eps)
    if eps == 0.0:
        return _sinkhorn_log(ops, logits, iters)

    m = ops.softmax(logits, axis=-1) + eps
    m = m / (ops.sum(m, axis=-2, keepdims=True) + eps)
    for _ in range(iters - 1):
        m = m / (ops.sum(m, axis=-1, keepdims=True) + eps)
        m = m / (ops.sum(m, axis=-2, keepdims=True) + eps)
    return m


def _sinkhorn_log(ops, logits, iters: int):
    """eps = 0: alternating normalisation in the log domain (rows, then columns)."""
    log_m = logits - ops.logsumexp(logits, axis=-1, keepdims=True)
    log_m = log_m - ops.logsumexp(log_m, axis=-2, keepdims=True)
    for _ in range(iters - 1):
        log_m = log_m - ops.logsumexp(log_m, axis=-1, keepdims=True)
        log_m = log_m - ops.logsumexp(log_m, axis=-2, keepdims=True)
    return ops.exp(log_m)
