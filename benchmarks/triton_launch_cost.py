"""Triton's own host cost per launch, timed on the CPU (no GPU needed): the Python part of
`JITFunction.run` for each of our kernels, at its parameter count.

    python benchmarks/triton_launch_cost.py        # TRITON_INTERPRET must be unset
    python benchmarks/triton_launch_cost.py --reps 50   # quicker, noisier

Every `*_kernel` JITFunction of every module of mhc_core_torch/kernels is timed.

Per launch, `JITFunction.run` (triton 3.6, runtime/jit.py) reads a few knobs, asks the
driver for the current device and stream, runs the generated binder (one native
`specialize_impl` per non-constexpr argument: type, alignment and ==1 checks of every
integer and pointer), builds the cache key (`compute_cache_key`: a tuple of the
specialization plus `str(options)`, then a dict lookup), checks the kernel's used globals,
and calls the compiled launcher, which reads `data_ptr()` of every tensor argument before
`cuLaunchKernel`. Timed here: the binder, the cache key and the tensors' `data_ptr()`
calls, with the kernel's parameters filled generically (tensors for `*_ptr`, 16 for other
arguments, 1 for constexprs: the same work as real values). Not timed: the driver call.
"""
from __future__ import annotations

import argparse
import importlib
import os
import pkgutil
import sys
import time
from pathlib import Path

if os.environ.get("TRITON_INTERPRET") == "1":
    raise SystemExit("triton_launch_cost: unset TRITON_INTERPRET (the interpreter has no binder to time)")

import torch  # noqa: E402
import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler.compiler import make_backend  # noqa: E402
from triton.runtime.jit import JITFunction, compute_cache_key, create_function_from_signature  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "backends"), str(ROOT / "benchmarks")]


def us(fn, reps: int) -> float:
    """Fastest of 5 rounds, microseconds per call."""
    rounds = []
    for _ in range(5):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        rounds.append((time.perf_counter() - t0) / reps * 1e6)
    return min(rounds)


def kernels():
    """(module.name, JITFunction) of every `*_kernel` defined in a module of the kernels
    package (found by listing the package, so a new module's kernels are not left out)."""
    import mhc_core_torch.kernels as package

    for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
        mod = importlib.import_module(f"{package.__name__}.{info.name}")
        for attr, fn in vars(mod).items():
            if isinstance(fn, JITFunction) and attr.endswith("_kernel") and fn.fn.__module__ == mod.__name__:
                yield f"{info.name}.{attr}", fn


def main(argv=None) -> None:
    from cli_args import positive_int

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--reps", type=positive_int, default=2000, help="calls per timed round (5 rounds, fastest kept)")
    cli = ap.parse_args(argv)
    backend = make_backend(GPUTarget("cuda", 90, 32))
    tensor = torch.empty(64, 64)
    print(f"triton {triton.__version__}, torch {torch.__version__}, 1-min load {os.getloadavg()[0]:.2f}\n")
    print("| kernel | params (constexpr) | binder us | cache key us | data_ptr() us | sum us |")
    print("|---|---|---|---|---|---|")
    for name, fn in kernels():
        args, kwargs = [], {"debug": False, "instrumentation_mode": ""}
        for p in fn.params:
            if p.is_constexpr:
                kwargs[p.name] = 1
            else:
                args.append(tensor if p.name.endswith("_ptr") else 16)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        _, spec, opts = binder(*args, **kwargs)
        cache: dict = {}
        compute_cache_key(cache, spec, opts)
        ptrs = [a for a in args if isinstance(a, torch.Tensor)]
        t = (us(lambda: binder(*args, **kwargs), cli.reps), us(lambda: compute_cache_key(cache, spec, opts), cli.reps),
             us(lambda: [a.data_ptr() for a in ptrs], cli.reps))
        n_const = sum(p.is_constexpr for p in fn.params)
        print(f"| {name} | {len(fn.params)} ({n_const}) | {t[0]:.1f} | {t[1]:.1f} | {t[2]:.1f} | {sum(t):.1f} |")


if __name__ == "__main__":
    main()
