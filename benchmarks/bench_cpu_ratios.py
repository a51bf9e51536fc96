#!/usr/bin/env python
"""CPU cost of an mHC step against HC and a residual block, as ratios measured in one process.

    python benchmarks/bench_cpu_ratios.py                 # all sections, ~5-10 min on 2 cores
    python benchmarks/bench_cpu_ratios.py --sections block bandwidth --rounds 5

Every section times its contenders interleaved (one call of each per round, several rounds)
and reports medians, so a change of machine load hits all contenders alike; `uptime` is
recorded before and after each section. torch runs single-threaded (as the depth sweep
does: on a shared 2-core machine a second intra-op thread only waits for the scheduler).

Sections (the targets of the CPU-speed issue are beside each):
- sweep:     torch `Trainer.step` of the quick depth-sweep model (dim 32, n 4, batch 8 x 16
             tokens) for residual / hc / mhc at depths 12, 24, 48 (target: mhc <= 1.3x hc):
             each contender trains on its task stream (`incrementing`, as
             scripts/depth_sweep.py --quick) for one untimed warm-up step, then the quick
             sweep's 120 steps timed in 12 interleaved chunks of 10 (--rounds does not
             apply). The whole run matters: Sinkhorn's fixed-point stop (mhc_core.sinkhorn)
             ends most calls within a few iterations in the first steps and few of them
             later, so early steps alone understate mHC's cost.
- block:     x [2048, 4, 512] around an MLP sub-layer (RMSNorm, 512 -> 2048 -> 512),
             forward + backward: residual, MHC eager (impl='auto'), HC eager, MHC under
             torch.compile (and around an identity layer: the mixing alone), lucidrains'
             hyper-connections mHC (targets: eager <= 1.35x residual, compiled <= 1.10x),
             and, as a floor for the compiled block, a 4-stream mixing with fixed
             coefficients (no projection, no Sinkhorn) around the same MLP, compiled.
             Ratios of medians, and of minima (each contender's least-disturbed call:
             steadier from run to run on a shared machine).
             Every .grad (parameters and x) is set to None before each call, as a training
             step's zero_grad does, so no contender adds into a previous call's gradients.
- bandwidth: eager pre_aggregate and post_residual at n 4, C 1024, 1024 tokens, forward and
             forward + backward (gradients returned by torch.autograd.grad, not added into
             .grad), as GB/s of their ideal traffic (harness.ideal_bytes) and % of the
             measured copy bandwidth (target: >= 40%); coefficients fwd+bwd time, eager and
             under torch.compile (the shim's narrow products transposed and plain).
- mlx:       the same on MLX (CPU backend on Linux): Trainer.step of the sweep model, eager
             and compiled=True, each with MLX autodiff and with the custom vjp; the block
             with an identity layer (MLX's CPU matmul is slow, so the mixing is compared
             with x + x).

Every contender's minor page faults per call are recorded beside its time (median). A
fault costs ~2 us on this VM, and glibc's malloc returns freed memory at the heap's top to
the OS once it exceeds a threshold, so a step whose temporaries peak higher can pay a few
thousand faults (~4096 per fresh 16 MiB buffer) that a smaller step does not. `--malloc keep`
sets glibc's thresholds (mallopt, as MALLOC_MMAP_THRESHOLD_ / MALLOC_TRIM_THRESHOLD_ would)
so freed memory stays in the process: the allocator tuning PyTorch's CPU performance guide
recommends (or a caching allocator: jemalloc, tcmalloc). The report records the mode.

Writes benchmarks/results/cpu_ratios.{json,md}. Runs appended to cpu_ratios_runs.log (one
`# label` line, then each section's `[name] {result json}` line) are pooled by pool_runs.py.
"""
from __future__ import annotations

import os

# Single-threaded like torch below (and the depth sweep): numpy's BLAS must not start a
# second thread either (set before numpy is imported).
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import resource  # noqa: E402
import statistics  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from cli_args import out_file, positive_int  # noqa: E402

SECTIONS = ("sweep", "block", "bandwidth", "mlx")
QUICK = dict(dim=32, n_heads=2, seq_len=16, vocab=32)  # scripts/depth_sweep.py PRESETS['quick']
BATCH = 8


