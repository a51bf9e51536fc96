"""Sweep the post_residual kernels' launch configurations on a CUDA GPU (backward first).

    python benchmarks/sweep_post_residual_bwd.py --out DIR          # CUDA: < 60 s on an H100
    python benchmarks/sweep_post_residual_bwd.py --interpret-smoke --out DIR   # CPU, interpreter

For n = 4, C in {1024, 4096}, tokens in {4096, 16384}, bf16: each candidate configuration of
the backward (`post_residual.BwdConfig`: C block, warps, tokens per program, C blocks looped
per program and pipeline stages) and of the forward (C block, warps) is first checked
against mhc_core's float64 autograd on the same inputs (64 tokens, the sweep's C; error
bound 2e-2 x max(1, max |reference|), as tests/triton/test_triton_streams.py), then timed
with `triton.testing.do_bench` (median). Reports milliseconds, the ideal traffic's GB/s
(benchmarks/harness.py: each input read once, each output written once) and its % of the
device's copy bandwidth measured in the same run. Writes DIR/sweep_post_residual_bwd.json
and .md; the default configuration (`bwd_config`) is marked, the fastest per shape is bold.

--interpret-smoke runs the same code on the CPU in the Triton interpreter at one tiny shape
(CI: tests/triton/test_sweep_post_residual_smoke.py); its timings mean nothing.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

if "--interpret-smoke" in sys.argv:  # must precede the first Triton kernel decoration
    os.environ["TRITON_INTERPRET"] = "1"

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (HERE, ROOT, ROOT / "backends"):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import torch  # noqa: E402

import harness  # noqa: E402
from cli_args import out_folder  # noqa: E402
import mhc_core  # noqa: E402
from mhc_core_torch.kernels import post_residual as pr  # noqa: E402

N = 4
GPU_SHAPES = [(N, c, t) for c in (1024, 4096) for t in (4096, 16384)]
SMOKE_SHAPES = [(N, 40, 3)]
Cfg = pr.BwdConfig
# backward candidates at n = 4: (C block, warps) pairs whose tile gives each thread 8
# contiguous bf16 (16-byte loads), then tokens per program, loops over C, fewer warps
BWD_GPU = [Cfg(1024, 4, 1, False), Cfg(512, 2, 1, False), Cfg(2048, 8, 1, False), Cfg(256, 1, 1, False),
           Cfg(1024, 8, 1, False), Cfg(512, 4, 1, False), Cfg(1024, 4, 2, False), Cfg(512, 2, 2, False),
           Cfg(256, 1, 4, False), Cfg(1024, 4, 1, False, 4, 2), Cfg(512, 2, 1, False, 4, 3),
           # around the 2026-11-28 H200 best (256 columns, 1 warp, 4 tokens): more tokens, wider blocks
           Cfg(256, 1, 8, False), Cfg(512, 1, 4, False), Cfg(128, 1, 8, False), Cfg(512, 2, 4, False),
           Cfg(256, 2, 4, False), Cfg(256, 1, 2, False)]
BWD_SMOKE = [Cfg(16, 1, 1, False), Cfg(32, 2, 2, False), Cfg(16, 1, 1, False, 2, 2)]
FWD_GPU = [(1024, 4), (512, 2), (2048, 8), (1024, 8)]   # (C block, warps); the default is (1024, 4) at n = 4
FWD_SMOKE = [(16, 1), (32, 2)]
TOL = 2e-2          # bf16 (float32 in the smoke run: same bound, loose)
BUDGET_S = 35.0     # stop timing new candidates past this (the rest are reported as skipped)


def _inputs(n, c, t, dtype, device, seed=0):
    g = torch.Generator(device=device).manual_seed(seed)   # drawn on the device: no host copy of 1 GB
    r = lambda *s: torch.randn(*s, generator=g, device=device)  # noqa: E731
    u = lambda *s: torch.rand(*s, generator=g, device=device)  # noqa: E731
    x, y, dout = r(t, n, c).to(dtype), r(t, c).to(dtype), r(t, n, c).to(dtype)
    post, res = 2 * u(t, n), u(t, n, n)
    return x, y, post, res, dout


def _oracle(x, y, post, res, dout):
    """(out, dx, dy, dpost, dres): mhc_core in float64 with torch autograd, same rounded inputs."""
    xs = [a.detach().double().requires_grad_(True) for a in (x, y, post, res)]
    out = mhc_core.post_residual(*xs)
    grads = torch.autograd.grad((out * dout.double()).sum(), xs)
    return (out.detach(), *grads)


def _worst(got, want) -> float:
    """max |got - want| / max(1, max |want|)."""
    want = want.double()
    return float((got.double() - want).abs().max() / max(1.0, float(want.abs().max())))


def check_bwd(cfg, n, c, dtype, device, tokens=64) -> float:
    x, y, post, res, dout = _inputs(n, c, tokens, dtype, device, seed=1)
    _, *want = _oracle(x, y, post, res, dout)
    return max(_worst(g, w) for g, w in zip(pr.post_residual_bwd(x, y, post, res, dout, config=cfg), want))


def check_fwd(bc, warps, n, c, dtype, device, tokens=64) -> float:
    x, y, post, res, _ = _inputs(n, c, tokens, dtype, device, seed=2)
    want = mhc_core.post_residual(x.double(), y.double(), post.double(), res.double())
    return _worst(pr.post_residual_fwd(x, y, post, res, block_c=bc, num_warps=warps), want)


def _time(fn, device, smoke: bool) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
    t0 = time.perf_counter()  # interpreter smoke run: one call (already compiled by the check)
    fn()
    return (time.perf_counter() - t0) * 1e3


def sweep(device: torch.device, smoke: bool, log=print, on_row=None) -> dict:
    """The report; on_row(report so far) after each row (the reports are rewritten then, so
    a run killed at its time limit keeps what it measured)."""
    dtype = torch.float32 if smoke else torch.bfloat16
    e = torch.empty((), dtype=dtype).element_size()
    shapes = SMOKE_SHAPES if smoke else GPU_SHAPES
    bwd_cands, fwd_cands = (BWD_SMOKE, FWD_SMOKE) if smoke else (BWD_GPU, FWD_GPU)
    copy = harness.copy_bandwidth_gbps(device, (1 << 20) if smoke else (1 << 30))
    check_tokens = 4 if smoke else 64
    t_start, rows = time.perf_counter(), []
    env = harness.environment(device, ROOT)

    def report():
        return dict(env=env, copy_gbps=round(copy, 1), smoke=smoke, seconds=round(time.perf_counter() - t_start, 1),
                    check_tokens=check_tokens, rows=rows)
    for n, c, t in shapes:
        default = pr.bwd_config(n, c)
        cands = [default] + [k for k in bwd_cands if k != default]
        x, y, post, res, dout = _inputs(n, c, t, dtype, device)
        jobs = [("bwd", k, (lambda k=k: pr.post_residual_bwd(x, y, post, res, dout, config=k)),
                 (lambda k=k: check_bwd(k, n, c, dtype, device, check_tokens))) for k in cands if k.block_c <= max(16, 2 * c)]
        fdef = (pr._block_c_fwd(n, c), 4)
        jobs += [("fwd", f, (lambda f=f: pr.post_residual_fwd(x, y, post, res, block_c=f[0], num_warps=f[1])),
                  (lambda f=f: check_fwd(f[0], f[1], n, c, dtype, device, check_tokens)))
                 for f in [fdef] + [f for f in fwd_cands if f != fdef] if f[0] <= max(16, 2 * c)]
        for mode, cfg, run, check in jobs:
            row = dict(n=n, C=c, tokens=t, dtype=str(dtype).replace("torch.", ""), mode=mode,
                       config=cfg._asdict() if mode == "bwd" else dict(block_c=cfg[0], num_warps=cfg[1]),
                       default=cfg == (default if mode == "bwd" else fdef), ms=None, gbps=None, pct_copy=None,
                       max_rel_err=None, ok=False, note="")
            if time.perf_counter() - t_start > BUDGET_S:
                row["note"] = f"skipped: past the {BUDGET_S:.0f} s budget"
                rows.append(row)
                continue
            try:
                row["max_rel_err"] = err = check()
                row["ok"] = err <= TOL
                if not row["ok"]:
                    row["note"] = f"wrong: error {err:.2e} > {TOL:.0e}"
                else:
                    ms = _time(run, device, smoke)
                    nbytes = harness.ideal_bytes("post_residual", "fwd", n, c, t, e)
                    if mode == "bwd":
                        nbytes = harness.ideal_bytes("post_residual", "fwd+bwd", n, c, t, e) - nbytes
                    row.update(ms=round(ms, 4), gbps=round(nbytes / ms / 1e6, 1),
                               pct_copy=round(100 * nbytes / ms / 1e6 / copy, 1))
            except Exception as ex:  # a configuration that fails to compile or launch is a finding
                row["note"] = f"{type(ex).__name__}: {str(ex).splitlines()[0][:200] if str(ex) else ''}"
            rows.append(row)
            log(f"{mode} n={n} C={c} T={t} {row['config']} ms={row['ms']} %copy={row['pct_copy']} "
                f"err={row['max_rel_err']} {row['note']}")
            if on_row is not None:
                on_row(report())
    return report()


def _cfg_text(mode: str, cfg: dict) -> str:
    if mode == "fwd":
        return f"BC {cfg['block_c']}, {cfg['num_warps']} warps"
    loop = f", {cfg['steps']} steps x {cfg['stages']} stages" if cfg["steps"] > 1 else ""
    return f"BC {cfg['block_c']}, {cfg['num_warps']} warps, {cfg['tokens']} tok/prog{loop}" + \
        (", dot" if cfg["dot"] else "")


def summary(report: dict) -> list[str]:
    """Per mode, each configuration timed at every shape: geometric mean of its time over the
    default's (< 1: faster than the default). The candidate to make the default is the lowest."""
    out = []
    for mode in ("bwd", "fwd"):
        rows = [r for r in report["rows"] if r["mode"] == mode]
        shapes = {(r["n"], r["C"], r["tokens"]) for r in rows}
        base = {(r["n"], r["C"], r["tokens"]): r["ms"] for r in rows if r["default"] and r["ms"]}
        by_cfg = {}
        for r in rows:
            if r["ms"] and (r["n"], r["C"], r["tokens"]) in base:
                by_cfg.setdefault(json.dumps(r["config"], sort_keys=True), []).append(
                    r["ms"] / base[(r["n"], r["C"], r["tokens"])])
        ranked = sorted((math.exp(sum(map(math.log, v)) / len(v)), k) for k, v in by_cfg.items() if len(v) == len(shapes))
        out += [f"{mode}: time / default, geometric mean over {len(shapes)} shapes (configurations timed at all of them):", ""]
        out += [f"- {g:.3f}  {_cfg_text(mode, json.loads(k))}" for g, k in ranked]
        out.append("")
    return out


