"""One command for a CUDA machine with no network: `make gpu-check` (this script).

    python benchmarks/gpu_check.py            # CUDA GPU, its own torch + triton preinstalled
    SMOKE=1 python benchmarks/gpu_check.py    # the same steps on the CPU, Triton interpreter,
                                              # tiny shapes (what CI runs; figures meaningless)

Steps, in order of what matters most, each with its own time limit (caps sum to 11 minutes;
about 7 expected on an H200 from the 2026-11-28 runs), every output in one folder
benchmarks/results/gpu_check_<device>_<UTC date>/ (SMOKE: gpu_check_smoke/; GPU_CHECK_OUT overrides;
an earlier run's outputs in a reused folder are removed first, see OUTPUTS):
1. install what the machine lacks from the git-ignored `.whl/` folder, offline
   (`pip install --no-index --find-links .whl`); `make wheels` fills it on a machine with
   network (see WHEELS below). Installed packages are never upgraded or replaced;
2. `bench_mhc.py` at n = 4, C = 4096 with 4096 / 16384 / 65536 tokens and C = 1024, 7168 with
   16384 tokens (`--shapes`), bf16,
   fwd and fwd+bwd, ours vs liger-kernel, with the device's copy bandwidth measured in the
   same process; then the reference path at C = 4096, 16384 tokens (bench_reference.*)
   (SMOKE: `--interpret-smoke`, tiny shape);
3. every test in tests/triton on the GPU (`-n 8` where pytest-xdist is installed), gpu-marked
   realistic shapes included (SMOKE: the empty-batch and one-dx-buffer tests on the CPU);
4. the block-size sweeps `sweep_*.py` (`--sweeps`: which; not in SMOKE); with
   `--bench-swept-fwd` the coefficient-forward sweep runs before step 2 instead, and the
   bench launches that op with the sweep's best config at each shape it swept;
   `bench_host_overhead.py`: host cost per call at T = 8 (each op, MHC(triton) fwd and
   fwd+bwd; SMOKE: `--stub-kernels`, launches stubbed, a few calls);
5. env.json (device, torch, triton, commit, date) and summary.md: what passed, where the
   figures are; the whole folder also as <folder>/<folder name>.tar.gz, rewritten after
   every step (one file to copy off the machine). Exit status 1 when a step failed; Ctrl-C
   stops the running step, writes the summary of the steps that finished, exit status 130.
A step past its limit is killed with its whole process group (pytest-xdist workers too).
"""
from __future__ import annotations

import datetime
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from cli_args import out_folder, shape_pair  # noqa: E402

ROOT = HERE.parent
WHEEL_DIR = ROOT / ".whl"
# (import name, distribution, pip flags): what a GPU box with its own torch may lack.
# --no-deps where the wheel would otherwise pull torch / triton over the preinstalled ones.
WHEELS = [
    ("array_api_compat", "array-api-compat", []),
    ("numpy", "numpy", []),
    ("pytest", "pytest", []),
    ("liger_kernel", "liger-kernel", ["--no-deps"]),
]
LIMITS_S = {"install": 60, "bench": 240, "bench_reference": 35, "pytest": 150, "sweep": 40,
            "sweep_coefficients_fwd": 100, "host": 30}  # caps in seconds; on an H200 a bench shape took ~45 s
SWEEP_BUDGET_S = {"sweep_coefficients_fwd": 75}  # the sweep stops timing new candidates past this


def _env() -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "backends"), env.get("PYTHONPATH", "")])
    if env.get("SMOKE") == "1":
        env["TRITON_INTERPRET"] = "1"
    else:
        env.pop("TRITON_INTERPRET", None)
    return env


def _run(cmd: list[str], log: Path, limit_s: int, env: dict) -> dict:
    """Run cmd, output to log; {'ok', 'rc', 'seconds', 'log'} (rc 124 on timeout). The command
    runs in its own process group, and a timeout kills the whole group: pytest-xdist workers
    outlive a killed pytest and would keep the GPU busy under the next step's timings."""
    t0 = time.time()
    with log.open("w") as f:
        f.write("$ " + " ".join(cmd) + "\n")
        f.flush()
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=f, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            rc = proc.wait(timeout=limit_s)
        except subprocess.TimeoutExpired:
            rc = 124
            _kill_group(proc)
            f.write(f"\n[gpu_check] timed out after {limit_s} s (process group killed)\n")
        except BaseException:  # Ctrl-C or a kill of gpu_check: its own session would outlive it
            _kill_group(proc)
            raise
    archive(log.parent)
    return {"ok": rc == 0, "rc": rc, "seconds": round(time.time() - t0, 1), "log": log.name}


