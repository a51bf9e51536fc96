"""Measuring: time, ideal traffic and achieved bandwidth, copy bandwidth, peak memory; reports.

Timing (benchmarks/METHOD): on CUDA `triton.testing.do_bench` (CUDA events, warm-up
first, median of repeats); on the CPU a perf_counter loop, median. Inputs rotate among
several copies when one set would fit in L2, so repeated runs do not time the cache.

Ideal traffic (`ideal_bytes`): each input an op needs read once, each output written once,
in the dtypes the op takes and returns (x, h, y, out in the activation dtype; pre, post,
res and their gradients float32; phi float32 read once per call, dphi written once). The
whole step's ideal is the sum of its three ops' (the layer is the identity, so y = h);
forward+backward is forward + backward. Achieved GB/s = ideal bytes / median time;
"% copy" compares that with a device-to-device copy of a large tensor (bytes read +
written), measured on the same device in the same run.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import statistics
import subprocess
import time
from pathlib import Path

import torch

F32 = 4


# ----------------------------------------------------------------------------------------
# Ideal traffic per op (bytes), e = activation element size
# ----------------------------------------------------------------------------------------
def ideal_bytes(op: str, mode: str, n: int, c: int, tokens: int, e: int) -> int:
    w = n * n + 2 * n
    coef = n * n + 2 * n  # pre, post, res (float32)
    fwd = {
        "coefficients": tokens * (n * c * e + coef * F32) + n * c * w * F32,
        "pre_aggregate": tokens * (n * c * e + n * F32 + c * e),
        "post_residual": tokens * (2 * n * c * e + c * e + (n + n * n) * F32),
    }
    bwd = {  # read inputs + output grads, write input grads
        "coefficients": tokens * (2 * n * c * e + coef * F32) + 2 * n * c * w * F32 + 2 * (w + 3) * F32,
        "pre_aggregate": tokens * (2 * n * c * e + c * e + 2 * n * F32),
        "post_residual": tokens * (3 * n * c * e + 2 * c * e + 2 * (n + n * n) * F32),
    }
    if op == "step":
        parts = ("coefficients", "pre_aggregate", "post_residual")
        return sum(ideal_bytes(p, mode, n, c, tokens, e) for p in parts)
    return fwd[op] + (bwd[op] if mode == "fwd+bwd" else 0)


# ----------------------------------------------------------------------------------------
# Timing and memory
# ----------------------------------------------------------------------------------------
def time_ms(fn, device: torch.device, *, cpu_reps: int = 10, cpu_budget_s: float = 2.0) -> float:
    """Median milliseconds of `fn()` (warm-up excluded)."""
    if device.type == "cuda":
        import triton.testing

        return float(triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median"))
    fn()  # warm-up (and compile)
    times, start = [], time.perf_counter()
    while len(times) < cpu_reps and (len(times) < 3 or time.perf_counter() - start < cpu_budget_s):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def time_interleaved_ms(fns: dict, *, rounds: int = 9, budget_s: float = 6.0) -> dict:
    """CPU: median ms of each already-warm fn, timed in interleaved rounds (at least 3)."""
    times = {k: [] for k in fns}
    start = time.perf_counter()
    for r in range(rounds):
        if r >= 3 and time.perf_counter() - start > budget_s:
            break
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def peak_extra_mb(fn, device: torch.device) -> float | None:
    """Peak device memory above what was allocated before one call of `fn` (MiB); CUDA only."""
    if device.type != "cuda":
        return None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    fn()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - base) / 2**20


def copy_bandwidth_gbps(device: torch.device, nbytes: int) -> float:
    """Device copy bandwidth: (read + write bytes) / median time of `dst.copy_(src)`."""
    src = torch.empty(nbytes // 2, dtype=torch.bfloat16, device=device).normal_()
    dst = torch.empty_like(src)
    ms = time_ms(lambda: dst.copy_(src), device)
    return 2 * src.numel() * src.element_size() / (ms * 1e-3) / 1e9


def rotation_count(bytes_per_set: int, device: torch.device) -> int:
    """How many input copies to cycle through so they outgrow the cache (4x the L2 / LLC)."""
    if device.type == "cuda":
        l2 = getattr(torch.cuda.get_device_properties(device), "L2_cache_size", 50 * 2**20)
    else:
        l2 = 32 * 2**20  # a generous last-level cache
    return max(1, min(8, math.ceil(4 * l2 / max(bytes_per_set, 1))))


# ----------------------------------------------------------------------------------------
# Environment and reports
# ----------------------------------------------------------------------------------------
def environment(device: torch.device, repo: Path) -> dict:
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()
        except (OSError, subprocess.CalledProcessError):
            return None

    dirty = git("status", "--porcelain", "--", "backends", "mhc_core", "benchmarks")
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = f"CPU {platform.processor() or platform.machine()} ({torch.get_num_threads()} threads)"
    versions = {"torch": torch.__version__}
    for mod in ("triton", "liger_kernel", "hyper_connections"):
        try:
            from importlib.metadata import version

            versions[mod] = version({"liger_kernel": "liger-kernel", "hyper_connections": "hyper-connections"}.get(mod, mod))
        except Exception:  # noqa: BLE001 - not installed
            versions[mod] = None
    load = None
    if device.type == "cpu" and hasattr(os, "getloadavg"):
        load = round(os.getloadavg()[0], 2)  # other work on a shared machine skews CPU timings
    return {
        "device": device.type, "device_name": name, "cpu_load_avg_1min": load,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": (git("rev-parse", "--short", "HEAD") or "unknown") + ("+dirty" if dirty else ""),
        "versions": versions,
    }


def write_text_atomic(path: Path, text: str) -> None:
    """Write `text` to a temporary file beside `path`, then rename it over `path`: a run killed
    mid-write (a step past its time limit) leaves the previous complete file, never half of one."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


