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
    """Project `logits [..., n, n]` to a doubly-stochastic matrix `[..., n, n]` in logits'
    dtype, computed in float32 (float64 stays float64).

    Columns sum to s/(s + eps) exactly after the last step (it ends on columns; s is a
    column's sum before it): 1 up to rounding for eps=0; for eps=1e-6, 1 - 1.3e-6 or closer
    after iters=20 (measured), but not after few rounds: with iters=1 a column that every
    row's softmax puts ~0 in has s = n * eps, so it sums to n / (n + 1) (2/3 for n = 2).
    Rows are only approximately normalised after finite rounds. Provable: each row sum is
    in [0, n]. Measured (iters=20, n <= 8, worst found by gradient search): max|row - 1|
    ~1.6e-6 for |logits| <= 1, 0.05 for <= 3, 0.27 (eps=1e-6) / 0.81 (eps=0) for <= 10;
    with eps=0 and |logits| >= 30 a row can be off by 1 or more (2 found for n=8). See
    tests/test_sinkhorn_properties.py.
    """
    ops = namespace(logits)
    shape, iters, eps = checks.sinkhorn_inputs(ops, logits, iters, eps)
    cdt = ops.compute_dtype(logits)  # float32 for bf16 / fp16 (float64 stays): 2 * iters
    # normalisations in bf16 were off by 1e-2; the Triton kernel also accumulates in float32
    m, _ = sinkhorn_forward(ops, to_token_last(ops, ops.astype(logits, cdt), shape[-1]), iters, eps)
    return ops.astype(from_token_last(ops, m, shape[:-2]), logits.dtype)


# ---------------------------------------------------------------------------------------
# Forward with saved iterates, and its explicit backward. No input checks here: the public
# `sinkhorn` and `coefficients` check; backends' autograd Functions call these directly.
#
# They work on the token-last layout [n, n, T] (T = all leading axes flattened): every
# row / column sum is then a sum over an outer axis of contiguous T-vectors, which numpy
# and torch do about 10x faster than a sum over a tiny trailing axis of [T, n, n].
# Row i, column o of a token's matrix is [i, o, t]; rows sum over axis 1, columns over 0.
# ---------------------------------------------------------------------------------------
def to_token_last(ops, a, n: int):
    """[..., n, n] (or [..., n*n]) -> a contiguous [n, n, T] copy (T: the leading axes)."""
    flat = ops.matrix_transpose(ops.reshape(a, (-1, n * n)))  # [n*n, T] (a view)
    return ops.reshape(ops.reshape(flat, (-1,)), (n, n, -1))  # flattening copies it contiguous


def from_token_last(ops, a, lead: tuple):
    """[n, n, T] -> [*lead, n, n] (lead: the leading axes T was flattened from)."""
    n = checks.shape_of(a)[0]
    return ops.reshape(ops.matrix_transpose(ops.reshape(a, (n * n, -1))), tuple(lead) + (n, n))


_ROWS, _COLS = 1, 0  # token-last axes summed by a row / column normalisation


def sinkhorn_forward(ops, logits, iters: int, eps: float):
    """(m [n, n, T], saved): the projection of token-last `logits [n, n, T]` and what
    `sinkhorn_backward` needs.

    eps > 0: saved = (p, ms): p = softmax over each row; ms [k, n, n, T] the outputs
    m_j = m_{j-1} / (sum(m_{j-1}) + eps) of the k = 2 * iters - 1 normalisations after
    it (columns, rows, ..., columns; m_{-1} = p + eps), ms[-1] = m. One stacked array
    rather than k small ones: an autograd node saves it cheaply, and on numpy the
    normalisations write straight into it (`Ops.iterates` / `Ops.normalize`); there,
    once an iterate m_j equals m_{j-2} bit for bit (checked every 4 steps), the iteration
    has reached a floating-point fixed point: every later iterate repeats m_{j-1}, m_j,
    so the loop stops and saved = (p, ms[:j + 1], k as a 0-d array of m's dtype);
    `sinkhorn_backward` reads the repeats from the last two (the same numbers).
    eps = 0: saved = (ls,), the 2 * iters log-domain iterates (rows, columns, ...,
    columns) stacked [2 * iters, n, n, T]; m = exp(ls[-1]).
    """
    if eps == 0.0:
        return _sinkhorn_log(ops, logits, iters)
    p = ops.softmax(logits, axis=_ROWS)
    m = p + eps
    k = 2 * iters - 1
    buffer = ops.iterates(k, m)  # [k, n, n, T] to write into, or None: collect and stack
    normalize, axes = ops.normalize, _linear_axes(k)
    if buffer is not None:  # numpy: each normalisation writes its slice of the buffer
        for j in range(k):
            m = normalize(m, axes[j], eps, buffer[j])
            if j % 4 == 3 and j + 1 < k and ops.equal_all(m, buffer[j - 2]):
                # A floating-point fixed point: m_j == m_{j-2} (the same axis), so every
                # later iterate repeats m_{j-1}, m_j bit for bit: neither computed nor stored.
                out = m if (k - 1 - j) % 2 == 0 else buffer[j - 1]  # m_{k-1}
                return out, (p, buffer[: j + 1], ops.constant_like(m, k))
        return m, (p, buffer)
    ms = []
    for axis in axes:
        m = normalize(m, axis, eps)
        ms.append(m)
    return m, (p, ops.stack(ms))


