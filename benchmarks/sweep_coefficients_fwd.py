"""Sweep the coefficient forward's launch configurations (kernels/coefficients_fwd.py).

    python benchmarks/sweep_coefficients_fwd.py --out benchmarks/results    # CUDA, ~75 s on an H200
    python benchmarks/sweep_coefficients_fwd.py --interpret-smoke --out /tmp/s   # CPU interpreter, tiny shape

For each shape (n = 4: C = 4096 at 16384 and 4096 tokens, C = 1024 and 7168 at 16384; bf16 x,
float32 phi) and each candidate `FwdConfig` (token block, K block, warps, stages, K splits,
plus the launcher's own choice, `fwd_config`), it first
checks the candidate against references -- z against a float64 x @ phi * rsqrt(mean(x^2) + eps)
on all tokens, pre / post / res against the float64 oracle (mhc_core on numpy) on the first
64 tokens -- and skips a wrong one loudly (error in the report), then times it (CUDA:
triton.testing.do_bench median, inputs rotated so that they outgrow L2; CPU: perf_counter
median). The launcher's choice is timed at every shape first; candidates started after
--budget-s (default 35 s) are reported as skipped. Writes sweep_coefficients_fwd.{json,md} to
--out; the JSON's "best" (fastest correct config per shape) is what
`bench_mhc.py --fwd-configs` and `gpu_check.py --bench-swept-fwd` launch with.
`--interpret-smoke` runs the same code in the Triton interpreter at n = 4, C = 16, T = 40
with 16-wide blocks (tests/triton/test_sweep_coefficients_fwd.py runs it in CI).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

if __name__ == "__main__" and "--interpret-smoke" in sys.argv:  # before Triton decorates the kernels
    os.environ["TRITON_INTERPRET"] = "1"

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
for p in (ROOT, ROOT / "backends", HERE):
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

import numpy as np  # noqa: E402
import torch  # noqa: E402

import harness  # noqa: E402
from cli_args import out_folder, positive_float  # noqa: E402
import mhc_core  # noqa: E402
from mhc_core_torch.kernels import coefficients_fwd as cf  # noqa: E402

EPS = 1e-6
KW = dict(hc=False, iters=20, rms_eps=EPS, pre_eps=1e-6, sk_eps=1e-6, post_scale=2.0)
TOL = 1e-4          # max |err| / max(1, max |ref|): float32-level (bf16x3 / tf32x3 dots)
ORACLE_TOKENS = 64  # pre / post / res checked against the numpy oracle on this many tokens
BUDGET_S = 35.0     # default: stop timing new candidates past this (--budget-s)

# (n, C, T), the target shape first
GPU_SHAPES = [(4, 4096, 16384), (4, 4096, 4096), (4, 1024, 16384), (4, 7168, 16384)]
# FwdConfig fields (token block, K block, warps, stages, splits), in timing order: one launch
# (large T) first, then split-K (small T). Under Triton 3.6's ptxas for sm_90a (bf16, n = 4)
# none spills more than 4 B; K blocks of 128 spilled ~1 KB (and 128 x 128 needs 245 KB of
# shared memory): not swept. The budget cuts the tail of this list, not its head.
GPU_CANDIDATES = [(64, 64, 4, 3, 1), (128, 64, 8, 3, 1), (64, 32, 4, 3, 1), (128, 32, 8, 3, 1), (64, 64, 4, 2, 1),
                  (64, 64, 4, 4, 1), (64, 32, 4, 4, 1), (64, 64, 8, 3, 1), (32, 64, 4, 3, 1),
                  (64, 64, 4, 3, 2), (64, 64, 4, 3, 4), (64, 32, 4, 3, 4), (32, 64, 4, 3, 2), (64, 64, 4, 3, 8)]
SMOKE_SHAPES = [(4, 16, 40)]
SMOKE_CANDIDATES = [(16, 16, 4, 2, 1), (16, 16, 4, 2, 2), (32, 16, 4, 2, 1)]


def _inputs(n, c, t, device, seed=0):
    """bf16 x [t, n, c] drawn on the device (no GB-sized host tensor), float32 parameters."""
    g = torch.Generator(device=device).manual_seed(seed)
    x = torch.randn(t, n, c, generator=g, device=device).to(torch.bfloat16)
    p = mhc_core.init_params(n, c, phi_std=1.0 / np.sqrt(n * c), seed=seed, dtype=np.float64)
    phi, bias, alpha = (torch.from_numpy(p[k]).float().to(device) for k in ("phi", "bias", "alpha"))
    bias = bias + 0.5 * torch.randn(bias.shape, generator=g, device=device)
    return x, phi, bias, alpha


def _references(x, phi, bias, alpha):
    """(z float64 on all tokens, oracle pre / post / res on the first ORACLE_TOKENS)."""
    v = x.reshape(x.shape[0], -1).double()
    z = (v @ phi.double()) * torch.rsqrt((v * v).mean(1, keepdim=True) + EPS)
    head = [a.detach().double().cpu().numpy() for a in (x[:ORACLE_TOKENS], phi, bias, alpha)]
    want = mhc_core.coefficients(*head, iters=KW["iters"], rms_eps=EPS, pre_eps=KW["pre_eps"],
                                 sinkhorn_eps=KW["sk_eps"], post_scale=KW["post_scale"])
    return z, want


def _error(outs, refs) -> float:
    """Worst |err| / max(1, max |ref|) over z and the oracle's pre / post / res."""
    pre, post, res, z, _rs = outs
    zr, want = refs
    errs = [float((z.double() - zr).abs().max()) / max(1.0, float(zr.abs().max()))]
    for got, w in zip((pre, post, res), want):
        g = got[:ORACLE_TOKENS].double().cpu().numpy()
        errs.append(float(np.abs(g - w).max()) / max(1.0, float(np.abs(w).max())))
    return max(errs)