def write_reports(results: list[dict], env: dict, out_dir: Path, stem: str) -> tuple[Path, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    js, md = out_dir / f"{stem}.json", out_dir / f"{stem}.md"
    write_text_atomic(js, json.dumps({**env, "results": results}, indent=1) + "\n")
    write_text_atomic(md, markdown(results, env) + "\n")
    return js, md


def _cell(r: dict) -> str:
    if r.get("error", "").startswith("n/a"):
        return "n/a"
    if r.get("error"):
        return f"error: {r['error'][:60]}"
    cell = f"{r['ms']:.3f} ms, {r['GBps']:.0f} GB/s ({r['pct_copy_bw']:.0f}%)"
    if r.get("peak_mb") is not None:
        cell += f", {r['peak_mb']:.0f} MiB"
    return cell


def markdown(results: list[dict], env: dict) -> str:
    """One table per (op, mode): rows shapes, columns implementations."""
    lines = [f"# mHC benchmark — {env['device_name']}", "",
             f"date {env['date']}, commit {env['commit']}, versions {env['versions']}, "
             f"dtype {env.get('dtype')}, measured copy bandwidth {env.get('copy_bw_GBps', 0):.1f} GB/s"
             + (f", 1-min load average {env['cpu_load_avg_1min']} (shared machine: timings are noisy)"
                if env.get("cpu_load_avg_1min") is not None else ""), "",
             "Cells: median time, achieved GB/s of the op's ideal traffic (each input read once, each output "
             "written once; see benchmarks/harness.py) and % of the measured copy bandwidth"
             + (", peak extra memory." if env["device"] == "cuda" else "."), ""]
    if env.get("coefficient_fwd_configs"):
        lines += ["Coefficient forward launched with a sweep's best config at these shapes (`--fwd-configs`; "
                  "other shapes: the library's fwd_config):", ""]
        lines += [f"- {shape}: {cfg}" for shape, cfg in env["coefficient_fwd_configs"].items()] + [""]
    elif "coefficient_fwd_configs" in env:
        lines += ["`--fwd-configs` given, but none of the sweep's shapes is benchmarked here: the coefficient "
                  "forward launched with the library's fwd_config everywhere.", ""]
    keys = []
    for r in results:
        if (r["op"], r["mode"]) not in keys:
            keys.append((r["op"], r["mode"]))
    for op, mode in keys:
        rows = [r for r in results if r["op"] == op and r["mode"] == mode]
        # columns: implementations that exist for this op (all-"n/a" ones are dropped)
        impls = list(dict.fromkeys(r["impl"] for r in rows if not r.get("error", "").startswith("n/a")))
        shapes = list(dict.fromkeys((r["n"], r["C"], r["tokens"]) for r in rows))
        lines += [f"## {op} — {mode}", "", "| n | C | tokens | " + " | ".join(impls) + " |",
                  "|---" * (3 + len(impls)) + "|"]
        for n, c, t in shapes:
            cells = []
            for impl in impls:
                hit = [r for r in rows if r["impl"] == impl and (r["n"], r["C"], r["tokens"]) == (n, c, t)]
                cells.append(_cell(hit[0]) if hit else "—")
            lines.append(f"| {n} | {c} | {t} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)
