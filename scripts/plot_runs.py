#!/usr/bin/env python
"""Plots of a depth sweep directory written by scripts/depth_sweep.py.

    python scripts/plot_runs.py runs/quick-torch-incrementing

Reads RUNS_DIR/<variant>-L<depth>/{config.json, metrics.jsonl, res_final.json} of the runs
that RUNS_DIR/summary.json lists (every run folder when there is no summary) and writes
into RUNS_DIR:
  loss.png            training loss vs step, one panel per depth (log y)
  eval.png            held-out loss and accuracy vs step (after the last update at the end)
  grad_norm.png       total gradient norm vs step (log y)
  nan_inf_events.png  cumulative steps with a NaN/Inf loss or gradient
  gain.png            composite Amax gain (max over depth and tokens) vs step, forward and backward (log y)
  depth_scaling.png   max composite gain over training vs depth, per variant (log y)
  gain_vs_layer.png   composite forward gain after each mixing layer at the last logged step
  grad_heatmap.png    per-layer gradient norm (log10) over training, one panel per run
  grad_vs_layer.png   per-block gradient norm averaged over training vs block index
  h_res.png           final H_res (mean over tokens) of a few layers and the composite

Several seeds (--seeds): loss, grad_norm, eval, nan_inf_events and depth_scaling draw the
mean over seeds with a band from the lowest to the highest seed (nan_inf_events' title counts
the steps of every run); the per-run views (gain, heatmap, per
layer, H_res) show the first seed. Several learning rates (--lrs): one line style per lr.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FuncFormatter  # noqa: E402
import numpy as np  # noqa: E402

COLORS = {"residual": "#7f7f7f", "hc": "#d62728", "mhc": "#1f77b4", "mhc-lite": "#2ca02c", "history": "#9467bd"}
LABELS = {"residual": "residual (n=1)", "hc": "HC (unconstrained)", "mhc": "mHC (Sinkhorn)",
          "mhc-lite": "mHC-lite (permutations)", "history": "history mixing (n=1)"}
ORDER = ("residual", "hc", "mhc", "mhc-lite", "history")
# residual and mHC often coincide (mHC starts as the residual network): draw the baseline
# wide and dashed underneath so both stay visible.
STYLES = {"residual": dict(ls="--", lw=2.4, alpha=0.75, zorder=1), "hc": dict(lw=1.3, zorder=2),
          "mhc": dict(lw=1.3, zorder=3)}


def _style(variant, **extra):
    return {"color": COLORS.get(variant), "label": LABELS.get(variant, variant), **STYLES.get(variant, {}), **extra}


def _num(v):
    """Floats that depth_sweep wrote as 'nan' / 'inf' strings come back as floats."""
    return float(v) if isinstance(v, str) else v


def sweep_run_names(runs_dir: str) -> list[str] | None:
    """The run folders of the sweep that last wrote RUNS_DIR/summary.json (None without one).

    Run folders of an earlier sweep into the same --out (another task, seed list, depth...)
    stay on disk; plotting them beside this sweep's would pool unrelated runs as seeds."""
    path = os.path.join(runs_dir, "summary.json")
    if not os.path.isfile(path):
        return None
    summary = read_json(path)
    try:
        return [r["run"] for r in summary["runs"]]
    except (KeyError, TypeError):
        raise SystemExit(f"{path} has no list of runs (a 'runs' entry of records with 'run'): not a depth "
                         "sweep summary") from None


def read_json(path: str):
    """The JSON in `path`; a file that is not JSON (cut short by a kill, edited) is a SystemExit
    naming it, instead of a JSONDecodeError traceback without the file's name."""
    with open(path) as f:
        try:
            return json.load(f)
        except ValueError as err:
            raise SystemExit(f"{path} is not valid JSON ({err})") from None


def read_metrics(path: str) -> list[dict]:
    """The records of a metrics.jsonl. A last line without its newline (a run killed while
    writing it) is left out with a warning; any other line that is not JSON is a SystemExit
    naming the file and line."""
    with open(path, "rb") as f:
        lines = f.read().split(b"\n")
    recs = []
    for i, raw in enumerate(lines):
        if not raw.strip():
            continue
        try:
            recs.append(json.loads(raw))
        except ValueError:
            if i == len(lines) - 1:  # no newline after it: cut by a kill
                print(f"warning: {path}: last line is incomplete (run killed while writing?), left out",
                      file=sys.stderr)
                break
            raise SystemExit(f"{path} line {i + 1} is not a JSON record") from None
    return recs


