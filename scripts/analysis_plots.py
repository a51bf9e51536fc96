"""Plots and ASCII heatmaps for scripts/analyze_model.py (matplotlib, Agg backend).

Orientation: heatmaps show the paper's H_res = res^T: row o, column i is the weight with
which input stream i enters output stream o. (The library's res[i, o] is DeepSeek's layout.)
"""
from __future__ import annotations

import math

import numpy as np

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

SHADES = " .:-=+*#%@"


def ascii_heatmap(h: np.ndarray) -> str:
    """A small matrix as rows of numbers plus a shade bar per cell (darker = larger; '?' for
    NaN / Inf cells, which the shade scale leaves out)."""
    h = np.asarray(h, dtype=float)
    finite = h[np.isfinite(h)]
    lo = min(0.0, float(finite.min())) if finite.size else 0.0
    hi = max(1.0, float(finite.max())) if finite.size else 1.0

    def shade(v: float) -> str:
        if not np.isfinite(v):
            return "?"
        return SHADES[min(len(SHADES) - 1, int((v - lo) / (hi - lo + 1e-12) * len(SHADES)))]

    rows = []
    for o, row in enumerate(h):
        cells = " ".join(f"{v:6.3f}{shade(v)}" for v in row)
        rows.append(f"  to {o}: {cells}")
    return "\n".join(rows)


def divergence(s) -> float:
    """1 - mean cosine similarity over pairs of different streams (0 while they are copies,
    floored at 1e-16 for a log axis; NaN when the similarities are)."""
    c = np.asarray(s.stream_cos)
    n = c.shape[0]
    d = 1.0 - float((c.sum() - np.trace(c)) / max(1, n * n - n))
    return d if math.isnan(d) else max(1e-16, d)


def _gain_scale(ax, values) -> None:
    """Log scale only when gains span orders of magnitude (HC); plain numbers otherwise."""
    finite = [v for v in values if np.isfinite(v) and v > 0]
    if finite and max(finite) > 10:
        ax.set_yscale("log")
    else:
        ax.ticklabel_format(axis="y", useOffset=False, style="plain")