def _kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL proc's process group (it leads one: start_new_session) and reap proc."""
    import signal

    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def archive(out: Path) -> Path:
    """out/<out name>.tar.gz holding every other file of out: one file to copy off the GPU box
    (rewritten after every step, so a run stopped early keeps what it wrote)."""
    import tarfile

    path = out / f"{out.name}.tar.gz"
    tmp = path.with_suffix(".tmp")
    with tarfile.open(tmp, "w:gz") as tar:
        for f in sorted(out.iterdir()):
            if f.is_file() and f not in (path, tmp):
                tar.add(f, arcname=f"{out.name}/{f.name}")
    tmp.replace(path)
    return path


def install_missing(out: Path, env: dict) -> dict:
    """pip install, offline from .whl/, each listed package whose import is missing."""
    missing = [(dist, flags) for mod, dist, flags in WHEELS if importlib.util.find_spec(mod) is None]
    log = out / "install.txt"
    if not missing:
        log.write_text("nothing missing: " + ", ".join(d for _, d, _ in WHEELS) + " importable\n")
        return {"ok": True, "rc": 0, "seconds": 0.0, "log": log.name, "installed": []}
    if not WHEEL_DIR.is_dir():
        log.write_text(f"missing {[d for d, _ in missing]} and no {WHEEL_DIR}: run `make wheels` where there is "
                       "network and copy .whl/ here\n")
        return {"ok": False, "rc": 1, "seconds": 0.0, "log": log.name, "installed": []}
    results = []
    for dist, flags in missing:
        r = _run([sys.executable, "-m", "pip", "install", "--no-index", "--find-links", str(WHEEL_DIR), *flags, dist],
                 out / f"install_{dist}.txt", LIMITS_S["install"], env)
        results.append((dist, r))
    log.write_text("".join(f"{d}: rc {r['rc']} (install_{d}.txt)\n" for d, r in results))
    return {"ok": all(r["ok"] for _, r in results), "rc": max(r["rc"] for _, r in results),
            "seconds": sum(r["seconds"] for _, r in results), "log": log.name, "installed": [d for d, _ in results]}


def _has_best(path: Path) -> bool:
    """Whether path is a sweep JSON with a non-empty "best" list (bench_mhc --fwd-configs
    refuses anything else, which would cost the whole bench step)."""
    try:
        best = json.loads(path.read_text()).get("best")
    except (OSError, ValueError, AttributeError):
        return False
    return isinstance(best, list) and bool(best)


DEFAULT_SHAPES = ["4096:16384", "4096:4096", "7168:16384", "4096:65536", "1024:16384"]  # the target shape first: the bench cap may cut the tail


def _shape_text(text: str) -> str:
    """A --shapes entry checked here (C:T, both >= 1) and passed on to bench_mhc as text."""
    c, t = shape_pair(text)
    return f"{c}:{t}"


# what a run writes into its folder: removed first from a reused folder (GPU_CHECK_OUT, the
# SMOKE folder), so a step that fails this time cannot leave an earlier run's figures in it
OUTPUTS = ("install*.txt", "bench*.txt", "bench*.json", "bench*.md", "sweep_*.txt", "sweep_*.json", "sweep_*.md",
           "pytest.txt", "host.txt", "env.json", "summary.md", "*.tar.gz", "*.tmp")


def clear_previous(out: Path) -> list[str]:
    """Delete an earlier run's outputs (OUTPUTS) from out; returns their names. Other files stay."""
    gone = sorted({f.name for pattern in OUTPUTS for f in out.glob(pattern) if f.is_file()})
    for name in gone:
        (out / name).unlink()
    return gone


