"""Benchmark the mHC ops and the whole step: ours (Triton) vs reference, torch.compile,
liger-kernel and hyper-connections. Writes JSON + markdown to benchmarks/results/.

    python benchmarks/bench_mhc.py            # CUDA: n=4, C in {1024, 4096, 7168},
                                              # tokens in {4096, 16384, 65536}, bf16
    python benchmarks/bench_mhc.py --cpu      # this machine: reference (eager, compiled)
                                              # vs hyper-connections, small shapes, fp32
    python benchmarks/bench_mhc.py --quick    # CUDA, one small shape (smoke test)
    python benchmarks/bench_mhc.py --interpret-smoke   # the CUDA code path on the CPU in the
                                              # Triton interpreter, tiny shape: checks the
                                              # harness runs; its times mean nothing

For each op (coefficients, pre_aggregate, post_residual, and the whole step around an
identity layer) and mode (fwd, fwd+bwd): median time, achieved GB/s of the op's ideal
traffic and % of the measured copy bandwidth (harness.py defines both), and peak extra
memory on CUDA. Before timing, our Triton path is checked against the reference on a small
input (CUDA). Needs `pip install --no-deps hyper-connections liger-kernel einops` for the
other libraries; a missing one is reported as such in the table, not silently dropped.

Targets (GPU): every shape faster than liger-kernel fwd+bwd; pre_aggregate and
post_residual at >= 80% of copy bandwidth at 16384 tokens x C = 4096.
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import sys
import traceback
from pathlib import Path

if "--interpret-smoke" in sys.argv:  # must precede the first Triton kernel decoration
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

import harness  # noqa: E402
from cli_args import file_stem, out_folder, positive_int, shape_pair  # noqa: E402
import impls  # noqa: E402

GPU_SHAPES = [(4, c, t) for c in (1024, 4096, 7168) for t in (4096, 16384, 65536)]
CPU_SHAPES = [(4, 256, 256), (4, 256, 2048), (4, 1024, 1024)]
MODES = ("fwd", "fwd+bwd")


def prepare(op, impl, n, c, t, dtype, device, mode):
    """(row, fn): fn() runs one forward (no grad) or forward+backward on rotating inputs;
    fn is None when the implementation does not exist here (row['error'] says why)."""
    row = {"op": op, "impl": impl, "mode": mode, "n": n, "C": c, "tokens": t, "dtype": str(dtype).split(".")[-1]}
    try:
        bench = impls.build(op, impl, n, c, t, dtype, device)
    except impls.Unavailable as why:
        return {**row, "error": f"n/a: {why}"}, None
    first = bench.make_inputs()
    per_set = sum(a.numel() * a.element_size() for a in first if isinstance(a, torch.Tensor))
    sets = [first] + [bench.make_inputs() for _ in range(harness.rotation_count(per_set, device) - 1)]
    cycle = itertools.cycle(sets)
    if mode == "fwd":
        def fn():
            with torch.no_grad():
                return bench.fn(*next(cycle))
        return row, fn
    leaves = {id(s): impls.differentiable(bench, s) for s in sets}
    cots = [torch.randn_like(o) for o in impls.outputs_tuple(bench.fn(*first))]

    def fn():
        ins = next(cycle)
        out = impls.outputs_tuple(bench.fn(*ins))
        return torch.autograd.grad(out, leaves[id(ins)], cots, allow_unused=True)
    return row, fn


def read_swept_fwd_configs(path: Path) -> dict:
    """{(n, K, T): FwdConfig} from a `sweep_coefficients_fwd.py` JSON's "best" list; a file
    that is missing or not such a sweep is a SystemExit naming the file (checked before any
    device work)."""
    from mhc_core_torch.kernels import coefficients_fwd as cf

    try:
        best = json.loads(Path(path).read_text())["best"]
        if not isinstance(best, list) or not best:
            raise ValueError(f"'best' must be a non-empty list (one entry per swept shape), got {best!r:.80}")
        table = {}
        for b in best:
            key = tuple(b[k] for k in ("n", "K", "T"))
            if not all(type(v) is int and v >= 1 for v in key) or key[1] % key[0]:
                raise ValueError(f"an entry's n, K, T must be integers >= 1 with K a multiple of n, got {key}")
            table[key] = cf.FwdConfig(**b["config"])
            table[key].check()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"--fwd-configs: expected a sweep_coefficients_fwd.json with a 'best' list, "
                         f"could not use {path}: {type(e).__name__}: {e}") from None
    return table


def use_swept_fwd_configs(path: Path, shapes=None) -> dict:
    """Launch the coefficient forward with the fastest correct config of a
    `sweep_coefficients_fwd.py` run (its JSON's "best") at each swept (n, K = n*C, T), bf16;
    every other shape keeps the library's `fwd_config`. A file that is not such a sweep, an
    empty "best", or an entry with a bad shape or config is a SystemExit naming the file.
    Returns {"n=.. C=.. T=..": config fields} for the report: of the swept shapes among
    `shapes` ((n, C, T) triples; None: all), the others printed as unused."""
    from mhc_core_torch.kernels import coefficients_fwd as cf

    table = read_swept_fwd_configs(path)
    library_choice = cf.fwd_config

    def swept_or_library(T, n, K, dtype, device, cc=None, sms=None):
        cfg = table.get((n, K, T)) if dtype == torch.bfloat16 else None
        return cfg or library_choice(T, n, K, dtype, device, cc, sms)

    cf.fwd_config = swept_or_library
    run = None if shapes is None else {(n, n * c, t) for n, c, t in shapes}
    label = lambda key: f"n={key[0]} C={key[1] // key[0]} T={key[2]}"  # noqa: E731
    unused = [label(k) for k in table if run is not None and k not in run]
    if unused:
        print(f"--fwd-configs: swept shapes not benchmarked in this run (their configs unused): {', '.join(unused)}")
    return {label(k): dataclasses.asdict(c) for k, c in table.items() if run is None or k in run}


def _failed(row, err):
    traceback.print_exc(limit=2)
    return {**row, "error": f"{type(err).__name__}: {str(err).splitlines()[0][:120] if str(err) else ''}"}


def measure_group(op, mode, n, c, t, impl_names, dtype, device, copy_bw) -> list[dict]:
    """All implementations of one (op, mode, shape). On CUDA each is timed alone (do_bench);
    on the CPU they are timed in interleaved rounds, so load from other work on a shared
    machine hits every implementation alike."""
    rows, fns = [], {}
    for impl in impl_names:
        try:
            row, fn = prepare(op, impl, n, c, t, dtype, device, mode)
            if fn is not None:
                fn()  # warm-up (and compile) before any timing
                fns[impl] = fn
        except Exception as err:  # noqa: BLE001 - one failure (OOM, unsupported) must not stop the sweep
            row = _failed({"op": op, "impl": impl, "mode": mode, "n": n, "C": c, "tokens": t}, err)
        rows.append(row)
    times = {}
    if device.type == "cuda":
        for impl, fn in list(fns.items()):
            try:
                times[impl] = harness.time_ms(fn, device)
            except Exception as err:  # noqa: BLE001
                rows = [_failed(r, err) if r["impl"] == impl else r for r in rows]
                fns.pop(impl)
            finally:
                torch.cuda.empty_cache()
    elif fns:
        times = harness.time_interleaved_ms(fns)
    ideal = harness.ideal_bytes(op, mode, n, c, t, torch.empty((), dtype=dtype).element_size())
    out = []
    for row in rows:
        impl = row["impl"]
        if impl in times:
            gbps = ideal / (times[impl] * 1e-3) / 1e9
            row = {**row, "ms": times[impl], "ideal_bytes": ideal, "GBps": gbps,
                   "pct_copy_bw": 100 * gbps / copy_bw, "peak_mb": harness.peak_extra_mb(fns[impl], device)}
        out.append(row)
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--cpu", action="store_true", help="CPU mode: reference vs hyper-connections, small shapes")
    ap.add_argument("--quick", action="store_true", help="one small shape (smoke test)")
    mode.add_argument("--interpret-smoke", action="store_true",
                      help="run the GPU code path on the CPU in the Triton interpreter (tiny shape, times meaningless)")
    ap.add_argument("--ops", default=",".join(impls.OPS))
    ap.add_argument("--impls", default=None, help="comma-separated subset of " + ",".join(impls.IMPLS))
    ap.add_argument("--out", type=out_folder, default=HERE / "results")
    ap.add_argument("--channels", type=positive_int, nargs="+", help="CUDA: C values (default 1024 4096 7168)")
    ap.add_argument("--tokens", type=positive_int, nargs="+", help="CUDA: token counts (default 4096 16384 65536)")
    ap.add_argument("--shapes", type=shape_pair, nargs="+", metavar="C:T",
                    help="CUDA: explicit (C, tokens) pairs, e.g. 4096:16384 (instead of the --channels x --tokens grid)")
    ap.add_argument("--stem", type=file_stem, help="report file name stem (default gpu_<device> / cpu / interpret_smoke)")
    ap.add_argument("--fwd-configs", type=Path, metavar="SWEEP_JSON",
                    help="launch the coefficient forward with the sweep's best config at each shape it swept "
                         "(sweep_coefficients_fwd.json; the report lists them)")
    args = ap.parse_args(argv)
    if (args.cpu or args.interpret_smoke) and (args.shapes or args.channels or args.tokens):
        ap.error("--shapes, --channels and --tokens choose the CUDA run's shapes; --cpu and --interpret-smoke "
                 "run fixed small shapes")
    if args.quick and (args.interpret_smoke or args.shapes or args.channels or args.tokens):
        ap.error("--quick picks one small shape; --interpret-smoke, --shapes, --channels and --tokens pick "
                 "their own (give one of them)")
    for flag, values in (("--shapes", args.shapes), ("--channels", args.channels), ("--tokens", args.tokens)):
        repeated = sorted({v for v in values or () if list(values).count(v) > 1})
        if repeated:
            ap.error(f"{flag} repeats {repeated}: each shape is benchmarked once")
    for flag, value, known in (("--ops", args.ops, impls.OPS), ("--impls", args.impls, impls.IMPLS)):
        if value is None:
            continue
        names = list(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
        unknown = [v for v in names if v not in known]
        if unknown or not names:
            ap.error(f"unknown {flag} {unknown}; expected a comma-separated subset of {','.join(known)}" if unknown
                     else f"{flag} names nothing; expected a comma-separated subset of {','.join(known)}")
        setattr(args, flag[2:], ",".join(names))

    if args.cpu and args.fwd_configs:
        ap.error("--fwd-configs sets the Triton coefficient forward's launch; --cpu runs no Triton kernel")
    if args.fwd_configs:
        read_swept_fwd_configs(args.fwd_configs)  # a bad file fails now, not after the correctness checks
    if args.interpret_smoke and os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("--interpret-smoke needs TRITON_INTERPRET=1 before the kernels are imported "
                         "(run this script directly, or set it in the environment)")
    wrong = {}  # op -> why ours-triton is not timed (it failed the check against the reference)
    if args.cpu or args.interpret_smoke:
        torch.set_num_threads(1)  # 2 shared cores: one thread avoids OpenMP oversubscription stalls
    if args.interpret_smoke:
        device, dtype = torch.device("cpu"), torch.bfloat16
        shapes, default_impls, stem = [(4, 40, 20)], impls.IMPLS, "interpret_smoke"
        for op in impls.OPS:
            err = impls.check_against_reference(op, 4, 40, dtype, device, tokens=20)
            print(f"check {op}: ours-triton vs reference, worst scaled error {err:.2e}")
            if not err < 2e-2:
                return 1
    elif args.cpu:
        device, dtype = torch.device("cpu"), torch.float32
        shapes = CPU_SHAPES[:1] if args.quick else CPU_SHAPES
        default_impls = ("reference", "reference+compile", "hyper-connections")
        stem = "cpu"
    else:
        if not torch.cuda.is_available():
            ap.error("no CUDA device: run with --cpu, or on a CUDA machine")
        device, dtype = torch.device("cuda"), torch.bfloat16
        shapes = [(4, 1024, 4096)] if args.quick else GPU_SHAPES
        if args.channels or args.tokens:
            shapes = [(4, c, t) for c in (args.channels or sorted({s[1] for s in GPU_SHAPES}))
                      for t in (args.tokens or sorted({s[2] for s in GPU_SHAPES}))]
        if args.shapes:
            shapes = [(4, c, t) for c, t in args.shapes]
        default_impls = impls.IMPLS
        stem = "gpu_" + torch.cuda.get_device_name(device).replace(" ", "_").lower()
        for op in impls.OPS:  # correctness before speed: a wrong kernel is not timed
            err = impls.check_against_reference(op, 4, 1024, dtype, device)
            print(f"check {op}: ours-triton vs reference, worst scaled error {err:.2e}")
            if not err < 2e-2:
                print(f"ours-triton disagrees with the reference on {op}: not timing it (the other ops go on)")
                wrong[op] = f"not timed: disagrees with the reference (worst scaled error {err:.2e})"
    ops_ = [o for o in args.ops.split(",") if o]
    impls_ = args.impls.split(",") if args.impls else default_impls

    env = harness.environment(device, HERE.parent)
    if args.fwd_configs:
        env["coefficient_fwd_configs"] = use_swept_fwd_configs(args.fwd_configs, shapes)
    copy_bw = harness.copy_bandwidth_gbps(device, 2**30 if device.type == "cuda" else 2**28)
    env.update(dtype=str(dtype).split(".")[-1], copy_bw_GBps=copy_bw)
    print(f"{env['device_name']}: copy bandwidth {copy_bw:.1f} GB/s")

    results = []
    for (n, c, t), op, mode in itertools.product(shapes, ops_, MODES):
        names = [i for i in impls_ if not (i == "ours-triton" and op in wrong)]
        rows = measure_group(op, mode, n, c, t, names, dtype, device, copy_bw)
        if len(names) < len(impls_):
            rows.append({"op": op, "impl": "ours-triton", "mode": mode, "n": n, "C": c, "tokens": t,
                         "error": wrong[op]})
        for r in rows:
            results.append(r)
            shown = r.get("error") or f"{r['ms']:.3f} ms  {r['GBps']:.1f} GB/s  {r['pct_copy_bw']:.0f}% copy"
            print(f"{op:14s} {mode:8s} n={n} C={c:5d} T={t:6d} {r['impl']:18s} {shown}", flush=True)
        # reports rewritten after every group: a run stopped at its time limit keeps what it measured
        js, md = harness.write_reports(results, env, args.out, args.stem or stem)
    print(f"wrote {js} and {md}")
    return 1 if wrong else 0


if __name__ == "__main__":
    sys.exit(main())