def markdown(report: dict) -> str:
    env = report["env"]
    lines = [f"# post_residual launch sweep ({env.get('device_name', '?')})", "",
             f"{env.get('date', '')}, commit {env.get('commit', '?')}, versions {env.get('versions', {})}; "
             f"copy bandwidth {report['copy_gbps']} GB/s; {report['seconds']} s. Each configuration checked "
             f"against mhc_core float64 autograd first ({report['check_tokens']} tokens, bound {TOL} x max(1, max|ref|)). "
             "Regenerate: `python benchmarks/sweep_post_residual_bwd.py --out DIR`."
             + (" INTERPRETER SMOKE RUN: timings meaningless." if report["smoke"] else ""), ""]
    lines += summary(report) + [""]
    keys = sorted({(r["mode"], r["n"], r["C"], r["tokens"]) for r in report["rows"]}, key=lambda k: (k[0] != "bwd", k))
    for mode, n, c, t in keys:
        rows = [r for r in report["rows"] if (r["mode"], r["n"], r["C"], r["tokens"]) == (mode, n, c, t)]
        timed = [r for r in rows if r["ms"] is not None]
        best = min(timed, key=lambda r: r["ms"]) if timed else None
        lines += [f"## {mode}, n = {n}, C = {c}, {t} tokens", "",
                  "| configuration | ms | GB/s | % copy | max rel err | note |", "|---|---|---|---|---|---|"]
        for r in sorted(rows, key=lambda r: (r["ms"] is None, r["ms"] or 0)):
            name = _cfg_text(mode, r["config"]) + (" (default)" if r["default"] else "")
            ms = "-" if r["ms"] is None else (f"**{r['ms']:.4f}**" if r is best else f"{r['ms']:.4f}")
            err = "-" if r["max_rel_err"] is None else f"{r['max_rel_err']:.1e}"
            lines.append(f"| {name} | {ms} | {r['gbps'] or '-'} | {r['pct_copy'] or '-'} | {err} | {r['note']} |")
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=out_folder, required=True, help="folder for sweep_post_residual_bwd.{json,md}")
    ap.add_argument("--interpret-smoke", action="store_true", help="CPU, Triton interpreter, one tiny shape")
    args = ap.parse_args(argv)
    if args.interpret_smoke:
        device = torch.device("cpu")
    elif torch.cuda.is_available():
        device = torch.device("cuda")
    else:
        ap.error("no CUDA device: run on a GPU, or pass --interpret-smoke")
    args.out.mkdir(parents=True, exist_ok=True)

    def write(report):
        harness.write_text_atomic(args.out / "sweep_post_residual_bwd.json", json.dumps(report, indent=1) + "\n")
        harness.write_text_atomic(args.out / "sweep_post_residual_bwd.md", markdown(report))

    report = sweep(device, args.interpret_smoke, on_row=write)
    write(report)
    bad = [r for r in report["rows"] if not r["ok"] and not r["note"].startswith("skipped")]
    print(f"{len(report['rows'])} rows, {len(bad)} failed checks -> {args.out}/sweep_post_residual_bwd.md")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
