"""The depth sweep's LM written directly in numpy (float64) on mhc_core: the oracle the
torch and MLX TinyLMs are checked against (layout in mhc_core/experiments/lm_config.py)."""
import numpy as np

import mhc_core
from mhc_core.experiments.lm_config import LMConfig, layer_names


def _rmsnorm(h, w, eps):
    return h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + eps) * w


def _attention(p, prefix, cfg, h):  # h [B, T, C]
    b, t, c = h.shape
    d = c // cfg.n_heads
    qkv = _rmsnorm(h, p[f"{prefix}.layer.norm.weight"], cfg.norm_eps) @ p[f"{prefix}.layer.qkv.weight"].T
    q, k, v = (a.reshape(b, t, cfg.n_heads, d).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)  # [B, H, T, T]
    s = np.where(np.tril(np.ones((t, t), dtype=bool)), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    o = (w / w.sum(-1, keepdims=True)) @ v
    return o.transpose(0, 2, 1, 3).reshape(b, t, c) @ p[f"{prefix}.layer.proj.weight"].T


def _mlp(p, prefix, cfg, h):
    u = _rmsnorm(h, p[f"{prefix}.layer.norm.weight"], cfg.norm_eps) @ p[f"{prefix}.layer.fc1.weight"].T
    return (u / (1.0 + np.exp(-u))) @ p[f"{prefix}.layer.fc2.weight"].T


def logits(cfg: LMConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
    """tokens [B, T] -> logits [B, T, V] in float64."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    t = tokens.shape[1]
    x = mhc_core.expand_streams(p["embed.weight"][tokens] + p["pos_embed.weight"][:t], cfg.n)
    window = [x]  # the history variant's last K states
    for l, name in enumerate(layer_names(cfg)):
        if cfg.variant == "history":
            f = _attention if name.endswith("attn") else _mlp
            w = mhc_core.skip_weights(p[f"{name}.logits"], len(window), constraint=cfg.history_constraint)
            x = mhc_core.history_skip(f(p, name, cfg, x[..., 0, :])[..., None, :], window, w,
                                      gate=p.get(f"{name}.gate"))
            window = (window + [x])[-cfg.history:]
            continue
        f = _attention if name.endswith("attn") else _mlp
        mix = [p.get(f"{name}.{k}") for k in ("phi", "bias", "alpha")]
        x = mhc_core.step(x, lambda h, f=f, name=name: f(p, name, cfg, h), *mix, variant=cfg.variant,
                          **cfg.mhc_kwargs())
    h = _rmsnorm(mhc_core.reduce_streams(x), p["head_norm.weight"], cfg.norm_eps)
    return h @ p["head.weight"].T
