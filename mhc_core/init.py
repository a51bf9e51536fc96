"""Fresh parameters (numpy), shared by every backend so both start from the same numbers.

Defaults (paper §4, seeds): alpha = 0.01, phi = 0 (or N(0, phi_std)), pre = 1/n,
post = 1, res identity-biased. With phi = 0 and equal streams the network computes what
the plain residual network computes (the warm start; DESIGN §1):

- mhc: b_pre = logit(1/n - pre_eps) so pre = 1/n exactly; b_post = 0 so
  post = post_scale * sigmoid(0) = 1 (post_scale = 2); b_res = 0 on the diagonal and
  -res_logit_gap off it, so res = sinkhorn(b_res) has diagonal
  1 / (1 + (n-1) exp(-gap)) (0.948 for n = 4, gap 4): near identity, yet not so
  saturated that the softmax passes no gradient.
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


def param_shapes(n: int, c: int, variant: str = "mhc") -> dict[str, tuple[int, ...]]:
    """Shapes of one step's parameters: {} for 'residual'."""
    checks.streams(n)
    checks.channels(c)
    if checks.variant(variant) == "residual":
        return {}
    width = n * n + 2 * n
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
    """{'phi': [n*C, n*n+2n], 'bias': [n*n+2n], 'alpha': [3]} as numpy arrays."""
    shapes = param_shapes(n, c, variant)
    if not shapes:
        return {}
    if not 0.0 <= pre_eps < 1.0 / n:
        raise ValueError(f"pre_eps must be in [0, 1/n) = [0, {1.0 / n}), got {pre_eps}")
    rng = np.random.default_rng(seed)
    phi = rng.normal(0.0, phi_std, shapes["phi"]) if phi_std > 0 else np.zeros(shapes["phi"])
    eye = np.eye(n).reshape(-1)
    if variant == "mhc":
        b_pre = np.full(n, _logit(1.0 / n - pre_eps))
        b_post = np.zeros(n)
        b_res = (eye - 1.0) * res_logit_gap
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
    """Shapes of the learned stream head (DeepSeek-V4 `hc_head`)."""
    checks.streams(n)
    checks.channels(c)
    return {"phi": (n * c, n), "bias": (n,), "alpha": (1,)}


def init_head_params(n: int, c: int, *, eps: float = 1e-6, dtype=np.float32) -> dict[str, np.ndarray]:
    """A head that starts as the mean over streams: phi = 0, weights 1/n exactly."""
    if not 0.0 <= eps < 1.0 / n:
        raise ValueError(f"eps must be in [0, 1/n) = [0, {1.0 / n}), got {eps}")
    b = _logit(1.0 / n - eps)
    shapes = head_param_shapes(n, c)
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
