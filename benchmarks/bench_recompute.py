#!/usr/bin/env python
"""Block recompute and torch.compile: memory and time of a training step.

    python benchmarks/bench_recompute.py            # CPU (and CUDA where present)
    python benchmarks/bench_recompute.py --quick    # smaller, for a smoke run

Recompute (paper §4.3): the tiny LM at depth 48 (96 mixing layers), n = 4, one forward +
backward, for recompute off, the paper's block size sqrt(n L / (n + 2)) = 8, and 4 / 24.
Each configuration runs in a fresh subprocess so that peak numbers are its own. Measures:

- saved bytes: what autograd holds for backward when forward returns (distinct
  non-parameter storages, `training.recompute.saved_activation_bytes`): the stored
  activations recompute is about. Exact, deterministic.
- peak live (CPU): the most bytes torch's allocator held at once during the step, from
  torch.profiler's memory events (allocations minus frees in time order). The honest CPU
  peak: it includes the recomputed block and gradients.
- peak RSS delta (CPU): ru_maxrss after the step minus the RSS before it. Reported because
  it is what `top` shows, but glibc's malloc keeps freed heap memory (and raises its mmap
  threshold as large blocks are freed), so RSS does *not* fall with recompute on CPU.
- peak allocated (CUDA only): torch.cuda.max_memory_allocated over the step.
- MLX (CPU here): mx.get_peak_memory over the step, same model and settings.
- time: median of fwd+bwd over several repeats after one warm-up.

Compile: eager vs torch.compile (inductor, fullgraph) for one MHC step (fwd+bwd) and the
tiny LM at depth 4 (a deep model's inductor compile takes minutes on 2 CPU cores), with the
compile time (cold: inductor's on-disk caches disabled). Writes benchmarks/results/recompute_<device>.{json,md}.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
sys.path.insert(0, str(REPO / "benchmarks"))

from cli_args import out_folder  # noqa: E402
LM = dict(vocab=64, dim=64, n_heads=4, seq_len=64, variant="mhc", n=4, seed=0)
BATCH = 8


def _rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _batch(cfg, batch):
    import numpy as np

    rng = np.random.default_rng(1)
    return rng.integers(0, cfg.vocab, (batch, cfg.seq_len)), rng.integers(0, cfg.vocab, (batch, cfg.seq_len))


# --- children: one configuration per fresh process ----------------------------------------


def _peak_live_mb(prof) -> float:
    """Peak of the bytes torch's CPU allocator holds, from the profiler's memory events
    (each allocation +bytes, each free -bytes, in time order), relative to the start."""
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    live = peak = 0
    for e in events:
        if str(e.device_type()).endswith("CPU"):
            live += e.nbytes()
            peak = max(peak, live)
    return peak / 2**20


def child_torch(depth: int, block: int, batch: int, reps: int, device: str) -> dict:
    import torch

    from mhc_core.experiments.lm_config import LMConfig
    from mhc_core_torch.lm import TinyLM, masked_cross_entropy
    from mhc_core_torch.training.recompute import saved_activation_bytes

    torch.set_num_threads(1)
    cfg = LMConfig(n_layers=depth, **LM)
    model = TinyLM(cfg).to(device)
    model.recompute = block
    x, y = (torch.as_tensor(a, device=device) for a in _batch(cfg, batch))
    mask = torch.ones(cfg.seq_len, device=device)

    def step(count=False):
        fwd = lambda: masked_cross_entropy(model(x), y, mask)  # noqa: E731
        loss, saved = saved_activation_bytes(fwd, exclude=model.parameters()) if count else (fwd(), None)
        loss.backward()
        model.zero_grad(set_to_none=True)
        return saved

    rss0 = _rss_mb()
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    saved = step(count=True)  # the first step: the process's peak RSS is this configuration's
    out = {"saved_mb": saved / 2**20,
           "peak_rss_delta_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - rss0}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        step()
    out["cpu_peak_live_mb"] = _peak_live_mb(prof)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        out["cuda_peak_alloc_mb"] = (torch.cuda.max_memory_allocated() - base) / 2**20
    times = []
    for _ in range(reps):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    out["time_ms"] = 1e3 * statistics.median(times)
    return out


def child_mlx(depth: int, block: int, batch: int, reps: int) -> dict:
    import mlx.core as mx
    import mlx.nn as nn

    from mhc_core.experiments.lm_config import LMConfig
    from mhc_core_mlx.lm import TinyLM, masked_cross_entropy

    cfg = LMConfig(n_layers=depth, **LM)
    model = TinyLM(cfg)
    model.recompute = block
    x, y = (mx.array(a.astype("int32")) for a in _batch(cfg, batch))
    mask = mx.ones(cfg.seq_len)
    grad_fn = nn.value_and_grad(model, lambda: masked_cross_entropy(model(x), y, mask))
    mx.eval(model.parameters())
    mx.reset_peak_memory()
    base = mx.get_active_memory()
    loss, grads = grad_fn()
    mx.eval(loss, grads)
    out = {"mlx_peak_mb": (mx.get_peak_memory() - base) / 2**20}
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        loss, grads = grad_fn()
        mx.eval(loss, grads)
        times.append(time.perf_counter() - t0)
    out["time_ms"] = 1e3 * statistics.median(times)
    return out


def child_compile(what: str, reps: int) -> dict:
    import numpy as np
    import torch
    from torch import nn

    import mhc_core
    import mhc_core_torch
    from mhc_core.experiments.lm_config import LMConfig
    from mhc_core_torch.lm import TinyLM, masked_cross_entropy

    torch.set_num_threads(1)
    if what == "mhc_step":
        n, c, tokens = 4, 256, 1024
        module = mhc_core_torch.MHC(nn.Linear(c, c), n, c, init=mhc_core.init_params(n, c, phi_std=0.02, seed=0),
                               impl="reference")
        x = torch.randn(tokens, n, c, requires_grad=True)
        run = lambda fn: fn(x).square().sum().backward()  # noqa: E731
        shape = f"n={n}, C={c}, {tokens} tokens"
    else:
        cfg = LMConfig(n_layers=4, **LM)
        module = TinyLM(cfg)
        xb, yb = (torch.as_tensor(a) for a in _batch(cfg, BATCH))
        mask = torch.ones(cfg.seq_len)
        run = lambda fn: masked_cross_entropy(fn(xb), yb, mask).backward()  # noqa: E731
        shape = f"TinyLM depth 4, dim {cfg.dim}, seq {cfg.seq_len}, batch {BATCH}"
    compiled = torch.compile(module, fullgraph=True)  # inductor
    t0 = time.perf_counter()
    run(compiled)
    compile_s = time.perf_counter() - t0
    out = {"shape": shape, "compile_s": compile_s}
    for name, fn in (("eager", module), ("inductor", compiled)):
        run(fn)
        times = []
        for _ in range(reps):
            t0 = time.perf_counter()
            run(fn)
            times.append(time.perf_counter() - t0)
        out[f"{name}_ms"] = 1e3 * statistics.median(times)
    out["speedup"] = out["eager_ms"] / out["inductor_ms"]
    del np
    return out


# --- parent: spawn, collect, report -----------------------------------------------------


def _spawn(args: list[str], timeout: int = 1800) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([str(REPO), str(REPO / "backends")]),
               TORCHINDUCTOR_FORCE_DISABLE_CACHES="1")  # compile time measured cold, not from an earlier run's cache
    proc = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO)
    if proc.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def environment(device: str) -> dict:
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        pass
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                                text=True).stdout.strip()
    except OSError:
        commit = None
    env = {"date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
           "device": device, "cpu": cpu, "cpu_count": os.cpu_count(), "threads": 1,
           "load_avg_1min": round(os.getloadavg()[0], 2), "platform": platform.platform(),
           "python": platform.python_version(), "torch": torch.__version__}
    if device.startswith("cuda"):
        env["gpu"] = torch.cuda.get_device_name(0)
    try:
        import mlx.core as mx

        env["mlx"] = mx.__version__
    except ImportError:
        pass
    return env


def markdown(res: dict) -> str:
    e = res["environment"]
    lines = [f"# Block recompute and torch.compile — {e['device']}", "",
             f"{e['date']}, commit {e['commit']}, {e['cpu']} ({e['cpu_count']} cores, 1 thread used), "
             f"load average {e['load_avg_1min']} (shared machine: times are noisy), torch {e['torch']}"
             + (f", mlx {e['mlx']}" if "mlx" in e else "") + (f", GPU {e['gpu']}" if "gpu" in e else "") + ".", "",
             f"## Recompute: tiny LM depth {res['depth']} ({2 * res['depth']} mixing layers), n=4, dim {LM['dim']}, "
             f"seq {LM['seq_len']}, batch {res['batch']}, float32, one fwd+bwd", "",
             "block = mixing layers per recomputed block (0 = off; paper's sqrt(nL/(n+2)) = "
             f"{res['paper_block']}). Saved = bytes autograd holds for backward when forward returns "
             "(parameters excluded; exact). Peak live = most bytes torch's CPU allocator held at once "
             "during fwd+bwd (torch.profiler memory events): the real peak, recomputed block and "
             "gradients included. Peak RSS delta = process max RSS minus RSS before the step: it does "
             "not fall, because glibc malloc keeps freed heap pages (so on CPU the saving shows in the "
             "allocator, not in RSS). MLX peak = mx.get_peak_memory over the step minus active memory "
             "before.", ""]
    torch_rows = res["torch"]
    head = "| block | saved MB | peak live MB | peak RSS delta MB | torch fwd+bwd ms |"
    sep = "|---|---|---|---|---|"
    if torch_rows and "cuda_peak_alloc_mb" in torch_rows[0]:
        head, sep = head + " CUDA peak alloc MB |", sep + "---|"
    if res.get("mlx"):
        head, sep = head + " MLX peak MB | MLX fwd+bwd ms |", sep + "---|---|"
    lines += [head, sep]
    for i, r in enumerate(torch_rows):
        row = (f"| {r['block']} | {r['saved_mb']:.1f} | {r['cpu_peak_live_mb']:.1f} | {r['peak_rss_delta_mb']:.1f} "
               f"| {r['time_ms']:.0f} |")
        if "cuda_peak_alloc_mb" in r:
            row += f" {r['cuda_peak_alloc_mb']:.1f} |"
        if res.get("mlx"):
            m = res["mlx"][i] if i < len(res["mlx"]) else None  # a run stopped early has fewer MLX rows
            row += f" {m['mlx_peak_mb']:.1f} | {m['time_ms']:.0f} |" if m else " - | - |"
        lines.append(row)
    if not res["environment"]["device"].startswith("cuda"):
        lines += ["", "GPU: not measured (no CUDA device on this machine). The same script records "
                  "torch.cuda.max_memory_allocated and CUDA-synchronised times where one exists."]
    lines += ["", "The paper's block size minimises kept inputs + one block of *mHC* activations; here a block "
              "recomputes its attention and MLP too (whole-block checkpointing), whose activations are larger, "
              "so a smaller block can give a lower peak. Time: recompute reruns each block's forward once.",
              "", "## torch.compile (inductor, fullgraph=True), fwd+bwd, 1 CPU thread", "",
              "Compile s: first call, cold (TORCHINDUCTOR_FORCE_DISABLE_CACHES=1).", "",
              "| what | shape | eager ms | inductor ms | speedup | compile s |", "|---|---|---|---|---|---|"]
    for name, r in res["compile"].items():
        lines.append(f"| {name} | {r['shape']} | {r['eager_ms']:.2f} | {r['inductor_ms']:.2f} | "
                     f"{r['speedup']:.2f}x | {r['compile_s']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    p.add_argument("--quick", action="store_true", help="depth 8, fewer repeats (smoke run)")
    p.add_argument("--no-compile", action="store_true")
    p.add_argument("--no-mlx", action="store_true")
    p.add_argument("--out", type=out_folder, default=RESULTS, help="folder for recompute_<device>.{json,md}")
    args = p.parse_args(argv)
    if args.child:
        kind, *rest = args.child
        if kind == "torch":
            out = child_torch(int(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]), rest[4])
        elif kind == "mlx":
            out = child_mlx(int(rest[0]), int(rest[1]), int(rest[2]), int(rest[3]))
        else:
            out = child_compile(rest[0], int(rest[1]))
        print(json.dumps(out))
        return 0

    import torch

    from mhc_core_torch.training.recompute import paper_block_size

    device = "cuda" if torch.cuda.is_available() else "cpu"
    depth, reps = (8, 2) if args.quick else (48, 3)
    paper = paper_block_size(4, 2 * depth)
    blocks = sorted({0, paper, max(1, paper // 2), min(2 * depth, 3 * paper)})
    res = {"environment": environment(device), "depth": depth, "batch": BATCH, "paper_block": paper,
           "torch": [], "mlx": [], "compile": {}}
    stem = f"recompute_{device}" + ("_quick" if args.quick else "")

    def write():  # after every measurement: a run stopped early (Ctrl-C) keeps what it measured
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / f"{stem}.json").write_text(json.dumps(res, indent=2))
        (args.out / f"{stem}.md").write_text(markdown(res))

    for b in blocks:
        r = {"block": b, **_spawn(["torch", str(depth), str(b), str(BATCH), str(reps), device])}
        print("torch", r, flush=True)
        res["torch"].append(r)
        write()
    if not args.no_mlx:
        try:
            import mlx.core  # noqa: F401
        except ImportError:
            pass
        else:
            for b in blocks:
                r = {"block": b, **_spawn(["mlx", str(depth), str(b), str(BATCH), str(reps)])}
                print("mlx", r, flush=True)
                res["mlx"].append(r)
                write()
    if not args.no_compile:
        for what in ("mhc_step", "tiny_lm"):
            r = _spawn(["compile", what, str(reps + 2)])
            print("compile", what, r, flush=True)
            res["compile"][what] = r
            write()
    write()
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
