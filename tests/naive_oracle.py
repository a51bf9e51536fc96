"""An independent, naive float64 transcription of DESIGN.md §1 (the README's equations).

Written from the text of the equations, sharing no code with `mhc_core`: plain Python loops
over tokens, streams and matrix entries, numpy only for the C-long vector arithmetic of one
stream (never over the stream axis). Slow on purpose: it is the reference that checks the
spec, so the spec's formulation (matmuls, fused backward passes) can change without moving
the oracle with it.

Shapes follow the spec: `x [..., n, C]`; every function flattens the leading axes to a
token list and restores them.

    v     = flatten(x)                          [n*C]       per token
    v_hat = v / sqrt(mean(v**2) + rms_eps)
    z[j]  = sum_k v_hat[k] * phi[k, j]          [n*n + 2n]  = [pre | post | res]
    mhc:  pre[i]  = sigmoid(a0 z_pre[i]  + b_pre[i]) + pre_eps
          post[i] = post_scale * sigmoid(a1 z_post[i] + b_post[i])
          res     = sinkhorn(a2 z_res + b_res)  row-major [n, n], res[i, o]
    hc:   pre[i]  = b_pre[i]  + a0 tanh(z_pre[i]),  post, res likewise (unconstrained)
    h      = sum_i pre[i] x[i]
    out[o] = sum_i res[i, o] x[i] + post[o] f(h)
"""
from __future__ import annotations

import itertools
import math

import numpy as np


def _sigmoid(t: float) -> float:
    return 1.0 / (1.0 + math.exp(-t)) if t >= 0 else math.exp(t) / (1.0 + math.exp(t))


def _tokens(a, trailing: int):
    """(lead shape, list of per-token float64 arrays) for `a [..., *trailing]`."""
    a = np.asarray(a, dtype=np.float64)
    lead = a.shape[: a.ndim - trailing]
    flat = a.reshape((-1,) + a.shape[a.ndim - trailing:])
    return lead, [flat[t] for t in range(flat.shape[0])]


def _stack(lead, rows, trailing_shape):
    return np.array(rows, dtype=np.float64).reshape(lead + tuple(trailing_shape))


# ---------------------------------------------------------------------------------------
# Sinkhorn-Knopp on one n x n matrix
# ---------------------------------------------------------------------------------------
def sinkhorn_one(logits, iters: int, eps: float) -> list[list[float]]:
    """M = softmax(rows) + eps; M /= (colsum + eps); then iters-1 rounds rows, columns."""
    n = len(logits)
    m = [[0.0] * n for _ in range(n)]
    for i in range(n):
        top = max(float(logits[i][j]) for j in range(n))
        e = [math.exp(float(logits[i][j]) - top) for j in range(n)]
        total = sum(e)
        for j in range(n):
            m[i][j] = e[j] / total + eps

    def columns():
        for j in range(n):
            s = sum(m[i][j] for i in range(n))
            for i in range(n):
                m[i][j] = m[i][j] / (s + eps)

    def rows():
        for i in range(n):
            s = sum(m[i][j] for j in range(n))
            for j in range(n):
                m[i][j] = m[i][j] / (s + eps)

    columns()
    for _ in range(iters - 1):
        rows()
        columns()
    return m


def sinkhorn(logits, *, iters: int = 20, eps: float = 1e-6) -> np.ndarray:
    """logits [..., n, n] -> [..., n, n], one token at a time."""
    lead, toks = _tokens(logits, 2)
    n = np.asarray(logits).shape[-1]
    return _stack(lead, [sinkhorn_one(t, iters, eps) for t in toks], (n, n))


# ---------------------------------------------------------------------------------------
# Coefficients
# ---------------------------------------------------------------------------------------
def _projection_one(xt, phi, rms_eps):
    """z [n*n + 2n] for one token's x [n, C]: rmsnorm(flatten(x)) @ phi, entry by entry."""
    n, c = xt.shape
    v = [float(xt[i, k]) for i in range(n) for k in range(c)]  # row-major flatten
    ms = sum(val * val for val in v) / len(v)
    inv = 1.0 / math.sqrt(ms + rms_eps)
    v_hat = np.array([val * inv for val in v])
    return [float(np.dot(v_hat, phi[:, j])) for j in range(phi.shape[1])]


def birkhoff_one(logits: list, n: int) -> list:
    """mHC-lite's res for one token: sum_p softmax(logits)_p P_p over the n! permutations in
    itertools.permutations order, P_p[i][o] = 1 where o == perm_p[i]."""
    perms = list(itertools.permutations(range(n)))
    assert len(logits) == len(perms), (len(logits), len(perms))
    top = max(logits)
    e = [math.exp(v - top) for v in logits]
    total = sum(e)
    res = [[0.0] * n for _ in range(n)]
    for w, perm in zip(e, perms):
        for i in range(n):
            res[i][perm[i]] += w / total
    return res


