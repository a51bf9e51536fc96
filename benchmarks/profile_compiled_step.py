#!/usr/bin/env python
"""Where a compiled mHC step's CPU time goes: torch.profiler over `torch.compile(MHC(...))`.

    python benchmarks/profile_compiled_step.py                    # identity layer, the mixing alone
    python benchmarks/profile_compiled_step.py --layer mlp --steps 5

x [tokens, n, C] (default 2048 x 4 x 512, the block of bench_cpu_ratios.py), forward +
backward, torch single-threaded. Inductor's generated C++ kernels are timed one by one
(torch._inductor.config.cpp.enable_kernel_profile), so every row is one kernel or one ATen
call: the phi projection's matmuls show as `aten::mm` with m = n*n + 2n columns, the stream
mixing, Sinkhorn and the norms as `graph_*_cpp_fused_*` kernels. Prints a markdown table
(ms per step, share of the step) and writes it with --out.
"""
from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_cpu_ratios import MALLOC_MODES, set_malloc  # noqa: E402
from cli_args import non_negative_float, out_file, positive_int  # noqa: E402


def profile_step(tokens: int, n: int, c: int, layer: str, steps: int,
                 min_ms: float = 0.05) -> tuple[list[tuple[str, float]], float]:
    """([(event name and input shapes, ms per step)] of the events with at least min_ms of self
    time per step, wall ms per step under the profiler) of the compiled step."""
    import torch
    import torch._inductor.config as inductor_config
    from torch import nn
    from torch.profiler import ProfilerActivity, profile

    from mhc_core_torch import MHC

    torch.set_num_threads(1)
    inductor_config.cpp.enable_kernel_profile = True
    torch.manual_seed(0)
    f = nn.Identity() if layer == "identity" else nn.Sequential(
        nn.RMSNorm(c), nn.Linear(c, 4 * c, bias=False), nn.SiLU(), nn.Linear(4 * c, c, bias=False))
    module = MHC(f, n, c, seed=0)
    compiled = torch.compile(module)
    x, g = torch.randn(tokens, n, c, requires_grad=True), torch.randn(tokens, n, c)

    def step():
        x.grad = None
        for p in module.parameters():
            p.grad = None
        compiled(x).backward(g)

    for _ in range(2):  # compile, then one warm step
        step()
    t0 = time.perf_counter()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(steps):
            step()
    wall = (time.perf_counter() - t0) / steps * 1e3
    rows = [(f"{e.key} {list(e.input_shapes) if e.input_shapes else ''}".strip(), e.self_cpu_time_total / steps / 1e3)
            for e in prof.key_averages(group_by_input_shape=True)]
    rows = sorted((r for r in rows if r[1] >= min_ms), key=lambda r: -r[1])
    return rows, wall


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--tokens", type=positive_int, default=2048)
    ap.add_argument("--n", type=positive_int, default=4)
    ap.add_argument("--dim", type=positive_int, default=512)
    ap.add_argument("--layer", choices=("identity", "mlp"), default="identity")
    ap.add_argument("--steps", type=positive_int, default=10)
    ap.add_argument("--min-ms", type=non_negative_float, default=0.05, help="leave out events below this (ms per step)")
    ap.add_argument("--out", type=out_file, help="also write the table to this .md file")
    ap.add_argument("--malloc", choices=MALLOC_MODES, default="default",
                    help="'keep': glibc keeps freed memory, no page faults on reuse (bench_cpu_ratios.py)")
    argv = sys.argv[1:] if argv is None else list(argv)
    args = ap.parse_args(argv)
    malloc = set_malloc(args.malloc)
    rows, wall = profile_step(args.tokens, args.n, args.dim, args.layer, args.steps, args.min_ms)
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip()
    lines = [f"# Compiled mHC step, CPU profile: x [{args.tokens}, {args.n}, {args.dim}], {args.layer} layer, fwd+bwd",
             "", f"`{Path(__file__).name} {' '.join(argv)}` at commit {commit}; {args.steps} profiled steps, "
             f"{wall:.1f} ms per step under the profiler; malloc: {malloc}; load: `{load}`", "",
             "| event (self time) | ms / step | share |", "|---|---|---|"]
    lines += [f"| `{name[:110]}` | {ms:.2f} | {100 * ms / wall:.0f}% |" for name, ms in rows]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