def sinkhorn_backward(ops, saved: tuple, dm, eps: float):
    """d logits [n, n, T] from the cotangent dm [n, n, T] of `sinkhorn_forward`'s output.

    A normalisation m' = m / d, d = sum_a(m) + eps, pulls back g' as
    g = (g' - sum_a(g' * m')) / d. The loop carries h = g * m instead of g, which with
    m = m' * d is h = h' - sum_a(h') * m': no division and no denominators to save.
    Through the first normalisation g = h / (p + eps), and the softmax p pulls back g
    as p * (g - sum(g * p)) = q h - p sum(q h) with q = p / (p + eps) (no huge quotient).
    The log-domain step l' = l - logsumexp_a(l) pulls back g' as g' - exp(l') * sum_a(g').
    """
    g = dm
    if eps == 0.0:
        (ls,) = saved
        k = checks.shape_of(ls)[0]
        g = g * ops.exp(ls[k - 1])  # through m = exp(l_k)
        for j in range(k - 1, -1, -1):
            g = g - ops.exp(ls[j]) * ops.sum(g, axis=_log_axis(j), keepdims=True)
        return g
    p, ms = saved[0], saved[1]
    last = checks.shape_of(ms)[0] - 1
    k = int(saved[2]) if len(saved) > 2 else last + 1  # saved[2]: stopped at a fixed point
    h, step = g * ms[_stored(k - 1, last)], ops.normalize_backward  # h: a new array, so
    for j, axis in zip(range(k - 1, -1, -1), _linear_axes(k)[::-1]):  # updated in place
        h = step(h, ms[_stored(j, last)], axis, h)  # h - sum_axis(h) * m_j, into h
    # g = h / (p + eps), pulled back through the softmax as p * (g - sum(g * p)), written
    # with q = p / (p + eps) in [0, 1): h / (p + eps) would overflow float32 where p is tiny
    # and the cotangent huge (|x| ~ 1e37 makes dres ~ 1e37), though the result is finite
    qh = p / (p + eps) * h
    return qh - p * ops.sum(qh, axis=_ROWS, keepdims=True)


def _stored(j: int, last: int) -> int:
    """Where iterate j is stored when only ms[:last + 1] were (a fixed point: iterates
    after `last` repeat ms[last - 1], ms[last] with period 2)."""
    return j if j <= last else last - (j - last) % 2


def _linear_axes(k: int) -> tuple:
    """eps > 0: the axes of the k normalisations after the softmax: columns for even j,
    rows for odd j."""
    return (_COLS, _ROWS) * (k // 2) + (_COLS,) * (k % 2)


def _log_axis(j: int) -> int:
    """eps = 0: log-domain step j normalises rows for even j, columns for odd."""
    return _ROWS if j % 2 == 0 else _COLS


def _sinkhorn_log(ops, logits, iters: int):
    """eps = 0: alternating normalisation in the log domain (rows, then columns)."""
    log_m = logits
    ls = []
    for j in range(2 * iters):
        log_m = log_m - ops.logsumexp(log_m, axis=_log_axis(j), keepdims=True)
        ls.append(log_m)
    return ops.exp(log_m), (ops.stack(ls),)
