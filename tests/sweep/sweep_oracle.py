"""The depth sweep's models written directly in numpy (float64) on mhc_core: the oracle the
torch and MLX TinyLMs are checked against (layout in mhc_core/experiments/lm_config.py:
token LM or patch ViT, transformer or MLP stack, pre / post / no norm)."""
import numpy as np

import mhc_core
from mhc_core.experiments.lm_config import LMConfig, layer_names


def _rmsnorm(h, w, eps):
    return h / np.sqrt(np.mean(h * h, axis=-1, keepdims=True) + eps) * w


def _in_norm(p, prefix, cfg, h):
    return _rmsnorm(h, p[f"{prefix}.layer.norm.weight"], cfg.norm_eps) if cfg.norm == "pre" else h


def _attention(p, prefix, cfg, h):  # h [B, T, C]
    b, t, c = h.shape
    d = c // cfg.n_heads
    qkv = _in_norm(p, prefix, cfg, h) @ p[f"{prefix}.layer.qkv.weight"].T
    q, k, v = (a.reshape(b, t, cfg.n_heads, d).transpose(0, 2, 1, 3) for a in np.split(qkv, 3, axis=-1))
    s = q @ k.transpose(0, 1, 3, 2) / np.sqrt(d)  # [B, H, T, T]
    if cfg.inputs == "tokens":  # causal LM; patches attend both ways
        s = np.where(np.tril(np.ones((t, t), dtype=bool)), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    o = (w / w.sum(-1, keepdims=True)) @ v
    return o.transpose(0, 2, 1, 3).reshape(b, t, c) @ p[f"{prefix}.layer.proj.weight"].T


def _mlp(p, prefix, cfg, h):
    u = _in_norm(p, prefix, cfg, h) @ p[f"{prefix}.layer.fc1.weight"].T
    return (u / (1.0 + np.exp(-u))) @ p[f"{prefix}.layer.fc2.weight"].T


def logits(cfg: LMConfig, params: dict, tokens: np.ndarray) -> np.ndarray:
    """tokens [B, T] (or patches [B, T, P]) -> logits [B, T, V] (or [B, V]) in float64."""
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    t = tokens.shape[1]
    if cfg.inputs == "tokens":
        h = p["embed.weight"][tokens]
    else:
        h = np.asarray(tokens, dtype=np.float64) @ p["patch_embed.weight"].T
    x = mhc_core.expand_streams(h + p["pos_embed.weight"][:t], cfg.n)
    window = [x]  # the history variant's last K states
    for name in layer_names(cfg):
        f = _attention if name.endswith("attn") else _mlp
        if cfg.variant == "history":
            w = mhc_core.skip_weights(p[f"{name}.logits"], len(window), constraint=cfg.history_constraint)
            x = mhc_core.history_skip(f(p, name, cfg, x[..., 0, :])[..., None, :], window, w,
                                      gate=p.get(f"{name}.gate"))
            if cfg.norm == "post":
                x = _rmsnorm(x, p[f"{name}_norm.weight"], cfg.norm_eps)
            window = (window + [x])[-cfg.history:]
            continue
        mix = [p.get(f"{name}.{k}") for k in ("phi", "bias", "alpha")]
        x = mhc_core.step(x, lambda h, f=f, name=name: f(p, name, cfg, h), *mix, variant=cfg.variant,
                          **cfg.mhc_kwargs())
        if cfg.norm == "post":
            x = _rmsnorm(x, p[f"{name}_norm.weight"], cfg.norm_eps)
    h = mhc_core.reduce_streams(x)
    if cfg.inputs == "patches":
        h = h.mean(axis=1)
    if cfg.norm != "none":
        h = _rmsnorm(h, p["head_norm.weight"], cfg.norm_eps)
    return h @ p["head.weight"].T


def eval_loss(cfg: LMConfig, params: dict, inputs: np.ndarray, targets: np.ndarray, mask: np.ndarray) -> float:
    """The held-out loss in float64: mean cross-entropy (class logits) or the mask-weighted
    mean over positions (token logits), as the backends' masked_cross_entropy."""
    z = logits(cfg, params, inputs)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, np.asarray(targets)[..., None].astype(np.int64), -1)[..., 0]
    if nll.ndim == 1:
        return float(nll.mean())
    return float((nll * mask).sum() / (nll.shape[0] * mask.sum()))
