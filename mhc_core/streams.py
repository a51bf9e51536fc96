"""Moving between the residual streams and a layer: aggregate, mix back, expand, reduce.

One mHC step around a layer f: [..., C] -> [..., C] (DESIGN §1):

    pre, post, res = coefficients(x)                        x   [..., n, C]
    h   = sum_i pre[i] * x[i]                               h   [..., C]
    y   = f(h)                                              y   [..., C]
    out[o] = sum_i res[i, o] * x[i] + post[o] * y           out [..., n, C]

Mixing runs in float32 (float64 stays float64) and the result is cast back to x's dtype,
so bf16 activations get float32 accumulation, as the fused kernels do.
"""
from __future__ import annotations

from typing import Callable

from . import checks
from .coefficients import coefficients, head_weights
from .config import MHCConfig
from .xp import namespace

_DEFAULT = MHCConfig()


def pre_aggregate(x, pre):
    """h = sum_i pre[..., i] * x[..., i, :] -> [..., C] in x's dtype (paper H_pre x).

    pre [..., n] has x's leading axes exactly (no broadcasting: a [n] pre is a ValueError)."""
    ops = namespace(x, pre)
    checks.pre_aggregate_inputs(ops, x, pre)
    cdt = ops.compute_dtype(x)
    # [..., 1, n] @ [..., n, C]: one pass over x, no [..., n, C] product temporary
    h = ops.matmul(ops.expand_dims(ops.astype(pre, cdt), axis=-2), ops.astype(x, cdt))[..., 0, :]
    return ops.astype(h, x.dtype)


def pre_aggregate_backward(ops, x, pre, dh):
    """(dx [..., n, C], dpre [..., n]) in the compute dtype from dh [..., C] (no checks):
    dx[i] = pre[i] * dh, dpre[i] = <x[i], dh>."""
    cdt = ops.compute_dtype(x)
    pre, x, dh = ops.astype(pre, cdt), ops.astype(x, cdt), ops.astype(dh, cdt)
    dx = ops.batched_outer(pre, dh)  # [..., n] x [..., C]
    dpre = ops.matmul(x, ops.expand_dims(dh, axis=-1))[..., 0]  # [..., n, C] @ [..., C, 1]
    return dx, dpre


def post_residual(x, y, post, res):
    """out[..., o, :] = sum_i res[..., i, o] * x[..., i, :] + post[..., o] * y -> [..., n, C]
    in x's dtype (computed in float32; float64 stays float64).

    y [..., C], post [..., n], res [..., n, n], each with x's leading axes exactly (no
    broadcasting: a res of another token count is a ValueError naming the shape)."""
    ops = namespace(x, y, post, res)
    checks.post_residual_inputs(ops, x, y, post, res)
    cdt = ops.compute_dtype(x)
    # one matmul over n + 1 "streams": [res^T | post] @ [x ; y]  ([..., n, n+1] @ [..., n+1, C]),
    # cheaper than a matmul plus an x-sized outer product and sum (numpy concatenates a
    # block of tokens at a time, so the stacked copy of x stays in the cache: Ops.matmul_concat)
    mix = _mixing_matrix(ops, ops.astype(post, cdt), ops.astype(res, cdt))
    out = ops.matmul_concat(mix, [ops.astype(x, cdt), ops.expand_dims(ops.astype(y, cdt), axis=-2)])
    return ops.astype(out, x.dtype)


def _mixing_matrix(ops, post, res):
    """[res^T | post] [..., n, n+1]: post_residual's out = [res^T | post] @ [x ; y]."""
    return ops.concat([ops.matrix_transpose(res), ops.expand_dims(post, axis=-1)], axis=-1)


def post_residual_backward(ops, x, y, post, res, dout):
    """(dx, dy, dpost, dres) in the compute dtype from dout [..., n, C] (no checks):
    dx[i] = sum_o res[i, o] dout[o], dy = sum_o post[o] dout[o], dpost[o] = <y, dout[o]>,
    dres[i, o] = <x[i], dout[o]>: the forward's product mix @ [x; y] (mix = [res^T | post])
    differentiated, [dx; dy] = mix^T @ dout and [dres^T | dpost] = dout @ [x; y]^T."""
    cdt = ops.compute_dtype(x)
    x, y, post, res, dout = (ops.astype(a, cdt) for a in (x, y, post, res, dout))
    n = checks.shape_of(res)[-1]
    # Every product reads dout; numpy runs them a block of tokens at a time (dout read
    # from memory once). mix is a concatenation, a buffer of its own under torch.compile
    # on the CPU (token-major); res alone is a view of Sinkhorn's stream-major iterates,
    # and reading it made inductor loop over the streams outermost in the x-sized dx
    # pass, re-reading dout once per stream (2.5x slower).
    (dx, dy), d_mix = ops.matmul_concat_backward(_mixing_matrix(ops, post, res), [x, ops.expand_dims(y, axis=-2)],
                                                 dout)
    return dx, dy[..., 0, :], d_mix[..., n], ops.matrix_transpose(d_mix[..., :n])


