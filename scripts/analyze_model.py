"""Analyse the mHC mixing of a converted model or of a depth-sweep run: plots + a text table.

    python scripts/analyze_model.py MODEL_DIR [--out DIR] [--batch 4] [--seq-len 32]

MODEL_DIR is either
- a converted model: what `save_pretrained` wrote after `mhc_core_torch.convert` / `inject`
  (config.json has an "mhc" entry); it is loaded with `mhc_core_torch.load_converted` and run
  on a batch of random tokens (or random pixels for vision models);
- a depth-sweep run (runs/<sweep>/<variant>-L<depth>/, written by scripts/depth_sweep.py):
  with a weights file (*.safetensors) the TinyLM is rebuilt and run on a batch of its
  task; without one, the recorded res_final.json and the last gain measurement of
  metrics.jsonl are plotted.

Writes to --out (default MODEL_DIR/analysis): analysis.txt (the table, also printed),
analysis.json, overview.png (alpha, pre/post, distance from identity, Amax gains, stream
similarity per step), res_heatmaps.png (H_res of a few steps), stream_similarity.png.
"""
from __future__ import annotations

import argparse
import glob
import json
import math
import os
import re
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from analysis_plots import ascii_heatmap, divergence, plot_heatmaps, plot_overview, plot_similarity  # noqa: E402


def short(name: str) -> str:
    """'model.layers.3.attn_mhc' / 'blocks.3.attn' -> 'L3.attn'."""
    m = re.search(r"(\d+)\.(?:(attn|mlp)\w*)$", name)
    return f"L{m.group(1)}.{m.group(2)}" if m else name


def load_converted_model(path: str, args):
    import torch

    import mhc_core_torch
    from mhc_core_torch.integrations.analysis import analyze

    model = mhc_core_torch.load_converted(path).eval()
    g = torch.Generator().manual_seed(args.seed)
    if model.main_input_name == "pixel_values":
        c = model.config
        batch = {"pixel_values": torch.randn(args.batch, c.num_channels, c.image_size, c.image_size, generator=g)}
        what = f"random pixels [{args.batch}, {c.num_channels}, {c.image_size}, {c.image_size}]"
    else:
        ids = torch.randint(0, model.config.vocab_size, (args.batch, args.seq_len), generator=g)
        batch, what = {"input_ids": ids}, f"random tokens [{args.batch}, {args.seq_len}]"
    stats = analyze(model, lambda: model(**batch))
    info = {"kind": "converted model", "architecture": type(model).__name__, "mhc": model.config.mhc, "batch": what}
    return stats, info


def load_sweep_run(path: str, args):
    with open(os.path.join(path, "config.json")) as f:
        config = json.load(f)
    weights = sorted(glob.glob(os.path.join(path, "*.safetensors")))
    info = {"kind": "depth-sweep run", "run": config.get("run"), "model": config["model"]}
    if weights:
        from safetensors.numpy import load_file

        from mhc_core.experiments.data import make_stream
        from mhc_core.experiments.lm_config import LMConfig
        from mhc_core_torch.integrations.analysis import analyze
        from mhc_core_torch.lm import TinyLM, _inputs

        cfg = LMConfig(**config["model"])
        model = TinyLM(cfg, load_file(weights[0]))
        task = config.get("train", {}).get("task", "incrementing")
        data = config.get("data", {})  # the run's text window / digits patch size
        stream = make_stream(task, vocab=cfg.vocab, seq_len=data.get("seq_len", cfg.seq_len), batch_size=args.batch,
                             seed=args.seed, patch=data.get("patch", 2))
        inputs = _inputs(cfg, stream.batch(0)[0])  # token ids, or digits patches
        info.update(weights=os.path.basename(weights[0]), batch=f"{task} task batch {list(inputs.shape)}")
        return analyze(model, lambda: model(inputs)), info
    from mhc_core_torch.integrations.analysis import stats_from_res

    res_path = os.path.join(path, "res_final.json")
    if not os.path.isfile(res_path):
        raise SystemExit(f"{path}: neither weights (*.safetensors) nor res_final.json to analyse")
    with open(res_path) as f:
        res = json.load(f)
    if "res_mean" not in res:  # the history variant records its skip weights there, no res matrices
        raise SystemExit(f"{path}: a {config['model'].get('variant')!r} run has no residual-mixing matrices to "
                         f"analyse ({res_path} holds its final skip weights); analyse a residual / hc / mhc / "
                         "mhc-lite run")
    stats = stats_from_res(res["names"], res["res_mean"])
    info["composite_mean"] = res.get("composite_mean")
    info["batch"] = "none: res_final.json (token-averaged res of the final gain measurement)"
    last = None
    with open(os.path.join(path, "metrics.jsonl")) as f:
        for line in f:
            rec = json.loads(line)
            if "per_layer" in rec:
                last = rec
    if last is not None:  # the sweep writes NaN / Inf as the strings 'nan' / 'inf' / '-inf'
        info["per_layer"] = {"step": last["step"],
                             **{k: [float(v) for v in vals] for k, vals in last["per_layer"].items()}}
    return stats, info