def uptime() -> str:
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return f"load average {os.getloadavg()}"


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def interleaved(fns: dict, rounds: int, inner: int = 1) -> dict:
    """Median, minimum and mean ms (and median minor page faults) per call of each fn, one
    batch of `inner` calls per fn per round, after one warm-up call of each."""
    for fn in fns.values():
        fn()  # warm-up
    times, faults = {k: [] for k in fns}, {k: [] for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            f0, t0 = _minor_faults(), time.perf_counter()
            for _ in range(inner):
                fn()
            times[k].append((time.perf_counter() - t0) * 1e3 / inner)
            faults[k].append((_minor_faults() - f0) / inner)
    return {k: {"median_ms": statistics.median(v), "min_ms": min(v), "mean_ms": statistics.fmean(v), "runs": len(v),
                "faults_per_call": statistics.median(faults[k])} for k, v in times.items()}


MALLOC_MODES = ("default", "keep")
_DEFAULT_MALLOC = "glibc default (dynamic mmap / trim thresholds)"
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc malloc.h


def set_malloc(mode: str) -> str:
    """'default': glibc as configured. 'keep': mmap threshold 256 MiB and trim threshold
    1 GiB, so freed buffers stay in the heap for the next call (no page faults on reuse).
    Returns the setting in words; SystemExit where the C library is not glibc."""
    if mode == "default":
        return _DEFAULT_MALLOC
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        ok = libc.mallopt(_M_MMAP_THRESHOLD, 256 << 20) == 1 and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
    except (OSError, AttributeError) as e:
        raise SystemExit(f"--malloc keep needs glibc's mallopt: {e}") from None
    if not ok:
        raise SystemExit("--malloc keep: glibc's mallopt refused the thresholds (256 MiB mmap, 1 GiB trim)")
    return "kept: mallopt M_MMAP_THRESHOLD 256 MiB, M_TRIM_THRESHOLD 1 GiB"


def _data(vocab: int, seq: int):
    rng = np.random.default_rng(0)
    return rng.integers(0, vocab, (BATCH, seq)), rng.integers(0, vocab, (BATCH, seq)), np.ones(seq)


# ----------------------------------------------------------------------------------------
# torch
# ----------------------------------------------------------------------------------------
SWEEP_STEPS, SWEEP_CHUNK = 120, 10  # scripts/depth_sweep.py PRESETS['quick'] steps; steps per timed chunk


def bench_sweep() -> dict:
    import torch

    from mhc_core.experiments.data import make_stream
    from mhc_core.experiments.lm_config import LMConfig, init_lm_params
    from mhc_core_torch.lm import Trainer

    out = {}
    for depth in (12, 24, 48):
        fns = {}
        for v in ("residual", "hc", "mhc"):
            cfg = LMConfig(variant=v, n_layers=depth, n=1 if v == "residual" else 4, **QUICK)
            tr = Trainer(cfg, init_lm_params(cfg))
            data = make_stream("incrementing", vocab=QUICK["vocab"], seq_len=QUICK["seq_len"], batch_size=BATCH, seed=1)
            fns[v] = lambda tr=tr, data=data: tr.step(*data.next(), lr=1e-3)
        # one untimed warm-up step, then SWEEP_STEPS timed in interleaved chunks
        r = interleaved(fns, SWEEP_STEPS // SWEEP_CHUNK, inner=SWEEP_CHUNK)
        r["mhc/hc"] = r["mhc"]["median_ms"] / r["hc"]["median_ms"]
        r["mhc/hc, mean over the run"] = r["mhc"]["mean_ms"] / r["hc"]["mean_ms"]
        r["hc/residual"] = r["hc"]["median_ms"] / r["residual"]["median_ms"]
        out[f"depth{depth}"] = r
    out["torch_threads"] = torch.get_num_threads()
    out["steps"] = {"per_contender": SWEEP_STEPS + 1, "chunk": SWEEP_CHUNK, "task": "incrementing"}
    return out


def _mlp(torch, c: int):
    from torch import nn

    return nn.Sequential(nn.RMSNorm(c), nn.Linear(c, 4 * c, bias=False), nn.SiLU(), nn.Linear(4 * c, c, bias=False))


def _static_mixing(torch):
    from torch import nn

    class StaticMixing(nn.Module):
        """The mixing with fixed coefficients (learned, not input-dependent): h = pre^T x,
        out = res x + post f(h); x [T, n, C]. Under torch.compile its passes over x, the
        output and their gradients are what every n-stream block pays before mHC's
        projection and Sinkhorn: a floor for the compiled mHC block."""

        def __init__(self, layer, n):
            super().__init__()
            self.layer = layer
            self.res = nn.Parameter(torch.eye(n) * 0.9 + 0.1 / n)
            self.pre = nn.Parameter(torch.full((n,), 1.0 / n))
            self.post = nn.Parameter(torch.ones(n))

        def forward(self, x):
            y = self.layer(torch.einsum("tnc,n->tc", x, self.pre))
            return torch.einsum("mn,tnc->tmc", self.res, x) + self.post[:, None] * y[:, None, :]

    return StaticMixing


def bench_block(rounds: int, compile_: bool) -> dict:
    import torch
    from torch import nn

    from mhc_core_torch import MHC

    t, n, c = 2048, 4, 512
    torch.manual_seed(0)
    mlp = _mlp(torch, c)
    x1 = torch.randn(t, c, requires_grad=True)
    xn = torch.randn(t, n, c, requires_grad=True)
    g1, gn = torch.randn(t, c), torch.randn(t, n, c)

    def residual(x):
        return x + mlp(x)

    mods = {v: MHC(mlp, n, c, variant=v, seed=0) for v in ("mhc", "hc")}
    StaticMixing = _static_mixing(torch)

    def fwd_bwd(fn, x, g):
        params = [x] + list(fn.parameters() if isinstance(fn, nn.Module) else mlp.parameters())

        def run():
            # as in a training step (optimizer.zero_grad's default): no gradient is added
            # into a previous step's .grad, the input's included
            for p in params:
                p.grad = None
            fn(x).backward(g)
        return run

    fns = {"residual": fwd_bwd(residual, x1, g1), "mhc eager": fwd_bwd(mods["mhc"], xn, gn),
           "hc eager": fwd_bwd(mods["hc"], xn, gn)}
    try:
        from hyper_connections import mHC as LucidMHC

        lucid = LucidMHC(n, dim=c, branch=mlp, sinkhorn_iters=20)
        xl, gl = torch.randn(n, t, c, requires_grad=True), torch.randn(n, t, c)  # '(b s) t d', b = 1
        fns["hyper-connections mhc"] = fwd_bwd(lucid, xl, gl)
    except ImportError as err:
        print(f"hyper-connections not installed ({err}); skipped", file=sys.stderr)
    compile_s = None
    if compile_:
        t0 = time.perf_counter()
        cm, cr = torch.compile(mods["mhc"]), torch.compile(residual)
        fwd_bwd(cm, xn, gn)()
        fwd_bwd(cr, x1, g1)()
        compile_s = time.perf_counter() - t0
        fns["mhc compiled"] = fwd_bwd(cm, xn, gn)
        fns["residual compiled"] = fwd_bwd(cr, x1, g1)
        # the mixing alone (identity layer): what mHC adds to the compiled block
        ci = torch.compile(MHC(nn.Identity(), n, c, seed=0))
        fwd_bwd(ci, xn, gn)()
        fns["mhc identity compiled"] = fwd_bwd(ci, xn, gn)
        # the floor of any 4-stream mixing: fixed res / pre / post, no projection, no Sinkhorn
        cs = torch.compile(StaticMixing(mlp, n))
        fwd_bwd(cs, xn, gn)()
        fns["static mixing compiled"] = fwd_bwd(cs, xn, gn)
    r = interleaved(fns, rounds)
    times = {k: v for k, v in r.items() if isinstance(v, dict)}
    base, base_min = r["residual"]["median_ms"], r["residual"]["min_ms"]
    r["ratios_vs_residual"] = {k: v["median_ms"] / base for k, v in times.items()}
    # minima: each contender's least-disturbed call, steadier than medians on a shared machine
    r["ratios_of_minima_vs_residual"] = {k: v["min_ms"] / base_min for k, v in times.items()}
    if compile_:
        r["mhc compiled / residual compiled"] = r["mhc compiled"]["median_ms"] / r["residual compiled"]["median_ms"]
        r["mhc compiled / residual compiled, minima"] = r["mhc compiled"]["min_ms"] / r["residual compiled"]["min_ms"]
        r["mhc compiled / static mixing compiled"] = (r["mhc compiled"]["median_ms"]
                                                      / r["static mixing compiled"]["median_ms"])
        r["compile_s"] = compile_s
    r["shape"] = [t, n, c]
    return r


def bench_bandwidth(rounds: int) -> dict:
    import torch

    import mhc_core
    from harness import ideal_bytes

    t, n, c = 1024, 4, 1024
    torch.manual_seed(0)
    x = torch.randn(t, n, c, requires_grad=True)
    pre, post = torch.rand(t, n, requires_grad=True), torch.rand(t, n, requires_grad=True)
    res, y = torch.rand(t, n, n, requires_grad=True), torch.randn(t, c, requires_grad=True)
    gh, go = torch.randn(t, c), torch.randn(t, n, c)
    p = {k: torch.tensor(v, requires_grad=True) for k, v in mhc_core.init_params(n, c, seed=0).items()}
    from mhc_core_torch import autograd as ag  # the nodes MHC's eager CPU path runs

    # fwd+bwd returns the gradients (torch.autograd.grad, as bench_mhc does on the GPU):
    # .backward() would also add each into its leaf's .grad, an extra read + write of every
    # input that is not the op's traffic (it cost pre_aggregate ~1/3 of its fwd+bwd time here)
    def coef_fb():
        out = ag.coefficients(x, p["phi"], p["bias"], p["alpha"])
        torch.autograd.grad(out, [x, p["phi"], p["bias"], p["alpha"]], [torch.ones_like(o) for o in out])

    fns = {
        "pre_aggregate fwd": lambda: ag.pre_aggregate(x.detach(), pre.detach()),
        "pre_aggregate fwd+bwd": lambda: torch.autograd.grad(ag.pre_aggregate(x, pre), [x, pre], gh),
        "post_residual fwd": lambda: ag.post_residual(x.detach(), y.detach(), post.detach(), res.detach()),
        "post_residual fwd+bwd": lambda: torch.autograd.grad(ag.post_residual(x, y, post, res), [x, y, post, res], go),
        "coefficients fwd+bwd": coef_fb,
    }
    fns.update(_compiled_coefficients(torch, coef_fb))
    src = torch.empty(64 * 2**20 // 4).normal_()  # 64 MB, past the last-level cache
    dst = torch.empty_like(src)
    fns["copy 64 MB"] = lambda: dst.copy_(src)  # timed in the same rounds as the ops
    r = interleaved(fns, rounds, inner=3)
    copy = 2 * src.numel() * 4 / (r.pop("copy 64 MB")["median_ms"] * 1e-3) / 1e9
    for key, v in r.items():
        op, mode = key.split(" ")[:2]
        if op == "coefficients":
            continue
        gb = ideal_bytes(op, mode, n, c, t, 4) / (v["median_ms"] * 1e-3) / 1e9
        v.update(gbps=gb, pct_copy=100 * gb / copy)
    plain = r["coefficients fwd+bwd compiled, plain orientation"]["median_ms"]
    r["coefficients compiled: transposed / plain orientation"] = r["coefficients fwd+bwd compiled"]["median_ms"] / plain
    r["copy_gbps (read + write, same rounds)"] = copy
    r["shape"] = [t, n, c]
    return r


def _compiled_coefficients(torch, coef_fb) -> dict:
    """The coefficient node's fwd+bwd under torch.compile, with the shim's narrow products
    ([T, n*C] @ [n*C, m] and the weight gradient) in the transposed orientation it uses
    (mhc_core.xp._TorchOps.NARROW) and, in the same rounds, as plain torch.matmul (NARROW = 0,
    set before each call: each compiled function keeps the graph traced with its setting)."""
    from mhc_core.xp import _TorchOps

    default = _TorchOps.NARROW
    fns = {}
    for name, narrow in (("coefficients fwd+bwd compiled", default),
                         ("coefficients fwd+bwd compiled, plain orientation", 0)):
        compiled = torch.compile(lambda: coef_fb())

        def run(compiled=compiled, narrow=narrow):
            _TorchOps.NARROW = narrow
            try:
                compiled()
            finally:
                _TorchOps.NARROW = default
        run()  # traced here, with its setting
        fns[name] = run
    return fns


# ----------------------------------------------------------------------------------------
# MLX
# ----------------------------------------------------------------------------------------
def bench_mlx(rounds: int) -> dict:
    import mlx.core as mx
    import mlx.nn as nn

    import mhc_core_mlx
    from mhc_core.experiments.lm_config import LMConfig
    from mhc_core_mlx.lm import Trainer

    inputs, targets, mask = _data(QUICK["vocab"], QUICK["seq_len"])
    out = {}
    depth = 12
    fns = {}
    for v in ("residual", "hc", "mhc"):
        for compiled in (False, True):
            for impl in ("reference", "custom_vjp"):
                if v == "residual" and impl != "reference":
                    continue
                tr = Trainer(LMConfig(variant=v, n_layers=depth, n=1 if v == "residual" else 4, **QUICK),
                             compiled=compiled)
                for m in tr.model.mixing_layers():
                    m.impl = impl
                fns[f"{v} {'compiled' if compiled else 'eager'} {impl}"] = (
                    lambda tr=tr: tr.step(inputs, targets, mask, lr=1e-3))
    r = interleaved(fns, rounds, inner=2)
    for mode in ("eager", "compiled"):
        for impl in ("reference", "custom_vjp"):
            r[f"mhc/hc {mode} {impl}"] = r[f"mhc {mode} {impl}"]["median_ms"] / r[f"hc {mode} {impl}"]["median_ms"]
    out[f"sweep_depth{depth}"] = r

    t, n, c = 2048, 4, 512
    x1 = mx.random.normal((t, c), key=mx.random.key(0))
    xn = mx.random.normal((t, n, c), key=mx.random.key(1))
    mods = {}
    for compiled in (False, True):
        for impl in ("reference", "custom_vjp"):
            mods[f"mhc {'compiled' if compiled else 'eager'} {impl}"] = mhc_core_mlx.MHC(
                nn.Identity(), n, c, compiled=compiled, impl=impl)

    def grad_of(module, x):
        def loss(params, x):
            module.update(params)
            return (module(x) ** 2).sum()
        g = mx.grad(loss, argnums=(0, 1))
        return lambda: mx.eval(g(module.trainable_parameters(), x))

    fns = {"residual (x + x)": lambda: mx.eval(mx.grad(lambda x: ((x + x) ** 2).sum())(x1))}
    fns.update({k: grad_of(m, xn) for k, m in mods.items()})
    r = interleaved(fns, rounds)
    base = r["residual (x + x)"]["median_ms"]
    r["ratios_vs_residual"] = {k: v["median_ms"] / base for k, v in r.items() if isinstance(v, dict)}
    r["shape"] = [t, n, c]
    out["identity_block"] = r
    out["mlx_version"] = mx.__version__
    return out


# ----------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------
def _git(*args):
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def _rows(result: dict, prefix: str = "") -> list[str]:
    """Table rows `| name | median ms | min ms | extra |` for every timed entry, then the
    ratios (plain floats and dicts of floats) of `result`, recursing into sub-sections."""
    rows, ratios = [], []
    for k, v in result.items():
        if isinstance(v, dict) and "median_ms" in v:
            extra = f"{v['gbps']:.1f} GB/s, {v['pct_copy']:.0f}% of copy" if "gbps" in v else ""
            faults = f"{v['faults_per_call']:.0f}" if "faults_per_call" in v else ""
            rows.append(f"| {prefix}{k} | {v['median_ms']:.1f} | {v['min_ms']:.1f} | {faults} | {extra} |")
        elif isinstance(v, dict) and all(isinstance(x, float) for x in v.values()):
            ratios += [f"| {prefix}{k}: {kk} | {x:.2f} |" for kk, x in v.items()]
        elif isinstance(v, dict):
            sub_rows, sub_ratios = _rows(v, f"{prefix}{k} ")
            rows += sub_rows
            ratios += sub_ratios
        elif isinstance(v, float):
            ratios.append(f"| {prefix}{k} | {v:.2f} |")
    return rows, ratios


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = ["# CPU cost ratios: mHC vs HC vs residual (one process, interleaved)", "",
             f"`{env['command']}` - date {env['date']}, commit {env['commit']}{' (+ uncommitted changes)' if env.get('dirty') else ''}, "
             f"{env['machine']}, torch {env['torch']}, torch threads {env['torch_threads']}, rounds {env['rounds']}, "
             f"malloc: {env.get('malloc', _DEFAULT_MALLOC)}.", "",
             "Medians (and minima) over interleaved rounds, fwd+bwd unless named otherwise; `uptime` before and "
             "after each section is the machine's load (a shared 2-core machine: absolute times are noisy, "
             "ratios of contenders timed in the same rounds much less so). Raw numbers: the .json beside this file.", ""]
    for name, sec in report["sections"].items():
        rows, ratios = _rows(sec["result"])
        lines += [f"## {name}", "", f"load before: `{sec['uptime_before']}`  ", f"load after: `{sec['uptime_after']}`", "",
                  "| contender | median ms | min ms | page faults / call | |", "|---|---|---|---|---|", *rows, "",
                  "| ratio | value |", "|---|---|", *ratios, ""]
    return "\n".join(lines)


def load_report(path: str) -> dict:
    """A results .json this script wrote (environment + sections), else SystemExit naming the file."""
    try:
        report = json.loads(Path(path).read_text())
        if not isinstance(report, dict) or not isinstance(report.get("environment"), dict) \
                or not isinstance(report.get("sections"), dict):
            raise ValueError("no 'environment' and 'sections' objects: not a bench_cpu_ratios.py report")
    except (OSError, ValueError) as e:
        raise SystemExit(f"--render: expected a results .json written by bench_cpu_ratios.py, "
                         f"could not use {path}: {type(e).__name__}: {e}") from None
    return report


def report_paths(out: Path) -> tuple[Path, Path]:
    """<out>.json and <out>.md. The suffixes are appended to the whole name (a dot inside it,
    as in `run_2026.11.29`, stays); an --out already ending in .json or .md names the pair."""
    if out.suffix in (".json", ".md"):
        out = out.with_suffix("")
    return out.with_name(out.name + ".json"), out.with_name(out.name + ".md")


def write_reports(report: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    json_path, md_path = report_paths(out)
    json_path.write_text(json.dumps(report, indent=1, default=float) + "\n")
    md_path.write_text(markdown(report) + "\n")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=None,
                    help="default: all (mlx only where MLX is installed)")
    ap.add_argument("--rounds", type=positive_int, default=7, help="interleaved rounds per section (>= 1)")
    ap.add_argument("--no-compile", action="store_true", help="skip torch.compile in the block section")
    ap.add_argument("--out", type=out_file, default=ROOT / "benchmarks" / "results" / "cpu_ratios",
                    help="reports' path without suffix: writes <out>.json and <out>.md")
    ap.add_argument("--render", metavar="JSON", help="only rewrite the .md of an existing results .json")
    ap.add_argument("--malloc", choices=MALLOC_MODES, default="default",
                    help="'keep': glibc keeps freed memory (no page faults on reuse; see the module doc)")
    args = ap.parse_args(argv)
    folders = [p for p in report_paths(args.out) if p.is_dir()]
    if folders and not args.render:
        ap.error(f"--out {args.out}: {folders[0]} is a folder, where a report file goes")
    import importlib.util

    has_mlx = importlib.util.find_spec("mlx") is not None
    if args.sections is None:
        args.sections = [name for name in SECTIONS if name != "mlx" or has_mlx]
    elif "mlx" in args.sections and not has_mlx:
        ap.error("--sections mlx needs MLX (pip install mlx); it is not importable here")
    if args.render:
        src = Path(args.render)
        src.with_suffix(".md").write_text(markdown(load_report(src)) + "\n")
        return 0

    malloc = set_malloc(args.malloc)  # before the first large allocation
    import torch

    torch.set_num_threads(1)
    report = {"environment": {
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "commit": _git("rev-parse", "--short", "HEAD"),
        "dirty": bool(_git("status", "--porcelain")), "machine": f"{platform.machine()} {os.cpu_count()} cores",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(), "rounds": args.rounds,
        "malloc": malloc, "command": " ".join([Path(sys.argv[0]).name] + sys.argv[1:])}, "sections": {}}
    runners = {"sweep": bench_sweep, "block": lambda: bench_block(args.rounds, not args.no_compile),
               "bandwidth": lambda: bench_bandwidth(args.rounds), "mlx": lambda: bench_mlx(args.rounds)}
    out = args.out
    for name in args.sections:
        before = uptime()
        t0 = time.perf_counter()
        result = runners[name]()
        report["sections"][name] = {"uptime_before": before, "uptime_after": uptime(),
                                    "wall_s": time.perf_counter() - t0, "result": result}
        print(f"[{name}] {json.dumps(result, default=float)}", flush=True)
        # rewritten after every section: a run stopped early (Ctrl-C) keeps the sections it finished
        write_reports(report, out)
    print(f"wrote {report_paths(out)[0]} and .md")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