def _time(fn, device) -> float:
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=10, rep=40, return_mode="median"))
    return harness.time_ms(fn, device, cpu_reps=2, cpu_budget_s=1.0)


def _plan(shapes, candidates, device):
    """(shape, label, config) in timing order: the launcher's own choice at every shape first
    (the figures that matter most if the budget runs out), then each candidate across shapes."""
    autos = {shape: cf.fwd_config(shape[2], shape[0], shape[0] * shape[1], torch.bfloat16, device)
             for shape in shapes}
    plan = [(shape, "auto", autos[shape]) for shape in shapes]
    for cand in candidates:
        cfg = cf.FwdConfig(*cand)
        plan += [(shape, "", cfg) for shape in shapes if cfg != autos[shape]]  # the choice is timed once
    return plan


def sweep(shapes, candidates, device, budget_s=BUDGET_S, log=print, on_row=None) -> list[dict]:
    """Rows of every (shape, config) in _plan's order; on_row(rows) after each one (the
    reports are rewritten then, so a run killed at its time limit keeps what it measured)."""
    data = {}
    rows, t_start = [], time.perf_counter()
    for (n, c, t), label, cfg in _plan(shapes, candidates, device):
        row = dict(n=n, C=c, T=t, config=label, block_t=cfg.block_t, block_k=cfg.block_k,
                   num_warps=cfg.num_warps, num_stages=cfg.num_stages, splits=cfg.splits,
                   ms=None, gbps=None, max_err=None, error="")
        rows.append(row)
        if time.perf_counter() - t_start > budget_s:
            row["error"] = f"skipped: past the {budget_s:.0f} s budget"
            continue
        if (n, c, t) not in data:
            x, phi, bias, alpha = _inputs(n, c, t, device)
            copies = [x] + [x.clone() for _ in range(harness.rotation_count(x.numel() * x.element_size(), device) - 1)]
            data[(n, c, t)] = (x, phi, bias, alpha, copies, _references(x, phi, bias, alpha))
        x, phi, bias, alpha, copies, refs = data[(n, c, t)]
        t0 = time.perf_counter()
        try:
            err = _error(cf.coefficients_fwd(x, phi, bias, alpha, config=cfg, **KW), refs)
            row["max_err"] = err
            if not err <= TOL:
                row["error"] = f"WRONG: max err {err:.3e} > {TOL:g}; not timed"
                log(f"!!! n={n} C={c} T={t} {cfg}: {row['error']}")
            else:
                it = iter(range(1 << 62))
                row["ms"] = _time(lambda: cf.coefficients_fwd(copies[next(it) % len(copies)], phi, bias, alpha,
                                                              config=cfg, **KW), device)
                row["gbps"] = harness.ideal_bytes("coefficients", "fwd", n, c, t, x.element_size()) / (
                    row["ms"] * 1e-3) / 1e9
        except Exception as e:  # noqa: BLE001 - a candidate that fails to compile / launch is reported
            row["error"] = f"FAILED: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
            log(f"!!! n={n} C={c} T={t} {cfg}: {row['error']}")
        row["wall_s"] = round(time.perf_counter() - t0, 2)
        log(f"n={n} C={c} T={t} {label:4s} BT={cfg.block_t} BK={cfg.block_k} w={cfg.num_warps} "
            f"st={cfg.num_stages} S={cfg.splits}: {row['ms'] if row['ms'] is None else round(row['ms'], 4)} ms "
            f"err={row['max_err']} {row['error']}")
        if on_row is not None:
            on_row(rows)
    return rows