def run_steps(args, smoke: bool, out: Path, env: dict, steps: dict) -> None:
    """The check's steps in order, each result added to `steps` as it finishes."""
    gone = clear_previous(out)
    if gone:
        print(f"gpu_check: removed {len(gone)} files of an earlier run from {out}")
    steps["install"] = install_missing(out, env)

    py = sys.executable

    def sweep(name):
        cmd = [py, str(HERE / f"{name}.py"), "--out", str(out)]
        cmd += ["--budget-s", str(SWEEP_BUDGET_S[name])] if name in SWEEP_BUDGET_S else []
        steps[name] = _run(cmd, out / f"{name}.txt", LIMITS_S.get(name, LIMITS_S["sweep"]), env)

    tuned = []
    if args.bench_swept_fwd:
        sweep("sweep_coefficients_fwd")  # (an earlier run's JSON was removed by clear_previous)
        if _has_best(out / "sweep_coefficients_fwd.json"):  # else the bench keeps the library's configs
            tuned = ["--fwd-configs", str(out / "sweep_coefficients_fwd.json")]
    bench = [py, str(HERE / "bench_mhc.py"), "--out", str(out), "--stem", "bench", *tuned]
    # SMOKE leaves liger out: its kernels take seconds per call in the interpreter
    bench += ["--interpret-smoke", "--impls", "ours-triton,reference"] if smoke else [
        "--shapes", *args.shapes, "--impls", "ours-triton,liger"]
    steps["bench"] = _run(bench, out / "bench.txt", LIMITS_S["bench"], env)
    if not smoke:
        steps["bench_reference"] = _run(
            [py, str(HERE / "bench_mhc.py"), "--out", str(out), "--stem", "bench_reference", "--channels", "4096",
             "--tokens", "16384", "--impls", "ours-triton,reference", *tuned], out / "bench_reference.txt",
            LIMITS_S["bench_reference"], env)

    if smoke:
        tests = ["tests/triton/test_triton_empty_batch.py", "tests/triton/test_triton_step.py::"
                 "test_step_backward_has_no_torch_elementwise_over_x", "tests/triton/test_triton_gpu_shapes.py"]
    else:  # every test, unchanged, on the GPU; in parallel where pytest-xdist is installed
        # -v: each result is logged as it finishes, so a run stopped at its limit still names failures
        tests = (["-n", "8"] if importlib.util.find_spec("xdist") else []) + ["-v", "tests/triton"]
    quiet = ["-q"] if smoke else []  # not with -v: the two cancel out (the log would show only dots)
    steps["pytest"] = _run([py, "-m", "pytest", *quiet, "-p", "no:cacheprovider", "-rs", *tests],
                           out / "pytest.txt", LIMITS_S["pytest"], env)
    if not smoke:
        for name in args.sweeps:
            if name not in steps:
                sweep(name)
    host = [py, str(HERE / "bench_host_overhead.py"), "--out", str(out)]
    host += ["--stub-kernels", "--calls", "5", "--rounds", "2"] if smoke else []
    steps["host"] = _run(host, out / "host.txt", LIMITS_S["host"], env)