def coefficients(x, phi, bias, alpha, *, variant="mhc", iters=20, rms_eps=1e-6, pre_eps=1e-6,
                 sinkhorn_eps=1e-6, post_scale=2.0):
    """(pre [..., n], post [..., n], res [..., n, n]) for x [..., n, C]."""
    lead, toks = _tokens(x, 2)
    n = np.asarray(x).shape[-2]
    phi = np.asarray(phi, dtype=np.float64)
    b = [float(v) for v in np.asarray(bias, dtype=np.float64)]
    a = [float(v) for v in np.asarray(alpha, dtype=np.float64)]
    pres, posts, ress = [], [], []
    for xt in toks:
        z = _projection_one(xt, phi, rms_eps)
        if variant == "hc":
            pre = [b[i] + a[0] * math.tanh(z[i]) for i in range(n)]
            post = [b[n + i] + a[1] * math.tanh(z[n + i]) for i in range(n)]
            res = [[b[2 * n + i * n + o] + a[2] * math.tanh(z[2 * n + i * n + o]) for o in range(n)]
                   for i in range(n)]
        elif variant == "mhc":
            pre = [_sigmoid(a[0] * z[i] + b[i]) + pre_eps for i in range(n)]
            post = [post_scale * _sigmoid(a[1] * z[n + i] + b[n + i]) for i in range(n)]
            logits = [[a[2] * z[2 * n + i * n + o] + b[2 * n + i * n + o] for o in range(n)]
                      for i in range(n)]
            res = sinkhorn_one(logits, iters, sinkhorn_eps)
        elif variant == "mhc-lite":
            pre = [_sigmoid(a[0] * z[i] + b[i]) + pre_eps for i in range(n)]
            post = [post_scale * _sigmoid(a[1] * z[n + i] + b[n + i]) for i in range(n)]
            res = birkhoff_one([a[2] * z[2 * n + p] + b[2 * n + p] for p in range(len(z) - 2 * n)], n)
        else:
            raise ValueError(f"variant must be 'mhc', 'hc' or 'mhc-lite', got {variant!r}")
        pres.append(pre)
        posts.append(post)
        ress.append(res)
    return _stack(lead, pres, (n,)), _stack(lead, posts, (n,)), _stack(lead, ress, (n, n))


# ---------------------------------------------------------------------------------------
# Moving between streams and the layer
# ---------------------------------------------------------------------------------------
def pre_aggregate(x, pre) -> np.ndarray:
    """h = sum_i pre[i] * x[i] -> [..., C]."""
    lead, xs = _tokens(x, 2)
    _, ps = _tokens(pre, 1)
    n, c = np.asarray(x).shape[-2:]
    rows = []
    for xt, pt in zip(xs, ps):
        h = np.zeros(c)
        for i in range(n):
            h = h + pt[i] * xt[i]
        rows.append(h)
    return _stack(lead, rows, (c,))


def post_residual(x, y, post, res) -> np.ndarray:
    """out[o] = sum_i res[i, o] * x[i] + post[o] * y -> [..., n, C]."""
    lead, xs = _tokens(x, 2)
    _, ys = _tokens(y, 1)
    _, ps = _tokens(post, 1)
    _, rs = _tokens(res, 2)
    n, c = np.asarray(x).shape[-2:]
    rows = []
    for xt, yt, pt, rt in zip(xs, ys, ps, rs):
        out = []
        for o in range(n):
            acc = pt[o] * yt
            for i in range(n):
                acc = acc + rt[i, o] * xt[i]
            out.append(acc)
        rows.append(out)
    return _stack(lead, rows, (n, c))


def step(x, f, phi=None, bias=None, alpha=None, *, variant="mhc", **cfg) -> np.ndarray:
    """One step of `variant` around f: [..., C] -> [..., C]; 'residual' is x + f(x), n = 1."""
    x = np.asarray(x, dtype=np.float64)
    if variant == "residual":
        return x + np.asarray(f(x[..., 0, :]))[..., None, :]
    pre, post, res = coefficients(x, phi, bias, alpha, variant=variant, **cfg)
    y = np.asarray(f(pre_aggregate(x, pre)), dtype=np.float64)
    return post_residual(x, y, post, res)


def head(x, phi, bias, alpha, *, rms_eps=1e-6, eps=1e-6) -> np.ndarray:
    """Learned reduction: w[i] = sigmoid(alpha * z[i] + bias[i]) + eps; out = sum_i w[i] x[i]."""
    lead, toks = _tokens(x, 2)
    n, c = np.asarray(x).shape[-2:]
    phi = np.asarray(phi, dtype=np.float64)
    a = float(np.asarray(alpha).reshape(-1)[0])
    b = [float(v) for v in np.asarray(bias, dtype=np.float64)]
    rows = []
    for xt in toks:
        z = _projection_one(xt, phi, rms_eps)
        out = np.zeros(c)
        for i in range(n):
            out = out + (_sigmoid(a * z[i] + b[i]) + eps) * xt[i]
        rows.append(out)
    return _stack(lead, rows, (c,))