def _xticks(ax, names):
    step = max(1, math.ceil(len(names) / 16))
    ticks = list(range(0, len(names), step))
    ax.set_xticks(ticks)
    ax.set_xticklabels([names[i] for i in ticks], rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("mixing step (attention and MLP of each layer, in order)")


def _full(stats) -> bool:
    return not math.isnan(stats[0].alpha[0])


def plot_overview(stats, names, title, info, path) -> str:
    x = np.arange(len(stats))
    if not _full(stats):
        return _overview_from_metrics(info, title, path)
    n = len(stats[0].pre_mean)
    fig, axes = plt.subplots(2, 3, figsize=(16, 8.5))
    ax = axes[0, 0]
    for k, label in enumerate(("pre", "post", "res")):
        ax.plot(x, [s.alpha[k] for s in stats], marker="o", ms=3, label=f"alpha_{label}")
    ax.axhline(0.01, color="grey", ls="--", lw=1, label="init 0.01")
    ax.set_title("alpha: scale of the input-dependent part")
    ax.legend(fontsize=8)
    for ax, key, rng, init, label in ((axes[0, 1], "pre_mean", "pre_range", 1.0 / n, f"warm start 1/n = {1 / n:.3g}"),
                                      (axes[0, 2], "post_mean", "post_range", 1.0, "warm start 1")):
        values = np.array([getattr(s, key) for s in stats])  # [steps, n]
        for i in range(n):
            ax.plot(x, values[:, i], marker="o", ms=3, label=f"stream {i}")
        lo, hi = zip(*[getattr(s, rng) for s in stats])
        ax.fill_between(x, lo, hi, color="grey", alpha=0.15, label="min..max over tokens")
        ax.axhline(init, color="grey", ls="--", lw=1, label=label)
        ax.set_title(f"{key.split('_')[0]} weights (mean over tokens, per stream)")
        ax.legend(fontsize=7, ncol=2)
    ax = axes[1, 0]
    ax.plot(x, [s.identity_distance for s in stats], marker="o", ms=3, color="C3", label="this model")
    if info.get("init_identity_distance") is not None:
        ax.axhline(info["init_identity_distance"], color="grey", ls="--", lw=1,
                   label="fresh mHC init (res diagonal 0.948, not exactly I)")
        ax.legend(fontsize=7)
    ax.ticklabel_format(axis="y", useOffset=False, style="plain")
    ax.set_title("distance of res from identity ||res - I||_F (mean over tokens)")
    ax = axes[1, 1]
    for key, style in (("forward_gain", "-"), ("backward_gain", "--"),
                       ("composite_forward_gain", "-"), ("composite_backward_gain", "--")):
        ax.plot(x, [getattr(s, key) for s in stats], ls=style, marker="o", ms=3, label=key.replace("_", " "))
    _gain_scale(ax, [getattr(s, k) for s in stats for k in ("composite_forward_gain", "composite_backward_gain")])
    ax.axhline(1.0, color="grey", lw=1)
    ax.set_title("Amax gain (max over tokens); 1 = no amplification")
    ax.legend(fontsize=7)
    ax = axes[1, 2]
    ax.plot(x, [divergence(s) for s in stats], marker="o", ms=3, color="C4")
    ax.set_yscale("log")
    ax.set_title("streams drifting apart: 1 - cosine similarity\n(mean over stream pairs and tokens; 0 = identical)")
    for ax in axes.flat:
        _xticks(ax, names)
        ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: mHC coefficients on one batch ({info['batch']})")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _overview_from_metrics(info, title, path) -> str:
    """Sweep run without weights: per-layer gains / identity distance of the last measurement."""
    per = info.get("per_layer")
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.5))
    if per is None:
        for ax in axes:
            ax.text(0.5, 0.5, "metrics.jsonl has no per-layer gain record", ha="center", va="center")
    else:
        x = np.arange(len(per["identity_distance_mean"]))
        axes[0].plot(x, per["identity_distance_mean"], marker="o", ms=3, color="C3")
        if info.get("init_identity_distance") is not None:
            axes[0].axhline(info["init_identity_distance"], color="grey", ls="--", lw=1,
                            label="fresh mHC init (res diagonal 0.948, not exactly I)")
            axes[0].legend(fontsize=7)
        axes[0].ticklabel_format(axis="y", useOffset=False, style="plain")
        axes[0].set_title("distance of res from identity (mean over tokens)")
        for key in ("forward_gain_max", "backward_gain_max", "composite_forward_gain_max", "composite_backward_gain_max"):
            if key in per:
                axes[1].plot(x, per[key], marker="o", ms=3, ls="--" if "backward" in key else "-",
                             label=key.replace("_", " "))
        _gain_scale(axes[1], [v for k in ("composite_forward_gain_max", "composite_backward_gain_max")
                              for v in per.get(k, [])])
        axes[1].axhline(1.0, color="grey", lw=1)
        axes[1].set_title("Amax gain (max over tokens); 1 = no amplification")
        axes[1].legend(fontsize=7)
        for ax in axes:
            ax.set_xlabel("mixing layer (2 per transformer block)")
            ax.grid(alpha=0.3)
    fig.suptitle(f"{title}: last gain measurement (step {per['step'] if per else '?'}); "
                 "no weights in the run dir, so alpha / pre / post are not available")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_heatmaps(stats, names, title, info, path, max_panels: int = 8) -> str:
    """H_res (mean over tokens) of up to max_panels steps, evenly spread, + the composite if recorded."""
    picks = sorted(set(np.linspace(0, len(stats) - 1, min(max_panels, len(stats))).round().astype(int).tolist()))
    mats = [(names[i], np.asarray(stats[i].res_mean).T) for i in picks]
    if info.get("composite_mean") is not None:
        mats.append(("composite of all layers", np.asarray(info["composite_mean"]).T))
    signed = any(m.min() < -1e-6 or m.max() > 1 + 1e-3 for _, m in mats)  # HC: unconstrained
    vmax = max(float(np.abs(m).max()) for _, m in mats) if signed else 1.0
    cols = min(4, len(mats))
    rows = math.ceil(len(mats) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.9 * cols, 3.5 * rows + 0.6), squeeze=False,
                             gridspec_kw={"wspace": 0.45, "hspace": 0.45})
    for ax in axes.flat[len(mats):]:
        ax.axis("off")
    for ax, (label, h) in zip(axes.flat, mats):
        n = h.shape[0]
        im = ax.imshow(h, cmap="RdBu_r" if signed else "viridis", vmin=-vmax if signed else 0.0, vmax=vmax)
        for o in range(n):
            for i in range(n):
                if n <= 8:
                    # white text on dark cells: RdBu_r is dark at both ends, viridis at the bottom
                    dark = abs(h[o, i]) / vmax > 0.55 if signed else h[o, i] / vmax < 0.55
                    ax.text(i, o, f"{h[o, i]:.3f}", ha="center", va="center", fontsize=7,
                            color="white" if dark else "black")
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xlabel("from input stream i")
        ax.set_ylabel("to output stream o")
        ax.set_title(label, fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8)
    kind = "unconstrained (HC)" if signed else "doubly stochastic: rows and columns sum to 1"
    fig.suptitle(f"{title}: H_res (paper orientation, = res^T), mean over tokens; {kind}", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_similarity(stats, names, title, path) -> str:
    """How different the streams are: 1 - cosine similarity between streams (n x n, mean over
    tokens) after the first and the last step, on a log colour scale (0 = identical)."""
    from matplotlib.colors import LogNorm

    picks = sorted({0, len(stats) - 1})
    mats = [1.0 - np.asarray(stats[i].stream_cos) for i in picks]
    off = [m[~np.eye(m.shape[0], dtype=bool)] for m in mats]
    hi = max(1e-12, max(float(o.max()) for o in off))
    lo = max(1e-16, min(float(o[o > 0].min()) if (o > 0).any() else hi for o in off) / 2)
    fig, axes = plt.subplots(1, len(picks), figsize=(4.4 * len(picks), 4.0), squeeze=False,
                             gridspec_kw={"wspace": 0.35})
    for ax, i, m in zip(axes.flat, picks, mats):
        n = m.shape[0]
        shown = np.where(np.eye(n, dtype=bool), np.nan, np.clip(m, lo, None))  # diagonal is 0 by definition
        im = ax.imshow(shown, cmap="viridis", norm=LogNorm(vmin=lo, vmax=max(hi, lo * 10)))
        for a in range(n):
            for b in range(n):
                bright = a != b and im.norm(max(m[a, b], lo)) > 0.6  # viridis is light at the top
                ax.text(b, a, "-" if a == b else f"{m[a, b]:.1e}", ha="center", va="center", fontsize=7,
                        color="black" if a == b or bright else "white")
        ax.set_xticks(range(n))
        ax.set_yticks(range(n))
        ax.set_xlabel("stream")
        ax.set_ylabel("stream")
        ax.set_title(f"after {names[i]}", fontsize=9)
    fig.colorbar(im, ax=axes.ravel().tolist(), shrink=0.8, label="1 - cosine similarity")
    fig.suptitle(f"{title}: how different the streams are (1 - cosine similarity, mean over tokens;\n"
                 "0 = identical copies, as right after the expansion)", fontsize=10)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path
