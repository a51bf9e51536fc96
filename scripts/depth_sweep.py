#!/usr/bin/env python
"""Depth sweep: train residual / HC / mHC (/ mHC-lite / history) tiny models at several depths, log stability metrics.

    python scripts/depth_sweep.py --quick                      # < 5 min on 2 CPU cores
    python scripts/depth_sweep.py --backend mlx --depths 12 24 48 --steps 1000
    python scripts/depth_sweep.py --depths 100 --variants hc mhc --out runs/stress
    python scripts/depth_sweep.py --quick --variants residual hc mhc mhc-lite history --history 4
    python scripts/depth_sweep.py --task digits --quick --seeds 0 1      # tiny ViT, held-out accuracy
    python scripts/depth_sweep.py --task text --quick --seeds 0 1        # byte LM on stdlib sources
    python scripts/depth_sweep.py --model mlp --norm none --lrs 1e-3 1e-2 --depths 100

Tasks: incrementing / copy (synthetic tokens), digits (8x8 images from scikit-learn's
wheel, tiny ViT: patch tokens, mean pooling, class logits), text (byte-level LM on Python
standard-library sources); mhc_core.experiments.data. Conditions: --norm pre|post|none,
--model transformer|mlp (a deep MLP stack: one MLP sub-layer per block), --lrs, --seeds.

Writes, per (variant, depth[, seed][, lr]), under OUT/<variant>-L<depth>[-s<seed>][-lr<lr>]/
(the suffixes only when --seeds / --lrs give more than one value):
  config.json     everything needed to rerun (model, training, data, backend, versions, command),
                  and "resumes": each resume from a checkpoint and the settings it changed
  metrics.jsonl   one JSON object per step (see `step_record`); gains every --log-every steps;
                  eval_loss / eval_accuracy (held-out set, weights before that step's update)
                  every --eval-every steps, and eval_loss_final / eval_accuracy_final (after
                  the last update) in the last step's record
  res_final.json  final res matrices (mean over tokens) of a few layers + the composite
and for the sweep OUT/summary.json, OUT/summary.md (every run, then mean ± sample std over
seeds per (variant, depth, lr)) and the plots of scripts/plot_runs.py (mean over seeds with
a min-max band).

Depth = transformer blocks; each block is two mixing layers (attention, MLP), so the
composite gain of a depth-L model is over 2L matrices (for `history`, the map x_0 -> x_l
that the skip weights form with f = 0: mhc_core.history_gain_report). Stability metrics come from
mhc_core.metrics on each layer's res, recomputed in numpy float64 by
mhc_core.experiments.lm_config.mixing_matrices from the recorded layer inputs (same code for both
backends). Per-layer gradient norm: L2 norm of the gradients of the wrapped sub-layer's
weights (blocks.i.attn.layer.* / blocks.i.mlp.layer.*), excluding phi/bias/alpha, so the
variants are compared on the same weights. The summary's first/last ratio (the stress
test's number, e.g. --depths 100) is per block: mean over steps of
sqrt(|g_attn|^2 + |g_mlp|^2) of block 0, divided by that of the last block.
"""
from __future__ import annotations

import argparse
import copy
import importlib
import importlib.util
import json
import math
import os
import platform
import shlex
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import mhc_core  # noqa: E402
from mhc_core.experiments.lm_config import (ARCHS, NORMS, RES_INITS, LMConfig, history_report,  # noqa: E402
                                             history_weights_of, init_lm_params, layer_names, lr_at,
                                             mixing_matrices)
from mhc_core.metrics import gain_report  # noqa: E402
from mhc_core.experiments.checkpoints import CheckpointStore  # noqa: E402
from mhc_core.experiments.data import ALL_TASKS, DIGITS_SIDE, load_digits_arrays, make_stream  # noqa: E402
from mhc_core.experiments.out_paths import folder_problem  # noqa: E402
import sweep_scale  # noqa: E402  (--checkpoint-every, --recompute, --dtype, torchrun)

