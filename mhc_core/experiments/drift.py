"""How far a fine-tuned model's mixing has moved from the warm start, per mHC step (numpy).

`step_drift(x, out, phi, bias, alpha, variant=..., **cfg)` for one step, from its input
streams `x [..., n, C]`, its output streams `out [..., n, C]` (both recorded on a batch)
and its mixing parameters, all numpy:

- alpha [3]: the scales of the input-dependent part (0.01 at the warm start);
- identity_distance: ||res - I||_F averaged over tokens (res of `mhc_core.coefficients`);
- pre_spread: max - min over streams of pre's token mean (0 while pre is uniform, 1/n);
- stream_similarity: mean cosine similarity between different output streams, averaged
  over tokens (1 while the streams are copies of each other; they start as copies).

The seed's checklist after training: identity distance > 0, alpha leaving 0.01, pre no
longer uniform, stream similarity below 1. Computed in float64 whatever the model ran in.
"""
from __future__ import annotations

import numpy as np

import mhc_core


def stream_similarity(out) -> float:
    """Mean over tokens and over pairs i != j of cos(out[..., i, :], out[..., j, :])."""
    u = np.asarray(out, dtype=np.float64)
    n = u.shape[-2]
    if n < 2:
        return 1.0
    u = u / np.maximum(np.linalg.norm(u, axis=-1, keepdims=True), 1e-30)
    cos = u @ np.swapaxes(u, -1, -2)  # [..., n, n]
    off = cos.reshape(-1, n, n).sum(axis=(1, 2)) - np.trace(cos.reshape(-1, n, n), axis1=1, axis2=2)
    return float(off.mean() / (n * (n - 1)))


def step_drift(x, out, phi, bias, alpha, *, variant: str = "mhc", **cfg) -> dict:
    """Drift of one mixing step: alpha, identity_distance, pre_spread, stream_similarity
    (see the module docstring). x, out [..., n, C]; phi [n*C, n*n+2n]; bias; alpha [3]."""
    x = np.asarray(x, dtype=np.float64)
    pre, _, res = mhc_core.coefficients(x, np.asarray(phi, np.float64), np.asarray(bias, np.float64),
                                        np.asarray(alpha, np.float64), variant=variant, **cfg)
    n = x.shape[-2]
    pre_mean = pre.reshape(-1, n).mean(axis=0)
    return {
        "alpha": [float(a) for a in np.asarray(alpha, dtype=np.float64)],
        "identity_distance": float(np.mean(mhc_core.identity_distance(res))),
        "pre_spread": float(pre_mean.max() - pre_mean.min()),
        "stream_similarity": stream_similarity(out),
    }