def load_runs(runs_dir: str, names: list[str] | None = None) -> list[dict]:
    """The runs in RUNS_DIR: `names` if given, else those summary.json lists, else every
    subfolder holding config.json and metrics.jsonl."""
    runs = []
    names = names if names is not None else sweep_run_names(runs_dir)
    for name in sorted(os.listdir(runs_dir)) if names is None else names:
        d = os.path.join(runs_dir, name)
        if not os.path.isfile(os.path.join(d, "metrics.jsonl")) or not os.path.isfile(os.path.join(d, "config.json")):
            if names is not None:
                raise SystemExit(f"{runs_dir}/summary.json lists run {name!r}, but {d} has no config.json "
                                 "and metrics.jsonl")
            continue
        cfg = read_json(os.path.join(d, "config.json"))
        recs = read_metrics(os.path.join(d, "metrics.jsonl"))
        res = None
        if os.path.isfile(os.path.join(d, "res_final.json")):
            res = read_json(os.path.join(d, "res_final.json"))
        model = cfg["model"]
        runs.append({"name": name, "variant": model["variant"], "depth": model["n_layers"], "n": model["n"],
                     "seed": model.get("seed", 0), "lr": cfg["train"]["lr"],
                     "per_block": 1 if model.get("arch") == "mlp" else 2,
                     "config": cfg, "metrics": recs, "res": res})
    runs.sort(key=lambda r: (r["depth"], ORDER.index(r["variant"]) if r["variant"] in ORDER else 9, r["lr"], r["seed"]))
    return runs


def groups(runs) -> list[list[dict]]:
    """Runs that differ only by seed, grouped (same variant, depth and lr), in run order."""
    out: dict[tuple, list[dict]] = {}
    for r in runs:
        out.setdefault((r["variant"], r["depth"], r["lr"]), []).append(r)
    return list(out.values())


def first_seed(runs) -> list[dict]:
    """One run per (variant, depth, lr): the lowest seed (the per-run plots)."""
    return [min(g, key=lambda r: r["seed"]) for g in groups(runs)]


LR_STYLES = ("-", "--", ":", "-.")


def _group_style(g, runs, **extra):
    """Variant colour; with several learning rates a line style and label per lr."""
    lrs = sorted({r["lr"] for r in runs})
    st = _style(g[0]["variant"], **extra)
    if len(lrs) > 1:
        st["ls"] = LR_STYLES[lrs.index(g[0]["lr"]) % len(LR_STYLES)]
        st["label"] = f"{st['label']}, lr {g[0]['lr']:g}"
    return st


def _mean_band(series):
    """[(xs, ys) per seed] -> (steps, mean, lo, hi) over the seeds that logged each step
    (finite values only; a seed that stopped early drops out of the later steps)."""
    by_step: dict[float, list[float]] = {}
    for xs, ys in series:
        for x, y in zip(xs, ys):
            if np.isfinite(y):
                by_step.setdefault(float(x), []).append(float(y))
    steps = np.array(sorted(by_step))
    vals = [by_step[x] for x in steps]
    return (steps, np.array([np.mean(v) for v in vals]), np.array([min(v) for v in vals]),
            np.array([max(v) for v in vals]))


def _series(recs, key, sub=None):
    """(steps, values) of the records holding `key` (optionally a sub-key such as 'max').
    A `<key>_final` value (the held-out eval after the last update) is placed at step + 1."""
    xs, ys = [], []
    for r in recs:
        if key in r:
            v = r[key] if sub is None else r[key][sub]
            xs.append(r["step"])
            ys.append(_num(v))
        if f"{key}_final" in r:
            xs.append(r["step"] + 1)
            ys.append(_num(r[f"{key}_final"]))
    return np.array(xs), np.array(ys, dtype=float)


def _plot_group(ax, g, runs, key, sub=None, cumulative=False, **extra):
    """One line per group: the run itself, or the mean over seeds with a min-max band."""
    series = []
    for r in g:
        xs, ys = _series(r["metrics"], key, sub)
        series.append((xs, np.cumsum(ys) if cumulative else ys))
    st = _group_style(g, runs, **extra)
    if len(series) == 1:
        ax.plot(*series[0], **st)
        return
    steps, mean, lo, hi = _mean_band(series)
    st["label"] = f"{st['label']} (mean of {len(series)} seeds)"
    ax.plot(steps, mean, **st)
    ax.fill_between(steps, lo, hi, color=st.get("color"), alpha=0.18, lw=0)