VARIANTS = ("residual", "hc", "mhc", "mhc-lite", "history")
DEFAULT_VARIANTS = ("residual", "hc", "mhc")
# Sizes per mode; any flag given on the command line wins. 'quick' runs the default
# 3 variants x depths 12/24/48 grid on torch in 2.5 CPU-minutes (single thread); measured
# 4m42s wall on a 2-core machine shared at load ~5, so well under 5 minutes when not shared;
# with the held-out evals (every 40 steps, ~2% of the time) 277 s wall, 196 s CPU at load 2.4-3.4.
PRESETS = {
    "quick": dict(dim=32, heads=2, seq_len=16, batch=8, vocab=32, steps=120, log_every=10, eval_every=40,
                  eval_size=0, init_std=0.02),
    "full": dict(dim=64, heads=4, seq_len=32, batch=16, vocab=64, steps=1000, log_every=20, eval_every=50,
                 eval_size=0, init_std=0.02),
}
# per task, on top of PRESETS (digits: 10 classes, 32 images a batch; text: 256 byte values)
# digits: weights drawn at std 0.2 (about 1/sqrt(dim)); at 0.02 a 12-block ViT stays at chance for 100s of steps
TASK_PRESETS = {"digits": dict(batch=32, init_std=0.2), "text": dict(seq_len=32)}


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (else a usage error, exit status 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {value}")
    return value


def positive_float(text: str) -> float:
    """argparse type: a finite float > 0 (learning rates)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}") from None
    if not (np.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value
GAIN_KEYS = ("forward_gain", "backward_gain", "composite_forward_gain", "composite_backward_gain",
             "identity_distance")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backend", choices=("torch", "mlx"), default=None,
                   help="default: torch if installed, else mlx")
    p.add_argument("--variants", nargs="+", choices=VARIANTS, default=list(DEFAULT_VARIANTS),
                   help="mhc-lite: res from the n! permutation matrices (n <= 6); history: one stream, "
                        "each layer adds a softmax mix of the last --history states")
    p.add_argument("--history", type=positive_int, default=None,
                   help="K, states mixed by the history variant (default 4; only with --variants ... history)")
    p.add_argument("--detach-history", action="store_true",
                   help="history variant: store the window detached (the mhc package's default)")
    p.add_argument("--depths", nargs="+", type=int, default=[12, 24, 48], help="transformer blocks")
    p.add_argument("--quick", action="store_true", help="small sizes and few steps (< 5 min on 2 cores)")
    p.add_argument("--steps", type=int)
    p.add_argument("--n", "--streams", dest="n", type=positive_int, default=4,
                   help="streams for hc / mhc (residual uses 1); under torchrun spell it --streams")
    p.add_argument("--dim", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--seq-len", type=int)
    p.add_argument("--batch", type=int)
    p.add_argument("--vocab", type=int, help="synthetic tasks' vocabulary (>= 2); digits: 10 classes, text: 256 bytes")
    p.add_argument("--task", choices=ALL_TASKS, default="incrementing")
    p.add_argument("--model", choices=ARCHS, default="transformer",
                   help="transformer (attention + MLP per block) or mlp (one MLP sub-layer per block)")
    p.add_argument("--norm", choices=NORMS, default="pre",
                   help="pre: rmsnorm inside each sub-layer; post: rmsnorm of every stream after each "
                        "mixing layer; none: no normalisation anywhere")
    p.add_argument("--res-init", choices=RES_INITS, default="identity",
                   help="residual-mixing init: identity, or seed002 (logits 2I-1: HC's res exp(2I-1) "
                        "unnormalised, ~3.8x growth per layer; mHC's sinkhorn(2I-1))")
    p.add_argument("--patch", type=positive_int,
                   help=f"digits: patch side (divides {DIGITS_SIDE}); default 2 (16 tokens) for the "
                        "transformer, 8 (one token) for the mlp")
    p.add_argument("--init-std", type=positive_float,
                   help="std of the embeddings and sub-layer weights (LMConfig.init_std); default 0.02, digits 0.2")
    p.add_argument("--lr", type=positive_float, help="Adam learning rate (default 1e-3)")
    p.add_argument("--lrs", type=positive_float, nargs="+", help="several learning rates in one sweep (instead of --lr)")
    p.add_argument("--seeds", type=int, nargs="+",
                   help="run every (variant, depth) once per seed (instead of --seed); summary gives mean ± std")
    p.add_argument("--eval-every", type=int, help="steps between held-out evaluations (>= 1)")
    p.add_argument("--eval-size", type=int,
                   help="held-out examples scored (0 = all 450 digits test images / 256 text windows / 32 synthetic rows)")
    p.add_argument("--warmup", type=int, default=0, help="linear LR warmup steps")
    p.add_argument("--grad-clip", type=float, default=0.0, help="total-norm clip; 0 = off")
    p.add_argument("--seed", type=int, help="weights (same for every variant) and data (default 0)")
    p.add_argument("--log-every", type=int, help="steps between gain measurements")
    p.add_argument("--metric-rows", type=int, default=2, help="batch rows whose tokens feed the gain metrics (1 .. --batch)")
    p.add_argument("--max-nonfinite", type=int, default=20,
                   help="stop a run after this many consecutive NaN/Inf steps (recorded as diverged)")
    p.add_argument("--threads", type=int, default=1,
                   help="torch intra-op threads (default 1: these tiny models are bound by per-op "
                        "overhead, and extra threads only add contention on a shared machine; 0 = torch's choice)")
    p.add_argument("--out", help="sweep directory (default runs/<quick|full>-<backend>-<task>)")
    p.add_argument("--no-plots", action="store_true")
    p.add_argument("--no-progress", action="store_true", help="no tqdm bars")
    sweep_scale.add_arguments(p)
    args = p.parse_args(argv)
    args.given = {k: getattr(args, k) for k in ("vocab", "seq_len") if getattr(args, k) is not None}
    for key, value in {**PRESETS["quick" if args.quick else "full"], **TASK_PRESETS.get(args.task, {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    if any(d < 1 for d in args.depths) or args.steps < 1 or args.log_every < 1:
        p.error("--depths, --steps and --log-every must be >= 1")
    if args.eval_every < 1:
        p.error(f"--eval-every must be >= 1, got {args.eval_every}")
    if args.eval_size < 0:
        p.error(f"--eval-size must be >= 0, got {args.eval_size}")
    if "history" not in args.variants and (args.history is not None or args.detach_history):
        p.error("--history / --detach-history set the history variant's window, but --variants "
                f"{' '.join(args.variants)} has no 'history'")
    args.history = 4 if args.history is None else args.history
    for one, many in (("lr", "lrs"), ("seed", "seeds")):  # the list would silently win over the single value
        if getattr(args, one) is not None and getattr(args, many) is not None:
            p.error(f"--{one} and --{many} both given (--{one} {getattr(args, one):g}, --{many} "
                    f"{' '.join(format(v, 'g') for v in getattr(args, many))}); give one of them")
    args.lr = 1e-3 if args.lr is None else args.lr
    args.seed = 0 if args.seed is None else args.seed
    args.lrs = list(args.lrs) if args.lrs else [args.lr]
    args.seeds = list(args.seeds) if args.seeds is not None else [args.seed]
    if len(set(args.seeds)) != len(args.seeds) or len(set(args.lrs)) != len(args.lrs):
        p.error(f"--seeds and --lrs must not repeat a value, got seeds {args.seeds} and lrs {args.lrs}")
    if len({format(lr, "g") for lr in args.lrs}) != len(args.lrs):  # run folders are named -lr<lr:g>
        p.error(f"--lrs must differ in their first 6 significant digits (run folders are named -lr<lr:g>), "
                f"got {' '.join(map(repr, args.lrs))}")
    for flag, values in (("--depths", args.depths), ("--variants", args.variants)):
        if len(set(values)) != len(values):  # a repeat would train the same run dir twice
            p.error(f"{flag} must not repeat a value, got {' '.join(map(str, values))}")
    if args.metric_rows > args.batch:
        p.error(f"--metric-rows must be at most --batch ({args.batch}), got {args.metric_rows}")
    if args.recompute != "0" and "history" in args.variants:
        p.error(f"--recompute {args.recompute} is not implemented for the history variant; "
                "use --recompute 0 or drop 'history' from --variants")
    _resolve_task_shape(p, args)
    check_numbers(p, args)
    args.backend = args.backend or default_backend()
    if args.out is None:
        args.out = os.path.join("runs", f"{'quick' if args.quick else 'full'}-{args.backend}-{args.task}")
    problem = folder_problem(args.out)
    if problem:
        p.error(f"--out expected a sweep folder (existing, or one to create), got {args.out!r}, {problem}")
    return args


def _resolve_task_shape(p, args) -> None:
    """vocab / seq_len / patch from the task: digits fixes 10 classes and (8/patch)^2 patch
    tokens, text 256 byte values; a synthetic task needs vocab >= 2. Missing optional
    dependency (digits: scikit-learn): a usage error naming the package."""
    if args.patch is None:
        args.patch = 2 if args.model == "transformer" else DIGITS_SIDE
    if args.task == "digits":
        if DIGITS_SIDE % args.patch:
            p.error(f"--patch must divide the image side {DIGITS_SIDE} (1, 2, 4 or 8), got {args.patch}")
        try:
            load_digits_arrays()
        except ImportError as e:
            p.error(str(e))
        fixed = {"vocab": 10, "seq_len": (DIGITS_SIDE // args.patch) ** 2}
    elif args.task == "text":
        fixed = {"vocab": 256}
    else:
        fixed = {}
    for key, value in fixed.items():  # a different value given on the command line was silently replaced
        if args.given.get(key, value) != value:
            p.error(f"--{key.replace('_', '-')} is fixed by --task {args.task} to {value}"
                    + (f" (--patch {args.patch})" if key == "seq_len" else "") + f", got {args.given[key]}")
        setattr(args, key, value)
    if not fixed and args.vocab < 2:
        p.error(f"--vocab must be >= 2 (a next-token task over fewer than 2 tokens has nothing to learn), got {args.vocab}")
    if args.seq_len < 1 or args.batch < 1 or args.dim < 1 or args.heads < 1:
        p.error("--seq-len, --batch, --dim and --heads must be >= 1")
    check_numbers(p, args)



def check_numbers(p, args) -> None:
    """Refuse bad training numbers and model settings before any run starts (usage error),
    instead of a traceback, a NaN run or a failure after the earlier runs have trained."""
    if not (math.isfinite(args.grad_clip) and args.grad_clip >= 0):
        p.error(f"--grad-clip must be a finite number >= 0 (0 = off), got {args.grad_clip}")
    for flag, value, low in (("--warmup", args.warmup, 0), ("--seed", min(args.seeds), 0),
                             ("--metric-rows", args.metric_rows, 1), ("--max-nonfinite", args.max_nonfinite, 1),
                             ("--threads", args.threads, 0)):
        if value < low:
            p.error(f"{flag} must be an integer >= {low}, got {value}")
    for seed in args.seeds:  # every run's data (the training stream's seed is --seed + 1)
        seed_args = copy.copy(args)
        seed_args.seed = seed
        try:
            data = make_data(seed_args)
        except ValueError as e:
            p.error(f"task {args.task} with --seed {seed}: {e}")
    for variant in args.variants:  # every run's model settings, checked up front
        try:
            model_config(args, variant, min(args.depths), data)
        except ValueError as e:
            p.error(f"variant {variant}: {e}")

def default_backend() -> str:
    for name, mod in (("torch", "torch"), ("mlx", "mlx")):
        if importlib.util.find_spec(mod) is not None:
            return name
    raise SystemExit("depth_sweep needs torch or mlx: pip install 'mhc-core[torch]' or 'mhc-core[mlx]'")


def load_backend(name: str, threads: int | None):
    """(lm module, {library: version}) for 'torch' or 'mlx'."""
    versions = {"mhc-core": mhc_core.__version__, "numpy": np.__version__, "python": platform.python_version()}
    if name == "torch":
        import torch

        if threads:
            torch.set_num_threads(threads)
        versions["torch"] = torch.__version__
        return importlib.import_module("mhc_core_torch.lm"), versions
    import mlx.core as mx

    versions["mlx"] = mx.__version__
    return importlib.import_module("mhc_core_mlx.lm"), versions


def gain_summary(report: list[dict]) -> dict:
    """Reduce mhc_core.gain_report (per layer, aggregated over tokens) to one record.

    Single-layer gains and identity distance: max / mean / min over layers and tokens.
    composite_*: the whole network's composite (after the last layer) over tokens, and
    *_peak: the largest composite gain at any depth and token.
    """
    out = {}
    for key in ("forward_gain", "backward_gain", "identity_distance"):
        out[key] = {"max": max(r[key]["max"] for r in report),
                    "mean": float(np.mean([r[key]["mean"] for r in report])),
                    "min": min(r[key]["min"] for r in report)}
    for key in ("composite_forward_gain", "composite_backward_gain"):
        out[key] = report[-1][key]
        out[key + "_peak"] = max(r[key]["max"] for r in report)
    out["per_layer"] = {f"{k}_max": [r[k]["max"] for r in report] for k in GAIN_KEYS[:4]}
    out["per_layer"]["identity_distance_mean"] = [r["identity_distance"]["mean"] for r in report]
    return out


def final_res(cfg: LMConfig, res: list[np.ndarray]) -> dict:
    """Mean-over-tokens res of a few layers (first, quartiles, last) and of the composite."""
    total = len(res)
    picks = sorted({0, total // 4, total // 2, (3 * total) // 4, total - 1})
    comp = mhc_core.composite(res)[-1]
    names = layer_names(cfg)
    return {
        "orientation": "res[i][o]: weight from input stream i to output stream o; the paper's H_res is its transpose",
        "layers": picks,
        "names": [names[l] for l in picks],
        "res_mean": [res[l].reshape(-1, cfg.n, cfg.n).mean(0).tolist() for l in picks],
        "composite_mean": comp.reshape(-1, cfg.n, cfg.n).mean(0).tolist(),
    }


def final_history(cfg: LMConfig, state: dict) -> dict:
    """The history variant's final skip weights of every layer (oldest state first, gate included)."""
    return {"orientation": "weights[l][j]: weight of the j-th of the last k states (oldest first) in layer l",
            "names": layer_names(cfg), "weights": [w.tolist() for w in history_weights_of(cfg, state)]}


def run_config(args, versions, cfg: LMConfig, data, run_dir: str) -> dict:
    """config.json: the model, training and data settings (corpus, size, split, held-out
    set), backend, versions, and a command line that reruns exactly this run (`args` is
    the run's own: one seed, one lr)."""
    train = {k: getattr(args, k) for k in ("steps", "lr", "warmup", "grad_clip", "batch", "task",
                                           "log_every", "eval_every", "eval_size", "metric_rows",
                                           "max_nonfinite", "threads")}
    rerun = [sys.executable, "scripts/depth_sweep.py", "--backend", args.backend, "--variants", cfg.variant,
             "--depths", str(cfg.n_layers), "--n", str(args.n), "--dim", str(args.dim), "--heads", str(args.heads),
             "--seq-len", str(args.seq_len), "--batch", str(args.batch), "--vocab", str(args.vocab),
             "--task", args.task, "--model", args.model, "--norm", args.norm, "--patch", str(args.patch), "--res-init", args.res_init, "--init-std", repr(args.init_std),
             "--lr", repr(args.lr), "--warmup", str(args.warmup),
             "--grad-clip", repr(args.grad_clip), "--seed", str(args.seed), "--steps", str(args.steps),
             "--log-every", str(args.log_every), "--eval-every", str(args.eval_every),
             "--eval-size", str(args.eval_size), "--metric-rows", str(args.metric_rows),
             "--max-nonfinite", str(args.max_nonfinite), "--threads", str(args.threads),
             # a folder of its own: rerun into the sweep folder, it would replace the sweep's
             # summary and plots with this one run's (and, with several seeds or lrs, write
             # <variant>-L<depth> beside <variant>-L<depth>-s<seed>)
             "--out", os.path.join(os.path.dirname(run_dir) or ".", "reruns", os.path.basename(run_dir))]
    if cfg.variant == "history":
        rerun += ["--history", str(args.history)] + (["--detach-history"] if args.detach_history else [])
    return {"run": os.path.basename(run_dir), "backend": args.backend, "versions": versions,
            "model": cfg.as_dict(), "optimizer": {"name": "adam", "betas": [0.9, 0.999], "eps": 1e-8},
            "train": train, "data": {**data.state(), **data.describe()}, "platform": platform.platform(),
            "command": shlex.join(sys.argv), "rerun": shlex.join(rerun + sweep_scale.scale_config(args)["rerun_flags"]),
            "scale": sweep_scale.scale_config(args)}


def model_config(args, variant: str, depth: int, data) -> LMConfig:
    """The model of one run: the task decides inputs (tokens / patches) and vocab."""
    patches = args.task == "digits"
    return LMConfig(vocab=args.vocab, dim=args.dim, n_layers=depth, n_heads=args.heads,
                    seq_len=data.tokens if patches else args.seq_len, variant=variant, n=args.n, seed=args.seed,
                    arch=args.model, norm=args.norm, inputs="patches" if patches else "tokens",
                    patch_dim=data.patch_dim if patches else 0, res_init=args.res_init,
                    init_std=args.init_std, history=args.history, detach_history=args.detach_history)


def make_data(args):
    """The run's training stream (seed + 1, as before) with its held-out set."""
    return make_stream(args.task, vocab=args.vocab, seq_len=args.seq_len, batch_size=args.batch,
                       seed=args.seed + 1, patch=args.patch, eval_size=args.eval_size)


def planned_runs(args) -> list[tuple[argparse.Namespace, str, int, str]]:
    """(run args with one seed and one lr, variant, depth, run dir) of every run, in order:
    seed, then lr, then variant, then depth."""
    runs = []
    for seed in args.seeds:
        for lr in args.lrs:
            run_args = copy.copy(args)
            run_args.seed, run_args.lr = seed, lr
            for variant in args.variants:
                for depth in args.depths:
                    name = f"{variant}-L{depth}"
                    if len(args.seeds) > 1:
                        name += f"-s{seed}"
                    if len(args.lrs) > 1:
                        name += f"-lr{lr:g}"
                    runs.append((run_args, variant, depth, os.path.join(args.out, name)))
    return runs


def check_resumable(args, runs) -> None:
    """Before anything is written: every run dir holding a checkpoint must be resumed
    (--checkpoint-every), with this run's settings, no more steps done than --steps and its
    metrics.jsonl intact up to the checkpoint (else SystemExit saying what differs)."""
    data = None
    for run_args, variant, depth, run_dir in runs:
        store = CheckpointStore(os.path.join(run_dir, "checkpoints"))
        if not os.path.isdir(store.directory) or not store.steps():
            continue
        if not args.checkpoint_every:  # a fresh metrics.jsonl beside them: a later resume would mix the two
            raise SystemExit(f"{store.directory} holds checkpoints of a resumable run, and without --checkpoint-every "
                             f"this run would start over beside them; pass --checkpoint-every K to resume it, "
                             f"another --out, or delete {store.directory}")
        loaded = store.load_latest(warn=False)
        if loaded.found:
            data = data or make_data(run_args)
            cfg = model_config(run_args, variant, depth, data)
            sweep_scale.check_fingerprint(loaded, sweep_scale.fingerprint(run_args, cfg), store.directory)
            sweep_scale.check_not_past_steps(loaded, run_args.steps, store.directory)
            problem = _log_problem(os.path.join(run_dir, "metrics.jsonl"), int(loaded.meta.get("metrics_lines", 0)))
            if problem:
                raise SystemExit(f"{problem}, but {loaded.path} recorded the steps before it: restore the log, "
                                 f"or delete {store.directory} to start this run over")


def _log_problem(path: str, lines: int) -> str | None:
    """Why metrics.jsonl cannot continue a checkpoint that counted `lines` lines (missing,
    fewer complete lines, or a line that is not the JSON record of step 0, 1, ...), or None."""
    if not lines:
        return None
    if not os.path.isfile(path):
        return f"{path} is missing"
    with open(path, "rb") as f:
        head = [raw for _, raw in zip(range(lines), f)]
    for i, raw in enumerate(head):
        try:
            ok = raw.endswith(b"\n") and json.loads(raw)["step"] == i
        except (ValueError, KeyError, TypeError):
            ok = False
        if not ok:
            return f"{path} line {i + 1} is not the complete record of step {i}"
    if len(head) < lines:
        return f"{path} has {len(head)} lines, fewer than the {lines} the checkpoint counted"
    return None


def run_one(args, lm, versions, variant: str, depth: int, run_dir: str, progress: bool) -> dict:
    """Train one (variant, depth) model, writing config.json, metrics.jsonl and
    res_final.json into run_dir; returns its summary row. config.json is written only
    after the resume check passed."""
    data = make_data(args)
    cfg = model_config(args, variant, depth, data)
    eval_set = data.eval_set()
    os.makedirs(run_dir, exist_ok=True)
    trainer = lm.Trainer(cfg, init_lm_params(cfg), grad_clip=args.grad_clip)
    hooks = sweep_scale.RunHooks(args, run_dir, cfg, trainer, data)  # dtype, recompute, DDP, checkpoints
    losses, events, streak, diverged, ratio_acc = [], 0, 0, False, []
    gains_max = {"composite_forward_gain_peak": None, "composite_backward_gain_peak": None}  # None: none finite yet
    acc = lambda: dict(losses=losses, events=events, streak=streak, ratio_acc=ratio_acc, gains_max=gains_max)  # noqa: E731
    start, resumed = hooks.resume(acc())  # refuses a checkpoint of other settings before any write
    if hooks.dist.is_main:
        with open(os.path.join(run_dir, "config.json"), "w") as f:
            json.dump({**run_config(args, versions, cfg, data, run_dir), "resumes": hooks.resumes}, f, indent=2)
    losses, events, streak, ratio_acc, gains_max = (resumed[k] for k in sweep_scale.ACC_KEYS)
    trainer, step = hooks.trainer, start - 1
    per_block = len(cfg.sublayers)  # mixing layers per block
    final_eval = None
    bar = _bar(args.steps, f"{args.backend} {variant}-L{depth}", progress)
    bar.update(start)
    t_start = time.perf_counter()
    with hooks.open_log() as log:
        for step in range(start, args.steps):
            measure = step % args.log_every == 0 or step == args.steps - 1
            ev = hooks.base.evaluate(*eval_set) if step % args.eval_every == 0 else {}
            inputs, targets, mask = data.next()
            t0 = time.perf_counter()
            out = trainer.step(inputs, targets, mask, lr=lr_at(step, args.lr, args.warmup),
                               record_rows=args.metric_rows if measure else 0)
            dt = time.perf_counter() - t0
            event = int(out["skipped"])
            events += event
            streak = streak + 1 if event else 0
            rec = {"step": step, "loss": out["loss"], "lr": lr_at(step, args.lr, args.warmup),
                   "grad_norm": out["grad_norm"], "mixing_grad_norm": out["mixing_grad_norm"],
                   "layer_grad_norm": out["layer_grad_norm"], "nan_inf_event": event,
                   "nonfinite_loss": int(out["nonfinite_loss"]),
                   "nonfinite_grad_tensors": out["nonfinite_grad_tensors"], "nan_inf_events_total": events,
                   # tokens = batch x sequence: digits inputs are [B, T, patch_dim] pixel values
                   "tokens_per_sec": int(np.prod(inputs.shape[:2])) / dt, "step_time_s": dt}
            if step % args.eval_every == 0:  # held-out, weights before this step's update
                rec.update(ev)
            stop = streak >= args.max_nonfinite  # diverged: this is the run's last step
            if step == args.steps - 1 or stop:  # and after the last update
                final_eval = hooks.base.evaluate(*eval_set)
                rec.update({f"{key}_final": v for key, v in final_eval.items()})
            if not event:
                losses.append(out["loss"])
                g = np.asarray(out["layer_grad_norm"])  # block norm = L2 over its sub-layers
                ratio_acc.append((float(np.linalg.norm(g[:per_block])), float(np.linalg.norm(g[-per_block:]))))
            if measure:
                if variant == "history":  # gains of the map the skip weights form (f = 0)
                    res, report = None, history_report(cfg, out["mixing_state"])
                else:
                    res = mixing_matrices(cfg, out["layer_inputs"], out["mixing_state"])
                    report = gain_report(res)
                rec.update(gain_summary(report))
                for k in gains_max:  # NaN gains (a NaN forward) are logged but do not set the max
                    if not np.isnan(rec[k]):
                        gains_max[k] = rec[k] if gains_max[k] is None else max(gains_max[k], rec[k])
                if step == args.steps - 1:
                    with open(os.path.join(run_dir, "res_final.json"), "w") as f:
                        json.dump(final_res(cfg, res) if res is not None else
                                  final_history(cfg, out["mixing_state"]), f)
            log.write(json.dumps(_jsonable(rec)) + "\n")
            log.flush()
            hooks.step_done(step + 1, acc())
            bar.update(1)
            bar.set_postfix(loss=f"{out['loss']:.4g}", nan=events)
            if stop:
                diverged = True
                break
    bar.close()
    if final_eval is None:  # a finished run resumed: score the weights as they are
        final_eval = hooks.base.evaluate(*eval_set)
    first, last = (np.mean([a for a, _ in ratio_acc]), np.mean([b for _, b in ratio_acc])) if ratio_acc else (0, 0)
    # a diverged run has no final training loss: its last finite losses are from before it
    # diverged (possibly step 0) and would enter the mean over seeds as if it had trained on
    tail = losses[-max(1, len(losses) // 10):] if losses and not diverged else [float("nan")]
    return {"run": os.path.basename(run_dir), "variant": variant, "depth": depth, "seed": args.seed, "lr": args.lr,
            "mixing_layers": cfg.n_mixing_layers, "steps_run": step + 1,
            "final_loss": losses[-1] if losses and not diverged else None,
            "last_finite_loss": losses[-1] if losses else None,
            "eval_loss_final": final_eval["eval_loss"], "eval_accuracy_final": final_eval["eval_accuracy"],
            "final_loss_avg10pct": float(np.mean(tail)),
            "max_composite_forward_gain": gains_max["composite_forward_gain_peak"],
            "max_composite_backward_gain": gains_max["composite_backward_gain_peak"],
            "nan_inf_events": events, "diverged": diverged,
            "grad_norm_first_last_ratio": float(first / last) if last > 0 else None,
            "wall_s": time.perf_counter() - t_start}


def _bar(total, desc, enabled):
    try:
        from tqdm import tqdm
    except ImportError:  # tqdm is in the 'experiments' extra; run without bars if absent
        enabled = False
    if not enabled:
        class _Null:
            def update(self, *a): pass
            def set_postfix(self, **k): pass
            def close(self): pass
        return _Null()
    return tqdm(total=total, desc=desc, leave=True, dynamic_ncols=True)


def _jsonable(obj):
    """JSON has no NaN / Inf: write them as strings 'nan' / 'inf' / '-inf' (plot_runs reads them)."""
    if isinstance(obj, float) and not np.isfinite(obj):
        return "nan" if np.isnan(obj) else ("inf" if obj > 0 else "-inf")
    if isinstance(obj, dict):
        return {k: _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    return obj


def write_summary(out_dir: str, args, versions, rows: list[dict], wall_s: float) -> None:
    """summary.json (every run, and per (variant, depth, lr) the spread over seeds) and summary.md."""
    import sweep_stats

    groups = sweep_stats.aggregate(rows)
    summary = {"backend": args.backend, "versions": versions, "task": args.task, "quick": args.quick,
               "model": args.model, "norm": args.norm, "res_init": args.res_init, "seeds": args.seeds, "lrs": args.lrs,
               "command": shlex.join(sys.argv), "wall_s": wall_s, "runs": rows, "groups": groups}
    with open(os.path.join(out_dir, "summary.json"), "w") as f:
        json.dump(_jsonable(summary), f, indent=2)
    fmt = lambda v, spec: "—" if v is None else format(v, spec)  # noqa: E731
    lines = [
        f"# Depth sweep: {', '.join(args.variants)} at depths {', '.join(map(str, args.depths))}",
        "",
        f"Backend {args.backend} ({', '.join(f'{k} {v}' for k, v in versions.items())}); task "
        f"`{args.task}`; model {args.model}, norm {args.norm}, res init {args.res_init}; dim {args.dim}, n {args.n}, seq {args.seq_len}, "
        f"batch {args.batch}, vocab {args.vocab}, {args.steps} steps, Adam lr {', '.join(map(format, args.lrs, ['g'] * len(args.lrs)))}, "
        f"seeds {', '.join(map(str, args.seeds))}; held-out eval every {args.eval_every} steps; wall {wall_s:.0f} s.",
        "Depth = blocks (transformer: attention + MLP, 2 mixing layers each; mlp: 1). Gains are Amax gains of the composite "
        "mixing matrix over all layers so far (max over depth, tokens and logged steps); 1 = no "
        "amplification. For `history` the composite is the map x_0 -> x_l that the skip weights form "
        "with every f set to 0 (mhc_core.history_gain_report). Grad ratio = mean over steps of the first "
        "block's gradient norm / the last block's (block = its sub-layers' weights). Held-out: loss / accuracy on the task's held-out set "
        "after the last update.",
        "",
        "## Mean ± sample std over seeds",
        "",
        *sweep_stats.markdown_table(groups),
        "",
        "## Every run",
        "",
        "| variant | depth | seed | lr | final loss | loss (last 10%) | held-out loss | held-out acc "
        "| max composite fwd gain | max composite bwd gain | NaN/Inf steps | grad ratio first/last | wall s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['variant']} | {r['depth']} | {r['seed']} | {r['lr']:g} | {fmt(r['final_loss'], '.4g')} "
            f"| {r['final_loss_avg10pct']:.4g} | {r['eval_loss_final']:.4g} | {r['eval_accuracy_final']:.3f} "
            f"| {fmt(r['max_composite_forward_gain'], '.3g')} | {fmt(r['max_composite_backward_gain'], '.3g')} "
            f"| {r['nan_inf_events']}{' (diverged)' if r['diverged'] else ''} "
            f"| {fmt(r['grad_norm_first_last_ratio'], '.3g')} | {r['wall_s']:.0f} |")
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    sweep_scale.setup(args)  # joins the process group under torchrun
    lm, versions = load_backend(args.backend, args.threads)
    runs = planned_runs(args)
    check_resumable(args, runs)  # nothing is written before every run's resume check passed
    os.makedirs(args.out, exist_ok=True)
    t0, rows = time.perf_counter(), []
    progress = not args.no_progress
    for run_args, variant, depth, run_dir in runs:
        rows.append(run_one(run_args, lm, versions, variant, depth, run_dir, progress))
    write_summary(args.out, args, versions, rows, time.perf_counter() - t0)
    if not args.no_plots:
        import plot_runs

        plot_runs.plot_runs(args.out)
    print(open(os.path.join(args.out, "summary.md")).read())
    print(f"wrote {args.out} in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
