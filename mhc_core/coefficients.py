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
from .sinkhorn import from_token_last, sinkhorn_backward, sinkhorn_forward, to_token_last
from .xp import namespace

_DEFAULT = MHCConfig()


def _projection(ops, x, phi, rms_eps):
    """(z [..., n*n + 2n], compute dtype, saved): z = rmsnorm(flatten(x)) @ phi.

    v_hat = v / sqrt(mean(v**2) + eps) is computed as u / sqrt(mean(u**2) + t**2) with
    u = v / s, t = sqrt(eps) / s, s = max|v| + sqrt(eps): the same value for any s > 0,
    but v**2 never overflows (float32 mean(v**2) is inf once |v| > 1.8e19, which made
    v_hat = 0) and eps / s**2 never does (t <= 1). |u| <= 1, so the sum is exact enough.
    The result does not depend on s, so its gradient through s is zero in exact math:
    `_projection_backward` holds s fixed, and autodiff does too (`ops.stop_gradient`),
    whose terms through s would only cancel, or overflow first (in float32 the derivative
    of v / s forms s**2, inf from |s| ~ 1.8e19: a NaN gradient). The per-token scale
    r = 1 / sqrt(...) is applied after the matmul (paper Eq. 14-15) and sum(u**2) is a
    batched dot, so the only x-sized array made is u.
    saved = (u [..., n*C], phi [n*C, m], s, r [..., 1], z).
    """
    n, c = checks.shape_of(x)[-2:]
    cdt = ops.compute_dtype(x)
    v = ops.reshape(ops.astype(x, cdt), checks.shape_of(x)[:-2] + (n * c,))  # [..., n*C]
    root_eps = math.sqrt(rms_eps)
    top, neg = ops.max(v, axis=-1, keepdims=True), -ops.min(v, axis=-1, keepdims=True)
    # max|v| + sqrt(eps) [..., 1], no |v| temporary; a constant under autodiff (above)
    s = ops.stop_gradient(ops.where(top >= neg, top, neg) + root_eps)
    u, t = v / s, root_eps / s
    sum_sq = ops.matmul(ops.expand_dims(u, axis=-2), ops.expand_dims(u, axis=-1))[..., 0]  # [..., 1]
    r = ops.rsqrt(sum_sq / (n * c) + t * t)  # [..., 1]
    phi = ops.astype(phi, cdt)
    z = ops.matmul(u, phi) * r  # [..., n*n + 2n]
    return z, cdt, (u, phi, s, r, z)