def markdown(rows, env) -> str:
    lines = [f"# Coefficient forward sweep ({env['device_name']})", "",
             f"date {env['date']}, commit {env['commit']}, versions {env['versions']}, bf16 x, float32 phi; "
             f"median time (do_bench on CUDA), GB/s of the ideal traffic (harness.ideal_bytes), max error vs "
             f"float64 references (bound {TOL:g}). Regenerate: `python benchmarks/sweep_coefficients_fwd.py`.", "",
             "| n | C | T | config | BT | BK | warps | stages | splits | ms | GB/s | max err | note |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ms = f"{r['ms']:.4f}" if r["ms"] is not None else "-"
        gb = f"{r['gbps']:.0f}" if r["gbps"] is not None else "-"
        err = f"{r['max_err']:.1e}" if r["max_err"] is not None else "-"
        lines.append(f"| {r['n']} | {r['C']} | {r['T']} | {r['config']} | {r['block_t']} | {r['block_k']} "
                     f"| {r['num_warps']} | {r['num_stages']} | {r['splits']} | {ms} | {gb} | {err} | {r['error']} |")
    lines += ["", "Fastest correct candidate per shape:", ""]
    for b in best(rows):
        cfg = b["config"]
        lines.append(f"- n={b['n']} C={b['C']} T={b['T']}: BT={cfg['block_t']} BK={cfg['block_k']} "
                     f"warps={cfg['num_warps']} stages={cfg['num_stages']} splits={cfg['splits']}: {b['ms']:.4f} ms"
                     + (f" (auto: {b['auto_ms']:.4f} ms)" if b["auto_ms"] is not None else ""))
    return "\n".join(lines) + "\n"


CONFIG_FIELDS = ("block_t", "block_k", "num_warps", "num_stages", "splits")


def best(rows) -> list[dict]:
    """Per swept shape, the fastest correct candidate: {n, C, T, K, config (FwdConfig fields), ms,
    auto_ms} (what `bench_mhc.py --fwd-configs` launches with)."""
    out = []
    for key in sorted({(r["n"], r["C"], r["T"]) for r in rows}):
        ok = [r for r in rows if (r["n"], r["C"], r["T"]) == key and r["ms"] is not None]
        if ok:
            b = min(ok, key=lambda r: r["ms"])
            auto = [r["ms"] for r in ok if r["config"] == "auto"]
            out.append(dict(n=key[0], C=key[1], T=key[2], K=key[0] * key[1], ms=b["ms"],
                            auto_ms=auto[0] if auto else None, config={f: b[f] for f in CONFIG_FIELDS}))
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=out_folder, default=HERE / "results")
    ap.add_argument("--interpret-smoke", action="store_true",
                    help="CPU, Triton interpreter, tiny shape (the CI check of this script)")
    ap.add_argument("--budget-s", type=positive_float, default=BUDGET_S,
                    help=f"stop timing new candidates after this many seconds (default {BUDGET_S:g})")
    args = ap.parse_args(argv)
    if args.interpret_smoke:
        if os.environ.get("TRITON_INTERPRET") != "1":
            raise SystemExit("--interpret-smoke needs TRITON_INTERPRET=1 before the kernels are imported "
                             "(run this script directly)")
        device, shapes, candidates = torch.device("cpu"), SMOKE_SHAPES, SMOKE_CANDIDATES
    else:
        if not torch.cuda.is_available():
            raise SystemExit("no CUDA device: run with --interpret-smoke for the CPU interpreter check")
        device, shapes, candidates = torch.device("cuda"), GPU_SHAPES, GPU_CANDIDATES
    t0 = time.perf_counter()
    env = harness.environment(device, ROOT)
    args.out.mkdir(parents=True, exist_ok=True)

    def write(rows):
        env["sweep_s"] = round(time.perf_counter() - t0, 1)
        report = dict(env=env, tol=TOL, rows=rows, best=best(rows))
        harness.write_text_atomic(args.out / "sweep_coefficients_fwd.json", json.dumps(report, indent=1) + "\n")
        harness.write_text_atomic(args.out / "sweep_coefficients_fwd.md", markdown(rows, env))

    rows = sweep(shapes, candidates, device, budget_s=args.budget_s, on_row=write)
    write(rows)
    wrong = [r for r in rows if r["error"] and not r["error"].startswith("skipped")]
    skipped = len([r for r in rows if r["error"].startswith("skipped")])
    print(f"{len(rows)} candidates in {env['sweep_s']} s, {len(wrong)} wrong or failed, {skipped} skipped "
          f"(budget) -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