def init_identity_distance(stats, info) -> float | None:
    """||res - I|| of a fresh mHC step (mhc_core.init_params, phi = 0): the reference line
    for 'distance from identity' (the warm start is near, not at, the identity)."""
    import mhc_core

    settings = info.get("mhc") or info.get("model") or {}
    if settings.get("variant", "mhc") != "mhc":
        return None
    cfg = {**settings, **settings.get("config", {})}  # converted: config.mhc["config"]; sweep: flat LMConfig
    n = len(stats[0].res_mean)
    b = mhc_core.init_params(n, 1, res_logit_gap=cfg.get("res_logit_gap", 4.0), dtype=np.float64)["bias"]
    res = mhc_core.sinkhorn(b[2 * n:].reshape(n, n), iters=cfg.get("iters", 20), eps=cfg.get("sinkhorn_eps", 0.0))
    return float(mhc_core.identity_distance(res))


def table_from_metrics(stats, info) -> str:
    """Sweep run without weights: every layer's gains / identity distance from the last
    gain measurement in metrics.jsonl, then H_res of the layers res_final.json kept."""
    n = len(stats[0].res_mean)
    per = info.get("per_layer") or {}
    lines = [f"mHC analysis (depth-sweep run {info.get('run')}, variant {info['model'].get('variant')}, n = {n}; "
             f"no weights in the run dir: alpha / pre / post / stream similarity need a *.safetensors file)"]
    if per:
        head = f"{'layer':>5} {'|res-I| mean':>13} {'gain fwd max':>13} {'gain bwd max':>13} {'composite fwd':>14} {'composite bwd':>14}"
        lines += ["", f"last gain measurement (step {per['step']}), max / mean over tokens:", head, "-" * len(head)]
        for l in range(len(per["identity_distance_mean"])):
            lines.append(f"{l:>5} {per['identity_distance_mean'][l]:>13.4f} {per['forward_gain_max'][l]:>13.4g} "
                         f"{per['backward_gain_max'][l]:>13.4g} {per['composite_forward_gain_max'][l]:>14.4g} "
                         f"{per['composite_backward_gain_max'][l]:>14.4g}")
    for s in stats:
        lines += ["", f"H_res of {s.name} (mean over tokens); rows = to stream o, columns = from stream i:",
                  ascii_heatmap(np.asarray(s.res_mean).T)]
    if info.get("composite_mean") is not None:
        lines += ["", "composite H_res of all layers (mean over tokens):", ascii_heatmap(np.asarray(info["composite_mean"]).T)]
    return "\n".join(lines)