def _depth_axes(runs, rows=1, height=3.2, sharey=True):
    depths = sorted({r["depth"] for r in runs})
    fig, axes = plt.subplots(rows, len(depths), figsize=(max(4.2 * len(depths) + 0.6, 9.0), height * rows + 0.7),
                             squeeze=False, sharey=sharey, sharex="col")
    return fig, axes, depths


_PER_BLOCK = {"value": 2}  # mixing layers per block of the runs being plotted (set by plot_runs)


def _depth_title(depth):
    return f"depth {depth} blocks ({_PER_BLOCK['value'] * depth} mixing layers)"


def _subtitle(runs):
    c = runs[0]["config"]
    m, t = c["model"], c["train"]
    lrs = ", ".join(f"{v:g}" for v in sorted({r["lr"] for r in runs}))
    seeds = sorted({r["seed"] for r in runs})
    return (f"{c['backend']}, task '{t['task']}', {m.get('arch', 'transformer')} {m.get('norm', 'pre')}-norm, "
            f"dim {m['dim']}, n {max(r['n'] for r in runs)}, seq {m['seq_len']}, batch {t['batch']}, Adam lr {lrs}"
            + (f", seeds {', '.join(map(str, seeds))}" if len(seeds) > 1 else "")
            + (f", res init {m['res_init']}" if m.get("res_init", "identity") != "identity" else ""))


def _legend(fig, axes):
    """One legend for the figure, centred below the panels (fig.tight_layout leaves room:
    LEGEND_ROOM)."""
    handles = {}
    for ax in axes.flat:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            handles.setdefault(lab, h)
    if handles:  # at most 3 a row (5 variants x several lrs overflowed the figure on one row); rows
        # below the first hang under the figure, which savefig(bbox_inches="tight") keeps
        fig.legend(list(handles.values()), list(handles.keys()), loc="upper center",
                   bbox_to_anchor=(0.5, LEGEND_ROOM[1]), ncol=min(len(handles), 3), fontsize=9, frameon=False)


LEGEND_ROOM = (0, 0.07, 1, 1)  # tight_layout rect leaving the bottom strip to the legend


MIN_LOG_SPAN = 1.5  # a log y axis spans at least this factor


def _log_y(ax):
    """Log y axis with plain tick labels (0.3, 10, 1e+06) instead of 3 x 10^-1; minor ticks
    are labelled when the range holds few decades (all of them inside one decade, the 2, 3
    and 5 multiples across up to two)."""
    ax.set_yscale("log")
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    lo, hi = ax.get_ylim()
    if 0 < lo < hi < lo * MIN_LOG_SPAN:  # e.g. gains 0.999999 .. 1 filled the panel: 1e-6 looked like a drop
        mid = math.sqrt(lo * hi)
        lo, hi = mid / math.sqrt(MIN_LOG_SPAN), mid * math.sqrt(MIN_LOG_SPAN)
        ax.set_ylim(lo, hi)
    decades = math.log10(hi) - math.log10(lo) if lo > 0 and hi > 0 else 99
    if math.floor(math.log10(lo)) == math.floor(math.log10(hi)) if decades < 99 else False:
        minor = lambda v, _: f"{v:g}"  # noqa: E731
    elif decades < 2:
        minor = lambda v, _: f"{v:g}" if f"{v:.0e}"[0] in "235" else ""  # noqa: E731
    else:
        minor = lambda v, _: ""  # noqa: E731
    ax.yaxis.set_minor_formatter(FuncFormatter(minor))


