"""Spread over seeds for the depth sweep's summary: group the per-run rows by
(variant, depth, lr) and give each metric's per-seed values, mean and sample std.

    groups = aggregate(rows)          # rows: depth_sweep.run_one's summary rows
    lines = markdown_table(groups)    # "mean ± std (n)" per metric

Std is the sample standard deviation (ddof = 1; 0 with one seed). Mean and std are those of
the floats' exact values, rounded once (`statistics`): a subtraction of a rounded mean made
spreads of a few ulps (max gains of 1 in every seed) come out up to ~40% off. A metric that is None
or NaN in some seed (a run that diverged) is left out of that seed's mean, and `n` says how
many seeds entered it.
"""
from __future__ import annotations

import math
import statistics

import numpy as np

METRICS = ("eval_loss_final", "eval_accuracy_final", "final_loss_avg10pct", "grad_norm_first_last_ratio",
           "max_composite_forward_gain", "nan_inf_events")


def _plain(v):
    """A numpy scalar as the Python number it holds (np.float32 is no `float`); else v."""
    return v.item() if isinstance(v, np.generic) else v


def _finite(v) -> bool:
    return v is not None and isinstance(v, (int, float)) and math.isfinite(v)


def spread(values) -> dict:
    """{'values', 'mean', 'std', 'n'} over the finite values (mean / std None when none are);
    numpy scalars count as the Python numbers they hold."""
    values = [_plain(v) for v in values]
    ok = [float(v) for v in values if _finite(v)]
    return {"values": values, "n": len(ok),
            "mean": statistics.mean(ok) if ok else None,
            "std": statistics.stdev(ok) if len(ok) > 1 else (0.0 if ok else None)}


def aggregate(rows: list[dict]) -> list[dict]:
    """One record per (variant, depth, lr), in first-seen order: seeds, diverged count and
    `spread` of every METRICS key."""
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["variant"], r["depth"], r["lr"]), []).append(r)
    out = []
    for (variant, depth, lr), rs in groups.items():
        rec = {"variant": variant, "depth": depth, "lr": lr, "seeds": [r["seed"] for r in rs],
               "diverged": sum(bool(r["diverged"]) for r in rs)}
        rec.update({m: spread([r.get(m) for r in rs]) for m in METRICS})
        out.append(rec)
    return out


def fmt_spread(s: dict, spec: str = ".4g") -> str:
    """'mean ± std' (or '—' when no seed gave a finite value); '(k/n)' when some seeds did not."""
    if s["mean"] is None:
        return "—"
    text = f"{format(s['mean'], spec)} ± {format(s['std'], '.2g')}"
    return text if s["n"] == len(s["values"]) else f"{text} ({s['n']}/{len(s['values'])})"


def markdown_table(groups: list[dict]) -> list[str]:
    """The summary.md table of mean ± std over seeds."""
    lines = ["| variant | depth | lr | seeds | held-out loss | held-out accuracy | train loss (last 10%) "
             "| grad ratio first/last | max composite fwd gain | NaN/Inf steps | diverged |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for g in groups:
        lines.append(f"| {g['variant']} | {g['depth']} | {g['lr']:g} | {len(g['seeds'])} "
                     f"| {fmt_spread(g['eval_loss_final'])} | {fmt_spread(g['eval_accuracy_final'], '.3f')} "
                     f"| {fmt_spread(g['final_loss_avg10pct'])} | {fmt_spread(g['grad_norm_first_last_ratio'], '.3g')} "
                     f"| {fmt_spread(g['max_composite_forward_gain'], '.3g')} | {fmt_spread(g['nan_inf_events'], '.3g')} "
                     f"| {g['diverged']}/{len(g['seeds'])} |")
    return lines