def table(stats, info) -> str:
    if math.isnan(stats[0].alpha[0]):
        return table_from_metrics(stats, info)
    n = len(stats[0].res_mean)
    head = (f"{'step':>4} {'name':<10} {'alpha pre/post/res':>20} {'pre mean [min, max]':>22} "
            f"{'post mean [min, max]':>22} {'|res-I|':>8} {'gain f/b':>11} {'composite f/b':>15} {'1-cos':>8}")
    lines = [f"mHC analysis ({info['kind']}; n = {n} streams; batch: {info['batch']})",
             "alpha: scales of the input-dependent part (0.01 at the warm start); pre/post: stream weights "
             f"(warm start 1/n = {1 / n:.3g} and 1);",
             "|res-I|: Frobenius distance of res from identity (mean over tokens); gains: Amax forward/backward "
             "(max over tokens; 1 = no amplification);",
             "1-cos: 1 - mean cosine similarity between different streams after the step (0 = still identical copies).",
             "", head, "-" * len(head)]

    def fmt(v, spec=".3g"):
        return "  -  " if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)

    for i, s in enumerate(stats):
        off = divergence(s) if s.stream_cos is not None else None
        alpha = "/".join(fmt(a, ".3f") for a in s.alpha)
        pre = f"{fmt(float(np.mean(s.pre_mean)))} [{fmt(s.pre_range[0])}, {fmt(s.pre_range[1])}]"
        post = f"{fmt(float(np.mean(s.post_mean)))} [{fmt(s.post_range[0])}, {fmt(s.post_range[1])}]"
        lines.append(f"{i:>4} {short(s.name):<10} {alpha:>20} {pre:>22} {post:>22} {s.identity_distance:>8.4f} "
                     f"{s.forward_gain:>5.3f}/{s.backward_gain:<5.3f} "
                     f"{fmt(s.composite_forward_gain, '.4g'):>7}/{fmt(s.composite_backward_gain, '.4g'):<7} "
                     f"{fmt(off, '.2e'):>8}")
    for i in sorted({0, len(stats) - 1}):
        lines += ["", f"H_res of step {i} ({short(stats[i].name)}), mean over tokens; rows = to stream o, "
                  "columns = from stream i:", ascii_heatmap(np.asarray(stats[i].res_mean).T)]
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("model_dir")
    p.add_argument("--out", help="output directory (default MODEL_DIR/analysis)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--seq-len", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    path = args.model_dir
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        subdirs = sorted(d for d in glob.glob(os.path.join(path, "*")) if os.path.isfile(os.path.join(d, "config.json")))
        raise SystemExit(f"{path}: no config.json" + (f"; runs inside: {subdirs}" if subdirs else ""))
    with open(config_path) as f:
        config = json.load(f)
    if config.get("mhc"):
        stats, info = load_converted_model(path, args)
    elif "model" in config and os.path.isfile(os.path.join(path, "metrics.jsonl")):
        stats, info = load_sweep_run(path, args)
    else:
        raise SystemExit(f"{path}: config.json is neither a converted model (no 'mhc' entry) nor a sweep run")

    info["init_identity_distance"] = init_identity_distance(stats, info)
    out = args.out or os.path.join(path, "analysis")
    os.makedirs(out, exist_ok=True)
    text = table(stats, info)
    print(text)
    with open(os.path.join(out, "analysis.txt"), "w") as f:
        f.write(text + "\n")
    with open(os.path.join(out, "analysis.json"), "w") as f:
        json.dump({"info": info, "steps": [s.as_dict() for s in stats]}, f, indent=1, default=float)
    title = info.get("architecture") or info.get("run") or os.path.basename(os.path.abspath(path))
    names = [short(s.name) for s in stats]
    written = [plot_overview(stats, names, title, info, os.path.join(out, "overview.png")),
               plot_heatmaps(stats, names, title, info, os.path.join(out, "res_heatmaps.png"))]
    if stats[0].stream_cos is not None and len(stats[0].stream_cos) > 1:  # n = 1: no pair of streams to compare
        written.append(plot_similarity(stats, names, title, os.path.join(out, "stream_similarity.png")))
    print("\nwrote " + ", ".join([os.path.join(out, "analysis.txt"), os.path.join(out, "analysis.json")] + written))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