def _projection_backward(ops, saved, dz):
    """(dv [..., n*C], dphi [n*C, m]) from dz [..., m], for `_projection`'s saved values.

    With s fixed, z = (u @ phi) * r and v = s * u. Writing w = r * dz:
    du = w @ phi^T - k * u,  k = r**2 * sum(dz * z) / (n*C)
    (sum((w @ phi^T) * u) = sum(dz * z), so the norm's term needs no pass over x),
    dv = du / s (folded into the per-token factors), dphi = sum over tokens of u w^T.
    u is in [-1, 1], and dz (which grows with |x| through the pre-aggregate) is divided
    by s before anything else multiplies it, so dv overflows only where its value does.
    """
    u, phi, s, r, z = saved
    width = checks.shape_of(u)[-1]
    w = r * dz  # [..., m]
    # dz / s before anything else multiplies it: dz grows with |x| (through the
    # pre-aggregate), and r * dz, dz * z and width * s would overflow float32 from
    # |x| ~ 1e37 (inf / inf: a NaN gradient for the token) though dv stays O(1)
    dz_s = dz / s  # [..., m]
    k_s = r * r * ops.sum(dz_s * z, axis=-1, keepdims=True) / width  # k / s [..., 1]
    m = checks.shape_of(dz)[-1]
    dphi = ops.matmul(ops.matrix_transpose(ops.reshape(u, (-1, width))), ops.reshape(w, (-1, m)))
    return ops.matmul(r * dz_s, ops.matrix_transpose(phi)) - k_s * u, dphi


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
    float32 (float64 when x is float64, or numpy's wider long double) whatever x's dtype, as
    in DeepSeek-V4.

    Raises TypeError for integer arrays or arrays from two libraries, ValueError naming
    the expected shape (phi, bias, alpha against x's n and C) or range (iters an integer
    >= 1, eps and scales finite and >= 0, a known variant).
    """
    ops = namespace(x, phi, bias, alpha)
    n, c, variant, cfg = checks.coefficient_inputs(ops, x, phi, bias, alpha, variant, dict(
        iters=iters, rms_eps=rms_eps, pre_eps=pre_eps, sinkhorn_eps=sinkhorn_eps, post_scale=post_scale))
    iters, rms_eps, pre_eps, sinkhorn_eps, post_scale = (cfg[k] for k in checks.CONFIG_FIELDS)

    return coefficients_forward(ops, x, phi, bias, alpha, variant=variant, iters=iters, rms_eps=rms_eps,
                                pre_eps=pre_eps, sinkhorn_eps=sinkhorn_eps, post_scale=post_scale)[0]


# ---------------------------------------------------------------------------------------
# Forward with saved values, and its explicit backward (no input checks: `coefficients`
# checks; backends' autograd Functions call these directly, so autograd records one node)
# ---------------------------------------------------------------------------------------
def coefficients_forward(ops, x, phi, bias, alpha, *, variant, iters, rms_eps, pre_eps, sinkhorn_eps,
                         post_scale):
    """((pre [..., n], post [..., n], res [..., n, n]), saved) in the compute dtype.

    saved: a tuple of arrays for `coefficients_backward` (the projection's, alpha spread
    over z's columns, the gate activations, and Sinkhorn's iterates for 'mhc').
    """
    n = checks.shape_of(x)[-2]
    z, cdt, proj = _projection(ops, x, phi, rms_eps)
    a = ops.astype(alpha, cdt)
    b = ops.astype(bias, cdt)
    lead = checks.shape_of(z)[:-1]
    scale = _gate_scale(ops, a, n, checks.shape_of(z)[-1])  # [m]

    if variant == "hc":
        th = ops.tanh(z)  # [..., m]
        pre = b[:n] + a[0] * th[..., :n]
        post = b[n : 2 * n] + a[1] * th[..., n : 2 * n]
        res = ops.reshape(b[2 * n :] + a[2] * th[..., 2 * n :], lead + (n, n))
        return (pre, post, res), proj + (scale, th)

    y = z * scale + b  # pre-activations [..., m]
    sig = ops.sigmoid(y[..., : 2 * n])  # [..., 2n]: the pre gates, then the post gates
    sig_pre, sig_post = sig[..., :n], sig[..., n:]
    if variant == "mhc-lite":  # res from the n! permutation matrices, no Sinkhorn; no explicit
        # backward (saved is None): callers differentiate it with their framework's autodiff
        return (sig_pre + pre_eps, post_scale * sig_post, birkhoff_res(y[..., 2 * n :], n)), None
    res, sk = sinkhorn_forward(ops, to_token_last(ops, y[..., 2 * n :], n), iters, sinkhorn_eps)  # [n, n, T]
    res = from_token_last(ops, res, lead)
    return (sig_pre + pre_eps, post_scale * sig_post, res), proj + (scale, sig) + sk


def coefficients_backward(ops, saved, dpre, dpost, dres, *, variant, sinkhorn_eps, post_scale):
    """(dx [..., n, C], dphi, dbias, dalpha) in the compute dtype, from the cotangents of
    `coefficients_forward`'s outputs (dpre, dpost [..., n], dres [..., n, n])."""
    proj, scale = saved[:5], saved[5]
    n = checks.shape_of(dpre)[-1]
    lead = checks.shape_of(dpre)[:-1]
    z = proj[4]
    if variant == "hc":
        th = saved[6]
        dout = ops.concat([dpre, dpost, ops.reshape(dres, lead + (n * n,))], axis=-1)  # [..., m]
        dy = dout  # out = b + a * tanh(z): d/db = 1, d/da = tanh(z), d/dz = a (1 - tanh^2)
        dalpha_terms = dout * th
        dz = dout * scale * (1.0 - th * th)
    else:
        sig, sk = saved[6], saved[7:]  # sig [..., 2n]: pre gates, post gates
        dlogits = sinkhorn_backward(ops, sk, to_token_last(ops, dres, n), sinkhorn_eps)  # [n, n, T]
        dy_res = ops.reshape(from_token_last(ops, dlogits, lead), lead + (n * n,))
        dgates = ops.concat([dpre, post_scale * dpost], axis=-1) * (sig * (1.0 - sig))  # [..., 2n]
        dy = ops.concat([dgates, dy_res], axis=-1)  # d pre-activations [..., m]
        dalpha_terms = dy * z
        dz = dy * scale
    m = checks.shape_of(dy)[-1]
    dbias = ops.sum(ops.reshape(dy, (-1, m)), axis=0)
    per_gate = ops.sum(ops.reshape(dalpha_terms, (-1, m)), axis=0)  # [m]
    dalpha = ops.stack([ops.sum(per_gate[:n]), ops.sum(per_gate[n : 2 * n]), ops.sum(per_gate[2 * n :])])
    dv, dphi = _projection_backward(ops, proj, dz)
    c = checks.shape_of(dv)[-1] // n
    return ops.reshape(dv, lead + (n, c)), dphi, dbias, dalpha


def _gate_scale(ops, a, n: int, m: int):
    """alpha spread over the m columns of z: [a0] * n + [a1] * n + [a2] * (m - 2n) -> [m]
    (the m - 2n res columns: n*n, or n! for 'mhc-lite'). One concat of length-1 slices:
    on numpy a third of the cost of three broadcast_to calls."""
    return ops.concat([a[0:1]] * n + [a[1:2]] * n + [a[2:3]] * (m - 2 * n), axis=0)


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
    checks.same_device("head_weights", (x, "x"), (phi, "phi"), (bias, "bias"), (alpha, "alpha"))
    checks.non_negative(rms_eps, "rms_eps")
    checks.non_negative(eps, "eps")
    z, cdt, _ = _projection(ops, x, phi, rms_eps)
    return ops.sigmoid(z * ops.astype(alpha, cdt) + ops.astype(bias, cdt)) + eps
