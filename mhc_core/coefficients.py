"""The input-dependent coefficients of one step: pre [..., n], post [..., n], res [..., n, n].

Paper Eq. 7-8 / DeepSeek-V4 `DeepseekV4HyperConnection` (DESIGN §1):

    v     = flatten(x)                                  [..., n*C]   (float32; float64 stays)
    v_hat = v * rsqrt(mean(v**2) + rms_eps)             unweighted RMSNorm
    z     = v_hat @ phi                                 [..., n*n + 2n] = [pre | post | res]
    mhc:  pre  = sigmoid(alpha0 * z_pre  + b_pre) + pre_eps
          post = post_scale * sigmoid(alpha1 * z_post + b_post)
          res  = sinkhorn(alpha2 * z_res + b_res)       row-major [..., n, n], res[i, o]
    mhc-lite: pre, post as mhc; z_res has n! columns and
          res  = sum_p softmax(alpha2 * z_res + b_res)_p P_p     (birkhoff.py)
    hc:   pre  = b_pre  + alpha0 * tanh(z_pre)          (Hyper-Connections, unconstrained;
          post = b_post + alpha1 * tanh(z_post)          the biases are HC's static part)
          res  = b_res  + alpha2 * tanh(z_res)

`res[..., i, o]` is the weight from input stream i to output stream o (DeepSeek's `comb`;
the paper's H_res is its transpose).
"""
from __future__ import annotations

import math

from . import checks
from .birkhoff import birkhoff_res
from .config import MHCConfig
from .sinkhorn import sinkhorn
from .xp import namespace

_DEFAULT = MHCConfig()


def _projection(ops, x, phi, rms_eps):
    """z = rmsnorm(flatten(x)) @ phi in the compute dtype; returns (z, compute dtype).

    v_hat = v / sqrt(mean(v**2) + eps) is computed as u / sqrt(mean(u**2) + t**2) with
    u = v / s, t = sqrt(eps) / s, s = max|v| + sqrt(eps): the same value for any s > 0,
    but v**2 never overflows (float32 mean(v**2) is inf once |v| > 1.8e19, which made
    v_hat = 0) and eps / s**2 never does (t <= 1). |u| <= 1, so the sum is exact enough.
    The result does not depend on s, so its gradient through s is zero in exact math.
    """
    n, c = checks.shape_of(x)[-2:]
    cdt = ops.compute_dtype(x)
    v = ops.reshape(ops.astype(x, cdt), checks.shape_of(x)[:-2] + (n * c,))  # [..., n*C]
    root_eps = math.sqrt(rms_eps)
    s = ops.max(ops.abs(v), axis=-1, keepdims=True) + root_eps  # [..., 1], > 0 unless v = 0, eps = 0
    u, t = v / s, root_eps / s
    v_hat = u * ops.rsqrt(ops.mean(u * u, axis=-1, keepdims=True) + t * t)
    return ops.matmul(v_hat, ops.astype(phi, cdt)), cdt  # [..., n*n + 2n]


def coefficients(
    x,
    phi,
    bias,
    alpha,
    *,
    variant: str = "mhc",
    iters: int = _DEFAULT.iters,
    rms_eps: float = _DEFAULT.rms_eps,
    pre_eps: float = _DEFAULT.pre_eps,
    sinkhorn_eps: float = _DEFAULT.sinkhorn_eps,
    post_scale: float = _DEFAULT.post_scale,
):
    """(pre [..., n], post [..., n], res [..., n, n]) for `x [..., n, C]`.

    phi [n*C, R + 2n], bias [R + 2n], alpha [3]; R = n*n (n! for 'mhc-lite'). Outputs are
    float32 (float64 when x is float64) whatever x's dtype, as in DeepSeek-V4.
    """
    ops = namespace(x, phi, bias, alpha)
    n, c, variant, cfg = checks.coefficient_inputs(ops, x, phi, bias, alpha, variant, dict(
        iters=iters, rms_eps=rms_eps, pre_eps=pre_eps, sinkhorn_eps=sinkhorn_eps, post_scale=post_scale))
    iters, rms_eps, pre_eps, sinkhorn_eps, post_scale = (cfg[k] for k in checks.CONFIG_FIELDS)

    z, cdt = _projection(ops, x, phi, rms_eps)
    a = ops.astype(alpha, cdt)
    b = ops.astype(bias, cdt)
    lead = checks.shape_of(z)[:-1]
    z_pre, z_post, z_res = z[..., :n], z[..., n : 2 * n], z[..., 2 * n :]
    b_pre, b_post, b_res = b[:n], b[n : 2 * n], b[2 * n :]

    if variant == "hc":
        pre = b_pre + a[0] * ops.tanh(z_pre)
        post = b_post + a[1] * ops.tanh(z_post)
        res = ops.reshape(b_res + a[2] * ops.tanh(z_res), lead + (n, n))
        return pre, post, res

    pre = ops.sigmoid(a[0] * z_pre + b_pre) + pre_eps
    post = post_scale * ops.sigmoid(a[1] * z_post + b_post)
    if variant == "mhc-lite":  # res from the n! permutation matrices, no Sinkhorn
        return pre, post, birkhoff_res(a[2] * z_res + b_res, n)
    res = sinkhorn(ops.reshape(a[2] * z_res + b_res, lead + (n, n)), iters=iters, eps=sinkhorn_eps)
    return pre, post, res


def head_weights(x, phi, bias, alpha, *, rms_eps: float = _DEFAULT.rms_eps, eps: float = _DEFAULT.pre_eps):
    """Weights of the learned stream reduction (DeepSeek-V4 `DeepseekV4HyperHead`).

    `w = sigmoid(alpha * (rmsnorm(flatten(x)) @ phi) + bias) + eps` -> [..., n], for
    x [..., n, C], phi [n*C, n], bias [n], alpha [1].
    """
    ops = namespace(x, phi, bias, alpha)
    n, c = checks.stream_input(ops, x)
    for a, name in ((phi, "phi"), (bias, "bias"), (alpha, "alpha")):
        checks.float_array(ops, a, name)
    checks.expect_shape(phi, (n * c, n), "phi", f"n*C x n for n={n}, C={c}")
    checks.expect_shape(bias, (n,), "bias", f"n for n={n}")
    checks.expect_shape(alpha, (1,), "alpha", "one scale")
    rms_eps, eps = checks.non_negative(rms_eps, "rms_eps"), checks.non_negative(eps, "eps")
    z, cdt = _projection(ops, x, phi, rms_eps)
    return ops.sigmoid(z * ops.astype(alpha, cdt) + ops.astype(bias, cdt)) + eps
