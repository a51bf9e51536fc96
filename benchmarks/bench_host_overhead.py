"""Host (Python) cost per call of the Triton path at tiny token counts, where the kernels
themselves take microseconds and eager training is bound by the CPU.

    python benchmarks/bench_host_overhead.py --out DIR                 # CUDA: real launches
    python benchmarks/bench_host_overhead.py --stub-kernels --out DIR  # CPU: our Python only

Rows: us per call (the fastest of `--rounds` rounds of `--calls` calls each, and the
median round), and the Python / C function calls during one call (a count the machine's
load does not move), for torch.add (one eager launch, the floor), the raw launchers (one
Triton launch each), each op of
`mhc_core_torch.kernels.ops` forward and forward+backward, and MHC(impl='triton') forward
and forward+backward around an identity layer (MHC(impl='reference') too on CUDA).
CUDA: each round is `calls` calls then one `torch.cuda.synchronize()`, so the figure is
the host's issue rate unless the GPU is the slower one (a kernel longer than the host's
cost per call shows up as that kernel's time).
--stub-kernels: kernels are decorated under TRITON_INTERPRET=1 and every launch returns
at once (`stubbed_launches`), so what is timed is our wrappers, checks, autograd glue and
torch's allocations on the CPU: the part of the host cost this project controls. Triton's
own launcher (binder, specialization key, driver call) is not in it (benchmarks/NOTES.md,
"Host overhead", estimates it).

Writes DIR/bench_host_overhead.{json,md}. Shape: --tokens 8, n = 4, C = 1024 (as
gpu_host1), bf16 on CUDA, float32 on the CPU. On a GPU, expected well under a minute
(not yet run there; compiling the kernels for T = 8 comes first; gpu_check.py gives it
90 s); a few seconds in stub mode.
"""
from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

if "--stub-kernels" in sys.argv:  # must precede the first Triton kernel decoration
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from cli_args import file_stem, non_negative_int, out_folder, positive_int  # noqa: E402


@contextlib.contextmanager
def stubbed_launches():
    """Every interpreted Triton launch (`kernel[grid](...)`) returns at once while inside;
    the kernels must have been decorated under TRITON_INTERPRET=1."""
    from triton.runtime.interpreter import InterpretedFunction

    saved = InterpretedFunction.run
    InterpretedFunction.run = lambda self, *args, grid, warmup, **kwargs: None
    # outputs of stubbed kernels are uninitialised memory; torch ops reading them (the
    # partial-sum reductions) would time denormal arithmetic, not the host's work
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        InterpretedFunction.run = saved
        torch.set_flush_denormal(False)  # torch's default


def us_per_call(fn, device: torch.device, *, calls: int, rounds: int) -> tuple[float, float]:
    """(fastest, median) over `rounds` of the mean microseconds per call of `calls`
    back-to-back calls (CUDA: synchronized once per round). Warm-up (and compilation)
    first. The fastest round is the figure to compare: on a shared machine the others
    include time other processes took."""
    for _ in range(3):
        fn()
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    sync()
    per_round = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(calls):
            fn()
        sync()
        per_round.append((time.perf_counter() - t0) / calls * 1e6)
    return min(per_round), statistics.median(per_round)


def calls_per_call(fn) -> tuple[int, int]:
    """(Python function calls, calls of C functions from Python) during one fn(): a count
    that, unlike time, does not depend on what else the machine is running."""
    counts = {"call": 0, "c_call": 0}

    def profile(frame, event, arg):
        if event in counts:
            counts[event] += 1

    fn()  # warm (first-call caches)
    sys.setprofile(profile)
    try:
        fn()
    finally:
        sys.setprofile(None)
    return counts["call"] - 1, counts["c_call"]  # less the call of fn itself


def cases(n: int, c: int, tokens: int, dtype: torch.dtype, device: torch.device, stub: bool) -> dict:
    """name -> fn() for every row (inputs made once; fwd+bwd rows drop .grad each call, as
    `zero_grad(set_to_none=True)` does, so no gradient accumulates)."""
    import mhc_core
    from mhc_core_torch import MHC
    from mhc_core_torch.kernels import ops
    from mhc_core_torch.kernels.post_residual import post_residual_fwd
    from mhc_core_torch.kernels.pre_aggregate import pre_aggregate_fwd

    g = torch.Generator().manual_seed(0)
    rand = lambda *s, dt=dtype: torch.rand(*s, generator=g).to(device=device, dtype=dt)  # noqa: E731
    x, y = rand(tokens, n, c), rand(tokens, c)
    pre, post, res = (rand(tokens, *s, dt=torch.float32) for s in ((n,), (n,), (n, n)))
    p = mhc_core.init_params(n, c)
    phi, bias, alpha = (torch.as_tensor(p[k], dtype=torch.float32, device=device).requires_grad_()
                        for k in ("phi", "bias", "alpha"))
    xg = x.clone().requires_grad_()
    prg, postg, resg, yg = (a.clone().requires_grad_() for a in (pre, post, res, y))
    dx, dh = torch.ones_like(x), torch.ones_like(y)
    leaves = (xg, prg, postg, resg, yg, phi, bias, alpha)

    def backward(out, grad, *extra):
        torch.autograd.backward([out, *extra], [grad, *(torch.ones_like(e) for e in extra)])
        for t in leaves:
            t.grad = None

    def coefficients_fb():
        pr, po, rs = ops.coefficients(xg, phi, bias, alpha)
        backward(pr, torch.ones_like(pr), po, rs)

    rows = {
        "torch.add (one eager launch)": lambda: torch.add(x, x),
        "pre_aggregate_fwd (raw launcher)": lambda: pre_aggregate_fwd(x, pre),
        "post_residual_fwd (raw launcher)": lambda: post_residual_fwd(x, y, post, res),
        "ops.coefficients fwd": lambda: ops.coefficients(x, phi.detach(), bias.detach(), alpha.detach()),
        "ops.pre_aggregate fwd": lambda: ops.pre_aggregate(x, pre),
        "ops.post_residual fwd": lambda: ops.post_residual(x, y, post, res),
        "ops.coefficients fwd+bwd": coefficients_fb,
        "ops.pre_aggregate fwd+bwd": lambda: backward(ops.pre_aggregate(xg, prg), dh),
        "ops.post_residual fwd+bwd": lambda: backward(ops.post_residual(xg, yg, postg, resg), dx),
    }
    impls = ["triton"] if stub else ["triton", "reference"]
    for impl in impls:
        m = MHC(torch.nn.Identity(), n, c, impl=impl).to(device)
        leaves += tuple(m.parameters())
        rows[f"MHC({impl}) fwd"] = (lambda m=m: m(xg))
        rows[f"MHC({impl}) fwd+bwd"] = (lambda m=m: backward(m(xg), dx))
    return rows