def write_summary(out: Path, steps: dict, device: str, smoke: bool, interrupted: bool = False) -> None:
    """env.json and summary.md of the steps run so far (an interrupted run says so), and the
    folder's .tar.gz."""
    import torch

    try:  # a copy of the tree without git (or without .git) still gets its summary
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    except OSError:
        commit = ""
    commit = commit or "unknown (no git here)"
    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
            "device": device, "smoke": smoke, "torch": torch.__version__, "python": sys.version.split()[0],
            "triton": getattr(importlib.util.find_spec("triton"), "name", None) and __import__("triton").__version__,
            "cuda": torch.version.cuda, "steps": steps, "interrupted": interrupted}
    (out / "env.json").write_text(json.dumps(info, indent=1) + "\n")
    lines = [f"# gpu_check {'(SMOKE: CPU interpreter, times meaningless)' if smoke else ''}", "",
             f"{info['date']}, commit {commit[:10]}, device {device}, torch {info['torch']}, triton {info['triton']}",
             "", "| step | ok | rc | seconds | log |", "|---|---|---|---|---|"]
    lines += [f"| {k} | {'yes' if v['ok'] else 'NO'} | {v['rc']} | {v['seconds']} | {v['log']} |" for k, v in steps.items()]
    lines += ["", "**Interrupted** (Ctrl-C) during the step after the last one above: the later steps did not run."] \
        if interrupted else []
    lines += ["", "Benchmark figures: bench.md / bench.json (copy bandwidth measured in the same process); "
              "sweeps in sweep_*.md / .json; host cost per call: bench_host_overhead.md / .json."]
    (out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(f"results in {out} (all in one file: {archive(out).name})")


def main(argv=None) -> int:
    import argparse

    ap = argparse.ArgumentParser(description="GPU tests + benchmarks in one results folder (see module docstring)")
    # C = 4096 at every token count, the other widths at 16384 tokens: on an H200 one shape took
    # ~45 s with liger's compiles (results/gpu_h200_20261128), so the full 3 x 3 grid would not
    # fit the 8 minutes; `--shapes` takes any C:T list
    ap.add_argument("--shapes", nargs="+", type=_shape_text, help="bench (C, tokens) pairs as C:T (default "
                    + " ".join(DEFAULT_SHAPES) + "; not with SMOKE=1, whose bench runs one tiny shape)")
    sweeps = sorted(p.stem for p in HERE.glob("sweep_*.py"))
    ap.add_argument("--sweeps", nargs="*", choices=sweeps, default=None,
                    help="which launch sweeps to run (default all: " + " ".join(sweeps) + "; none: --sweeps)")
    ap.add_argument("--bench-swept-fwd", action="store_true",
                    help="run the coefficient-forward sweep first and bench with its best config per shape "
                         "(bench_mhc.py --fwd-configs; the report lists them)")
    args = ap.parse_args(argv)
    explicit_sweeps = args.sweeps is not None
    if args.sweeps is None:
        args.sweeps = sweeps
    if args.bench_swept_fwd and "sweep_coefficients_fwd" not in args.sweeps:
        ap.error("--bench-swept-fwd needs the sweep_coefficients_fwd sweep (leave it in --sweeps)")
    if os.environ.get("SMOKE", "") not in ("", "0", "1"):
        ap.error(f"SMOKE must be 1 (CPU smoke run), 0 or unset (CUDA run), got {os.environ['SMOKE']!r}")
    smoke = os.environ.get("SMOKE") == "1"
    if smoke and (args.shapes or args.bench_swept_fwd or explicit_sweeps):
        ap.error("--shapes, --sweeps and --bench-swept-fwd set the CUDA run; SMOKE=1 runs one tiny shape "
                 "(bench) in the interpreter and no sweep")
    repeated = sorted({c for c in args.shapes or () if args.shapes.count(c) > 1})
    if repeated:  # bench_mhc refuses them: the whole bench step would fail on the GPU
        ap.error(f"--shapes repeats {' '.join(repeated)}: each shape is benchmarked once")
    args.shapes = args.shapes or DEFAULT_SHAPES
    out_env = os.environ.get("GPU_CHECK_OUT")
    if out_env:
        try:
            out_folder(out_env)
        except argparse.ArgumentTypeError as e:
            ap.error(f"GPU_CHECK_OUT: {e}")
    missing = [m for m in ("torch", "triton") if importlib.util.find_spec(m) is None]
    if missing:
        print(f"gpu_check: {' and '.join(missing)} not importable by {sys.executable}; run it with a Python "
              "that has them: `make gpu-check GPU_PY=/path/to/python` (`make gpu-check SMOKE=1` alone uses .venv, "
              "which it creates)", file=sys.stderr)
        return 1
    env = _env()
    import torch  # the machine's own torch (CUDA build on a GPU box)

    if not smoke and not torch.cuda.is_available():
        print("gpu_check: no CUDA device here; run `make gpu-check SMOKE=1` for the CPU smoke run")
        return 1
    device = "cpu-interpreter" if smoke else torch.cuda.get_device_name(0).replace(" ", "_").lower()
    stamp = datetime.datetime.now(datetime.timezone.utc).strftime("%Y%m%d_%H%M")
    out = Path(os.environ.get("GPU_CHECK_OUT") or HERE / "results" / ("gpu_check_smoke" if smoke
                                                                       else f"gpu_check_{device}_{stamp}"))
    out.mkdir(parents=True, exist_ok=True)
    steps = {}
    try:
        run_steps(args, smoke, out, env, steps)
    except KeyboardInterrupt:
        write_summary(out, steps, device, smoke, interrupted=True)
        return 130
    write_summary(out, steps, device, smoke)
    return 0 if all(v["ok"] for v in steps.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