def _line_plot(runs, out, key, sub, ylabel, title, log=True, cumulative=False):
    fig, axes, depths = _depth_axes(runs)
    for j, depth in enumerate(depths):
        ax = axes[0, j]
        for g in (g for g in groups(runs) if g[0]["depth"] == depth):
            _plot_group(ax, g, runs, key, sub, cumulative=cumulative)
        ax.set_title(_depth_title(depth), fontsize=10)
        ax.set_xlabel("training step")
        if log:
            _log_y(ax)
        elif cumulative:  # counts: start at 0, whole numbers
            ax.set_ylim(bottom=0, top=max(1.0, ax.get_ylim()[1]))
            ax.yaxis.get_major_locator().set_params(integer=True)
        ax.grid(alpha=0.3, which="both" if not log else "major")
    axes[0, 0].set_ylabel(ylabel)
    _legend(fig, axes)
    fig.suptitle(f"{title}\n{_subtitle(runs)}", fontsize=11)
    fig.tight_layout(rect=LEGEND_ROOM)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_eval(runs, out):
    """Held-out loss (top) and accuracy (bottom) vs step, per depth; mean and band over seeds."""
    if not any("eval_loss" in m for r in runs for m in r["metrics"]):
        return
    fig, axes, depths = _depth_axes(runs, rows=2, sharey="row")
    for i, (key, label) in enumerate((("eval_loss", "held-out loss (nats)"), ("eval_accuracy", "held-out accuracy"))):
        for j, depth in enumerate(depths):
            ax = axes[i, j]
            for g in (g for g in groups(runs) if g[0]["depth"] == depth):
                _plot_group(ax, g, runs, key, marker=".", ms=3)
            ax.grid(alpha=0.3)
            ax.set_title(_depth_title(depth), fontsize=9)
            if i == 1:
                ax.set_xlabel("training step (last point: after the final update)")
        axes[i, 0].set_ylabel(label)
    _legend(fig, axes)
    fig.suptitle(f"Held-out loss and accuracy\n{_subtitle(runs)}", fontsize=11)
    fig.tight_layout(rect=LEGEND_ROOM)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_nan_events(runs, out):
    total = sum(r["metrics"][-1]["nan_inf_events_total"] for r in runs if r["metrics"])
    note = "no NaN/Inf step in any run" if total == 0 else f"{total} NaN/Inf steps in all runs together"
    _line_plot(runs, out, "nan_inf_event", None, "cumulative NaN/Inf steps (update skipped)",
               f"NaN/Inf events ({note})", log=False, cumulative=True)


def plot_gain(runs, out):
    fig, axes, depths = _depth_axes(runs, rows=2, sharey="row")
    for i, (key, what) in enumerate((("composite_forward_gain_peak", "forward"),
                                     ("composite_backward_gain_peak", "backward"))):
        for j, depth in enumerate(depths):
            ax = axes[i, j]
            for r in (r for r in runs if r["depth"] == depth):
                xs, ys = _series(r["metrics"], key)
                ax.plot(xs, ys, **_style(r["variant"], marker=".", ms=3))
            _log_y(ax)
            ax.axhline(1.0, color="k", lw=0.6, ls=":")
            ax.grid(alpha=0.3)
            ax.set_title(f"{what}: {_depth_title(depth)}", fontsize=9)
            if i == 1:
                ax.set_xlabel("training step")
        axes[i, 0].set_ylabel(f"composite {what} Amax gain\n(max over layers & tokens)")
    _legend(fig, axes)
    fig.suptitle(f"Composite Amax gain of the residual mixing vs training step (1 = no amplification)\n{_subtitle(runs)}",
                 fontsize=11)
    fig.tight_layout(rect=LEGEND_ROOM)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _max_over_steps(recs, key):
    """Max of `key` over the records, NaN values left out (as the summary's max gain);
    NaN when no record has a non-NaN value."""
    vals = [v for v in (_num(r[key]) for r in recs if key in r) if not math.isnan(v)]
    return max(vals) if vals else float("nan")


