"""Fresh parameters (numpy), shared by every backend so both start from the same numbers.

Defaults (paper §4, seeds): alpha = 0.01, phi = 0 (or N(0, phi_std)), pre = 1/n,
post = 1, res identity-biased. With phi = 0 and equal streams the network computes what
the plain residual network computes (the warm start; DESIGN §1):

- mhc: b_pre = logit(1/n - pre_eps) so pre = 1/n exactly; b_post = 0 so
  post = post_scale * sigmoid(0) = 1 (post_scale = 2); b_res = 0 on the diagonal and
  -res_logit_gap off it, so res = sinkhorn(b_res) has diagonal
  1 / (1 + (n-1) exp(-gap)) (0.948 for n = 4, gap 4): near identity, yet not so
  saturated that the softmax passes no gradient.
- mhc-lite: as mhc, but b_res has n! entries (birkhoff.py): 0 for the identity
  permutation and -(gap + log((n! - 1) / (n - 1))) for the others, so the identity's
  weight is mhc's init diagonal.
- hc: the biases are HC's static part: b_pre = 1/n, b_post = 1, b_res = identity.
"""
from __future__ import annotations

import math

import numpy as np

from . import checks


def _logit(p: float) -> float:
    """log(p / (1 - p)), kept finite at p = 1 (n = 1 with eps = 0): sigmoid(27.6) = 1 - 1e-12."""
    p = min(p, 1.0 - 1e-12)
    return math.log(p) - math.log1p(-p)


def _below_one_over_n(value, n: int, name: str) -> float:
    """A finite number in [0, 1/n) (pre = sigmoid(.) + eps must be able to equal 1/n)."""
    value = checks.non_negative(value, name)
    if not value < 1.0 / n:
        raise ValueError(f"{name} must be in [0, 1/n) = [0, {1.0 / n}), got {value}")
    return value


def _lite_res_bias(n: int, gap: float) -> np.ndarray:
    """mhc-lite res logits [n!]: 0 for the identity (p = 0), -g for the others, with g
    chosen so the identity's weight equals mhc's init diagonal 1 / (1 + (n-1) e^-gap)."""
    count = math.factorial(n)
    b = np.zeros(count)
    if count > 1:
        b[1:] = -(gap + math.log((count - 1) / (n - 1)))
    return b


def param_shapes(n: int, c: int, variant: str = "mhc") -> dict[str, tuple[int, ...]]:
    """Shapes of one step's parameters: {} for 'residual' (which has one stream, n = 1)."""
    n, c = checks.streams(n), checks.channels(c)
    if checks.variant(variant) == "residual":
        if n != 1:
            raise ValueError(f"the residual variant has one stream: n must be 1, got n={n}")
        return {}
    width = checks.res_width(n, variant) + 2 * n
    return {"phi": (n * c, width), "bias": (width,), "alpha": (3,)}


def init_params(
    n: int,
    c: int,
    *,
    variant: str = "mhc",
    alpha: float = 0.01,
    phi_std: float = 0.0,
    res_logit_gap: float = 4.0,
    pre_eps: float = 1e-6,
    seed: int | None = None,
    dtype=np.float32,
) -> dict[str, np.ndarray]:
    """{'phi': [n*C, R + 2n], 'bias': [R + 2n], 'alpha': [3]} as numpy arrays of `dtype`,
    R = n*n (n! for 'mhc-lite', n <= 6); {} for 'residual' (n = 1), which has none.
    `param_shapes` gives the shapes; the values are the warm start (module doc)."""
    dtype = checks.floating_dtype(dtype, "init_params")
    shapes = param_shapes(n, c, variant)
    if not shapes:
        return {}
    n = checks.streams(n)
    alpha, phi_std = checks.real(alpha, "alpha"), checks.non_negative(phi_std, "phi_std")
    res_logit_gap = checks.real(res_logit_gap, "res_logit_gap")
    pre_eps = _below_one_over_n(pre_eps, n, "pre_eps")
    rng = np.random.default_rng(None if seed is None else checks.integer(seed, "seed", minimum=0))
    phi = rng.normal(0.0, phi_std, shapes["phi"]) if phi_std > 0 else np.zeros(shapes["phi"])
    eye = np.eye(n).reshape(-1)
    if variant == "mhc":
        b_pre = np.full(n, _logit(1.0 / n - pre_eps))
        b_post = np.zeros(n)
        b_res = (eye - 1.0) * res_logit_gap
    elif variant == "mhc-lite":
        b_pre = np.full(n, _logit(1.0 / n - pre_eps))
        b_post = np.zeros(n)
        b_res = _lite_res_bias(n, res_logit_gap)
    else:
        b_pre = np.full(n, 1.0 / n)
        b_post = np.ones(n)
        b_res = eye
    bias = np.concatenate([b_pre, b_post, b_res])
    return {
        "phi": phi.astype(dtype),
        "bias": bias.astype(dtype),
        "alpha": np.full(3, alpha, dtype=dtype),
    }


def head_param_shapes(n: int, c: int) -> dict[str, tuple[int, ...]]:
    """Shapes of the learned stream head (DeepSeek-V4 `hc_head`):
    {'phi': (n*C, n), 'bias': (n,), 'alpha': (1,)}."""
    n, c = checks.streams(n), checks.channels(c)
    return {"phi": (n * c, n), "bias": (n,), "alpha": (1,)}


def init_head_params(n: int, c: int, *, eps: float = 1e-6, dtype=np.float32) -> dict[str, np.ndarray]:
    """A head that starts as the mean over streams: phi = 0, weights 1/n exactly."""
    dtype = checks.floating_dtype(dtype, "init_head_params")
    shapes = head_param_shapes(n, c)
    n = checks.streams(n)
    b = _logit(1.0 / n - _below_one_over_n(eps, n, "eps"))
    return {
        "phi": np.zeros(shapes["phi"], dtype=dtype),
        "bias": np.full(shapes["bias"], b, dtype=dtype),
        "alpha": np.ones(shapes["alpha"], dtype=dtype),
    }


def pre_bias(weights, *, pre_eps: float = 1e-6) -> np.ndarray:
    """b_pre [n] (float64) with pre = sigmoid(b_pre) + pre_eps = `weights` while phi = 0.

    Unequal weights summing to 1 keep the warm start exact (equal streams still give
    h = sum_i pre_i x = x) but make the step asymmetric in its streams: the gradient
    reaching stream i carries pre_i, so the streams can learn to differ, which the
    uniform 1/n (every stream the same gradient) never lets them do. weights: n floats
    in (pre_eps, 1 + pre_eps) summing to 1 (to 1e-6).
    """
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim != 1 or w.size < 1:
        raise ValueError(f"pre weights must be a 1-d list of n floats, got shape {w.shape}")
    if not np.all(np.isfinite(w)) or np.any(w <= pre_eps) or np.any(w - pre_eps >= 1.0):
        raise ValueError(f"pre weights must each lie in (pre_eps={pre_eps}, 1 + pre_eps), got {w.tolist()}")
    if abs(w.sum() - 1.0) > 1e-6:
        raise ValueError(f"pre weights must sum to 1 (the warm start needs h = x), got sum {w.sum():.8g}")
    return np.array([_logit(p - pre_eps) for p in w])