def expand_streams(x, n: int):
    """`x [..., C]` as n identical streams -> [..., n, C].

    A broadcast view of x, not a copy (no memory per stream): numpy's is read-only;
    torch's refuses in-place ops on the whole view, but a write through one stream
    (`s[..., 0, :] += 1`) writes x, so every stream changes, as does any in-place change
    of x. Copy it (`.copy()`, `.clone()`) to write into one stream. MLX arrays are values:
    an update of one stream changes neither x nor the other streams."""
    ops = namespace(x)
    checks.float_array(ops, x, "x")
    n = checks.streams(n)
    shape = checks.shape_of(x)
    if len(shape) < 1:
        raise ValueError(f"x must have shape [..., C] (rank >= 1), got shape {shape}")
    return ops.broadcast_to(ops.expand_dims(x, axis=-2), shape[:-1] + (n, shape[-1]))


def reduce_streams(x, weights=None):
    """Collapse `x [..., n, C]` to [..., C]: the mean over streams, or `sum_i w[i] x[i]`
    for learned weights `[..., n]` (see `head_weights`)."""
    ops = namespace(x) if weights is None else namespace(x, weights)
    n, _ = checks.stream_input(ops, x)
    if weights is None:
        return ops.mean(x, axis=-2)
    checks.float_array(ops, weights, "weights")  # named here: pre_aggregate would call them "pre"
    checks.expect_trailing(weights, (n,), checks.shape_of(x)[:-2], "weights", "one weight per stream of x")
    checks.same_device("reduce_streams", (x, "x"), (weights, "weights"))
    return pre_aggregate(x, weights)


def residual_step(x, f: Callable):
    """The baseline: `x + f(x)` for a single stream, x [..., 1, C]."""
    ops = namespace(x)
    n, c = checks.stream_input(ops, x)
    checks.layer(f)
    if n != 1:
        raise ValueError(f"the residual variant has one stream: x must be [..., 1, C], got n={n}")
    y = f(x[..., 0, :])
    checks.layer_output(x, y)
    # y must be x's library, floating and exactly [..., C]: a [C] or [1, C] output would
    # otherwise broadcast over the tokens, and an integer one be silently cast
    ops = namespace(x, y)
    checks.float_array(ops, y, "y")
    checks.expect_trailing(y, (c,), checks.shape_of(x)[:-2], "y", "the layer output, one C-vector per token")
    return x + ops.expand_dims(ops.astype(y, x.dtype), axis=-2)


def step(
    x,
    f: Callable,
    phi=None,
    bias=None,
    alpha=None,
    *,
    variant: str = "mhc",
    iters: int = _DEFAULT.iters,
    rms_eps: float = _DEFAULT.rms_eps,
    pre_eps: float = _DEFAULT.pre_eps,
    sinkhorn_eps: float = _DEFAULT.sinkhorn_eps,
    post_scale: float = _DEFAULT.post_scale,
):
    """One residual step of `variant` ('mhc', 'hc', 'residual', 'mhc-lite') around layer f.

    x [..., n, C] -> [..., n, C] in x's dtype; f maps [..., C] -> [..., C]. 'residual'
    ignores the parameters (and needs n = 1). Parameters and errors as `coefficients`.
    """
    if checks.variant(variant) == "residual":
        return residual_step(x, f)
    checks.layer(f)
    pre, post, res = coefficients(
        x, phi, bias, alpha, variant=variant, iters=iters, rms_eps=rms_eps,
        pre_eps=pre_eps, sinkhorn_eps=sinkhorn_eps, post_scale=post_scale,
    )
    y = f(pre_aggregate(x, pre))
    checks.layer_output(x, y)
    return post_residual(x, y, post, res)


def head(x, phi, bias, alpha, *, rms_eps: float = _DEFAULT.rms_eps, eps: float = _DEFAULT.pre_eps):
    """Learned reduction (DeepSeek-V4 `hc_head`): x [..., n, C] -> [..., C] in x's dtype,
    `sum_i w[i] x[i]` with w = `head_weights(x, phi [n*C, n], bias [n], alpha [1])`."""
    return reduce_streams(x, head_weights(x, phi, bias, alpha, rms_eps=rms_eps, eps=eps))