def plot_depth_scaling(runs, out):
    fig, axes = plt.subplots(1, 2, figsize=(10, 4), squeeze=False)
    for i, (key, what) in enumerate((("composite_forward_gain_peak", "forward"),
                                     ("composite_backward_gain_peak", "backward"))):
        ax = axes[0, i]
        for v in ORDER:
            for lr in sorted({r["lr"] for r in runs}):
                gs = sorted((g for g in groups(runs) if g[0]["variant"] == v and g[0]["lr"] == lr),
                            key=lambda g: g[0]["depth"])
                if not gs:
                    continue
                vals = [[_max_over_steps(r["metrics"], key) for r in g] for g in gs]
                st = _group_style(gs[0], runs, marker="o")
                ax.plot([g[0]["depth"] for g in gs], [np.nanmean(v) for v in vals], **st)
                if any(len(v) > 1 for v in vals):
                    ax.fill_between([g[0]["depth"] for g in gs], [np.nanmin(v) for v in vals],
                                    [np.nanmax(v) for v in vals], color=st.get("color"), alpha=0.18, lw=0)
        _log_y(ax)
        ax.axhline(1.0, color="k", lw=0.6, ls=":")
        ax.set_xticks(sorted({r["depth"] for r in runs}))
        ax.set_xlabel(f"depth (blocks; {_PER_BLOCK['value']} mixing layer(s) each)")
        ax.set_ylabel(f"max composite {what} Amax gain")
        ax.set_title(f"{what} gain (max over training, layers, tokens)", fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.suptitle(f"Composite gain vs depth\n{_subtitle(runs)}", fontsize=11)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


def plot_gain_vs_layer(runs, out):
    fig, axes, depths = _depth_axes(runs, sharey=True)
    for j, depth in enumerate(depths):
        ax = axes[0, j]
        for r in (r for r in runs if r["depth"] == depth):
            last = [m for m in r["metrics"] if "per_layer" in m]
            if last:
                ys = [_num(v) for v in last[-1]["per_layer"]["composite_forward_gain_max"]]
                ax.plot(np.arange(len(ys)), ys, **_style(r["variant"]))
        _log_y(ax)
        ax.axhline(1.0, color="k", lw=0.6, ls=":")
        ax.set_xlabel("mixing layer index l (0 = first)")
        ax.set_title(f"{_depth_title(depth)}, last step", fontsize=9)
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("composite forward Amax gain\nof layers 0..l (max over tokens)")
    _legend(fig, axes)
    fig.suptitle(f"Composite gain through the network at the end of training\n{_subtitle(runs)}", fontsize=11)
    fig.tight_layout(rect=LEGEND_ROOM)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_grad_heatmap(runs, out):
    variants = [v for v in ORDER if any(r["variant"] == v for r in runs)]
    depths = sorted({r["depth"] for r in runs})
    grids, vals = {}, []
    for r in runs:
        ok = [m for m in r["metrics"] if not m["nan_inf_event"]]
        if ok:
            g = np.array([[_num(v) for v in m["layer_grad_norm"]] for m in ok], dtype=float).T  # [layers, steps]
            g = np.log10(np.maximum(g, 1e-30))
            grids[(r["variant"], r["depth"])] = (g, ok[0]["step"], ok[-1]["step"])
            vals.append(g[np.isfinite(g)])
    if not grids:
        return
    allv = np.concatenate(vals)
    vmin, vmax = np.percentile(allv, 1), np.percentile(allv, 99)
    fig, axes = plt.subplots(len(variants), len(depths), figsize=(max(3.8 * len(depths) + 1.2, 9.0), 2.8 * len(variants) + 0.8),
                             squeeze=False, layout="constrained")
    im = None
    for i, v in enumerate(variants):
        for j, d in enumerate(depths):
            ax = axes[i, j]
            if (v, d) not in grids:
                ax.axis("off")
                continue
            g, s0, s1 = grids[(v, d)]
            im = ax.imshow(g, aspect="auto", origin="lower", cmap="magma", vmin=vmin, vmax=vmax,
                           extent=(s0 - 0.5, s1 + 0.5, -0.5, g.shape[0] - 0.5), interpolation="nearest")
            ax.set_title(f"{LABELS[v]}, {d} blocks", fontsize=9)
            if j == 0:
                ax.set_ylabel("mixing layer (0 = first)")
            if i == len(variants) - 1:
                ax.set_xlabel("training step")
    fig.colorbar(im, ax=axes, shrink=0.8, label="log10 gradient norm of the layer's weights")
    fig.get_layout_engine().set(h_pad=0.08, w_pad=0.08)
    fig.suptitle("Per-layer gradient norm (wrapped sub-layer weights, without phi/bias/alpha)\n" + _subtitle(runs),
                 fontsize=11)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_grad_vs_layer(runs, out):
    """Per-block gradient norm (attention and MLP weights together), averaged over the
    finite steps, vs block index: the stress test's view of how the gradient reaching the
    first blocks compares with the last (per mixing layer it zig-zags, since attention and
    MLP weights have different gradient scales)."""
    fig, axes, depths = _depth_axes(runs, sharey=True)
    for j, depth in enumerate(depths):
        ax = axes[0, j]
        for r in (r for r in runs if r["depth"] == depth):
            ok = [m for m in r["metrics"] if not m["nan_inf_event"]]
            if ok:
                g = np.array([[_num(v) for v in m["layer_grad_norm"]] for m in ok], dtype=float)  # [steps, kL]
                k = r["per_block"]
                block = np.sqrt((g.reshape(len(g), -1, k) ** 2).sum(-1)).mean(0)  # the sub-layers of each block
                ax.plot(np.arange(len(block)), block, **_style(r["variant"]))
        _log_y(ax)
        ax.set_xlabel("block index (0 = first)")
        ax.set_title(_depth_title(depth), fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[0, 0].set_ylabel("gradient norm of the block's\nsub-layer weights (mean over steps)")
    _legend(fig, axes)
    fig.suptitle(f"Gradient norm per block (first / last block ratio: summary.md)\n{_subtitle(runs)}", fontsize=11)
    fig.tight_layout(rect=LEGEND_ROOM)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_h_res(runs, out):
    rs = [r for r in runs if r["res"] and r["n"] > 1]
    if not rs:
        return
    cols = max(len(r["res"]["layers"]) for r in rs) + 1
    fig, axes = plt.subplots(len(rs), cols, figsize=(1.9 * cols + 0.8, 2.0 * len(rs) + 0.9), squeeze=False)
    for i, r in enumerate(rs):
        mats = [(f"layer {l}\n{nm}", np.array(m).T) for l, nm, m in
                zip(r["res"]["layers"], r["res"]["names"], r["res"]["res_mean"])]
        mats += [None] * (cols - 1 - len(mats))  # the composite always in the last column
        mats.append((f"composite of all\n{r['per_block'] * r['depth']} layers", np.array(r["res"]["composite_mean"]).T))
        for j in range(cols):
            ax = axes[i, j]
            ax.set_xticks([])
            ax.set_yticks([])
            if mats[j] is None:
                ax.axis("off")
                continue
            title, h = mats[j]
            lim = max(1.0, float(np.abs(h).max()))
            ax.imshow(h, cmap="RdBu_r", vmin=-lim, vmax=lim)
            for (a, b), val in np.ndenumerate(h):
                label = f"{val:.2f}".replace("-0.00", "0.00") if abs(val) < 100 else f"{val:.0e}"
                ax.text(b, a, label, ha="center", va="center",
                        fontsize=6, color="white" if abs(val) > 0.6 * lim else "black")
            ax.set_title(title, fontsize=7)
            if j == 0:
                ax.set_ylabel(f"{LABELS[r['variant']]}\n{r['depth']} blocks", fontsize=8)
    fig.suptitle("Final H_res (paper orientation: row = output stream, column = input stream), mean over tokens;\n"
                 "colour scale symmetric, |max| >= 1. " + _subtitle(rs), fontsize=9)
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)


PLOT_NAMES = ("loss", "eval", "grad_norm", "nan_inf_events", "gain", "depth_scaling", "gain_vs_layer", "grad_heatmap",
              "grad_vs_layer", "h_res")


def plot_runs(runs_dir: str) -> list[str]:
    """Write every plot for the sweep in `runs_dir`; returns the paths written."""
    runs = load_runs(runs_dir)
    if not runs:
        raise SystemExit(f"no runs (subdirectories with config.json and metrics.jsonl) in {runs_dir}")
    p = lambda name: os.path.join(runs_dir, name)  # noqa: E731
    for name in PLOT_NAMES:  # an earlier sweep's plot this one does not draw (h_res) must not stay
        if os.path.isfile(p(f"{name}.png")):
            os.remove(p(f"{name}.png"))
    _PER_BLOCK["value"] = runs[0]["per_block"]
    one = first_seed(runs)
    _line_plot(runs, p("loss.png"), "loss", None, "cross-entropy (nats)", "Training loss")
    plot_eval(runs, p("eval.png"))
    _line_plot(runs, p("grad_norm.png"), "grad_norm", None, "total gradient L2 norm", "Gradient norm")
    plot_nan_events(runs, p("nan_inf_events.png"))
    plot_gain(one, p("gain.png"))
    plot_depth_scaling(runs, p("depth_scaling.png"))
    plot_gain_vs_layer(one, p("gain_vs_layer.png"))
    plot_grad_heatmap(one, p("grad_heatmap.png"))
    plot_grad_vs_layer(one, p("grad_vs_layer.png"))
    plot_h_res(one, p("h_res.png"))
    return [p(f"{n}.png") for n in PLOT_NAMES if os.path.isfile(p(f"{n}.png"))]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Plot a depth sweep directory.")
    ap.add_argument("runs_dir")
    args = ap.parse_args(argv)
    if not os.path.isdir(args.runs_dir):
        ap.error(f"runs_dir expected a sweep folder written by scripts/depth_sweep.py, got {args.runs_dir!r} "
                 f"({'a file' if os.path.exists(args.runs_dir) else 'no such folder'})")
    for path in plot_runs(args.runs_dir):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
