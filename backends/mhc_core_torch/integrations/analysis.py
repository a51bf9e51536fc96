"""What the mHC steps of a model do on a batch: per-step coefficients, mixing, stream similarity.

    stats = analyze(model, lambda: model(input_ids))        # any model holding MHC modules

For each MHC step (in execution order) on that batch:
- alpha [3] (pre, post, res scales; 0.01 at the warm start),
- pre / post: mean over tokens per stream [n], and min / max over tokens and streams,
- res_mean [n, n]: res averaged over tokens (our layout res[i, o], from i to o; the
  paper's H_res is its transpose),
- identity distance ||res - I||_F, forward / backward Amax gain (max over tokens), and
  the composite gains of the product of all res so far (mhc_core.metrics),
- stream_cos [n, n]: cosine similarity between the output streams, mean over tokens
  (all ones while the streams are still copies of each other).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Callable

import numpy as np
import torch
from torch import nn

import mhc_core

from ..modules import MHC


@dataclass
class StepStats:
    name: str
    alpha: list[float]
    pre_mean: list[float]
    pre_range: tuple[float, float]
    post_mean: list[float]
    post_range: tuple[float, float]
    res_mean: list[list[float]]
    identity_distance: float
    forward_gain: float
    backward_gain: float
    composite_forward_gain: float = float("nan")
    composite_backward_gain: float = float("nan")
    stream_cos: list[list[float]] | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def _stream_cos(out: torch.Tensor) -> np.ndarray:
    """Mean over tokens of the n x n cosine similarity between streams of out [..., n, C]."""
    u = out.detach().double()
    u = u / u.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    cos = u @ u.transpose(-1, -2)  # [..., n, n]
    return cos.reshape(-1, *cos.shape[-2:]).mean(0).cpu().numpy()


def steps_of(model: nn.Module) -> list[tuple[str, MHC]]:
    """(name, MHC) for every mixing step with coefficients (variant 'residual' has none)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MHC) and m.variant != "residual"]


@torch.no_grad()
def analyze(model: nn.Module, run: Callable[[], object]) -> list[StepStats]:
    """Run `run()` (a forward of `model` on a batch) with hooks on every MHC step; return
    one StepStats per step call, in execution order."""
    steps = steps_of(model)
    if not steps:
        raise ValueError(f"{type(model).__name__} has no MHC steps with coefficients (variant 'residual' has none)")
    records: list[tuple[str, MHC, torch.Tensor, torch.Tensor]] = []
    hooks = [m.register_forward_hook(lambda mod, args, out, name=name: records.append((name, mod, args[0], out)))
             for name, m in steps]
    try:
        was_training = model.training
        model.eval()
        run()
        model.train(was_training)
    finally:
        for h in hooks:
            h.remove()

    stats, res_all = [], []
    for name, mod, x, out in records:
        pre, post, res = (t.double() for t in mod.coefficients(x.float()))
        n = mod.n
        res_all.append(res.cpu().numpy())
        fwd, bwd = mhc_core.amax_gain(res)
        stats.append(StepStats(
            name=name,
            alpha=mod.alpha.detach().double().tolist(),
            pre_mean=pre.reshape(-1, n).mean(0).tolist(), pre_range=(float(pre.min()), float(pre.max())),
            post_mean=post.reshape(-1, n).mean(0).tolist(), post_range=(float(post.min()), float(post.max())),
            res_mean=res.reshape(-1, n, n).mean(0).tolist(),
            identity_distance=float(mhc_core.identity_distance(res).mean()),
            forward_gain=float(fwd.max()), backward_gain=float(bwd.max()),
            stream_cos=_stream_cos(out).tolist(),
        ))
    for s, comp in zip(stats, mhc_core.composite(res_all)):  # float64: follows an HC product far
        cf, cb = mhc_core.amax_gain(comp)
        s.composite_forward_gain, s.composite_backward_gain = float(cf.max()), float(cb.max())
    return stats


def stats_from_res(names: list[str], res_mean: list) -> list[StepStats]:
    """StepStats from token-averaged res matrices alone (a sweep run's res_final.json):
    no alpha / pre / post / similarity (NaN), gains and identity distance of the mean res."""
    out = []
    for name, r in zip(names, res_mean):
        r = np.asarray(r, dtype=np.float64)
        n = r.shape[-1]
        fwd, bwd = mhc_core.amax_gain(r)
        nan = [float("nan")] * n
        out.append(StepStats(name=name, alpha=[float("nan")] * 3, pre_mean=nan, pre_range=(np.nan, np.nan),
                             post_mean=nan, post_range=(np.nan, np.nan), res_mean=r.tolist(),
                             identity_distance=float(mhc_core.identity_distance(r)),
                             forward_gain=float(fwd), backward_gain=float(bwd)))
    return out