def run(args) -> dict:
    device = torch.device("cpu" if args.stub_kernels else "cuda")
    if not args.stub_kernels and not torch.cuda.is_available():
        raise SystemExit("bench_host_overhead: no CUDA device; use --stub-kernels on the CPU")
    dtype = torch.float32 if args.stub_kernels else torch.bfloat16
    results = []
    with stubbed_launches() if args.stub_kernels else contextlib.nullcontext():
        rows = cases(args.n, args.channels, args.tokens, dtype, device, args.stub_kernels)
        selected = {name: fn for name, fn in rows.items() if not args.only or any(s in name for s in args.only)}
        if not selected:
            raise SystemExit(f"bench_host_overhead: --only {args.only} matches none of the cases: {list(rows)}")
        for name, fn in selected.items():
            fastest, median = us_per_call(fn, device, calls=args.calls, rounds=args.rounds)
            py_calls, c_calls = calls_per_call(fn)
            results.append({"case": name, "us_per_call": round(fastest, 1), "median_us": round(median, 1),
                            "python_calls": py_calls, "c_calls": c_calls})
    env = harness.environment(device, HERE.parent)
    env.update(note=args.note, mode="stub-kernels (CPU, launches stubbed)" if args.stub_kernels else "cuda (real launches)",
               n=args.n, C=args.channels, tokens=args.tokens, dtype=str(dtype).split(".")[-1],
               calls=args.calls, rounds=args.rounds, cpu_load_avg_1min=(round(os.getloadavg()[0], 2)
                                                                         if hasattr(os, "getloadavg") else None))
    return {**env, "results": results}


def markdown(report: dict) -> str:
    lines = [f"# Host overhead per call — {report['mode']}", "",
             f"{report['device_name']}, date {report['date']}, commit {report['commit']}, versions "
             f"{report['versions']}, 1-min load average {report['cpu_load_avg_1min']}", "",
             *([report["note"], ""] if report.get("note") else []),
             f"n = {report['n']}, C = {report['C']}, tokens = {report['tokens']}, {report['dtype']}; "
             f"{report['rounds']} rounds of {report['calls']} calls each: the fastest round's us per call (the "
             "figure to compare) and the median round's; Python function calls and calls of C functions "
             "from Python during one call (counts: independent of the machine's load)", "",
             "| case | us per call | median | Python calls | C calls |", "|---|---|---|---|---|"]
    lines += [f"| {r['case']} | {r['us_per_call']:.1f} | {r['median_us']:.1f} | {r['python_calls']} | {r['c_calls']} |"
              for r in report["results"]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stub-kernels", action="store_true", help="CPU, Triton launches stubbed: our Python only")
    ap.add_argument("--out", type=out_folder, required=True, help="folder for bench_host_overhead.{json,md}")
    ap.add_argument("--stem", type=file_stem, default="bench_host_overhead")
    ap.add_argument("--tokens", type=non_negative_int, default=8)
    ap.add_argument("--n", type=positive_int, default=4)
    ap.add_argument("--channels", type=positive_int, default=1024)
    ap.add_argument("--calls", type=positive_int, default=50, help="calls per timed round")
    ap.add_argument("--rounds", type=positive_int, default=15)
    ap.add_argument("--only", nargs="*", help="only the cases whose name contains one of these")
    ap.add_argument("--note", default="", help="a line saying what was measured (e.g. which tree), in both reports")
    args = ap.parse_args(argv)
    from mhc_core_torch.triton_gate import MAX_STREAMS

    if args.n > MAX_STREAMS:
        ap.error(f"--n must be at most {MAX_STREAMS} (the Triton kernels' stream limit), got {args.n}")
    report = run(args)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.stem}.json").write_text(json.dumps(report, indent=1) + "\n")
    (args.out / f"{args.stem}.md").write_text(markdown(report))
    print(markdown(report))
    return report


if __name__ == "__main__":
    main()
