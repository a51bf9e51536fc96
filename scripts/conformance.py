"""Conformance report: every check of tests/conformance on every registry backend.

    python scripts/conformance.py [--backends numpy,torch,mlx] [--out runs/conformance]

Runs the same check functions as the pytest suite (tests/conformance/checks.py, shim.py,
interchange.py, over the one case list in cases.py) and prints a table
backend x check x dtype -> worst abs error, worst rel error (abs / max|oracle|), the
tolerance, the number of compared tensors and pass/fail. Writes conformance.md and
conformance.json to --out. Exit status 1 if anything fails.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from collections import defaultdict

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [os.path.join(ROOT, "tests"), os.path.join(ROOT, "tests", "conformance")]


def _interpret_triton_without_cuda() -> None:
    """As tests/conftest.py does: without CUDA, Triton kernels run in the interpreter, so
    the 'torch-triton' backend is checked here too. Must happen before Triton is imported."""
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return
    import torch

    if not torch.cuda.is_available():
        os.environ.setdefault("TRITON_INTERPRET", "1")


_interpret_triton_without_cuda()

import backends  # noqa: E402
import checks  # noqa: E402
import interchange  # noqa: E402
import shim  # noqa: E402
from cases import CASES, TOLERANCES  # noqa: E402
from compare import Result  # noqa: E402


def run_all(adapters) -> tuple[list[Result], list[str]]:
    """Every Result of every check; plus errors raised by the checks themselves (each also
    recorded as a failed Result, so the table shows it)."""
    pool = [a for a in backends.load(None) if not isinstance(a, backends.Broken)]  # gradient references
    results: list[Result] = []
    errors: list[str] = []

    def attempt(ad, check, case_id, dtype, fn, *args):
        try:
            results.extend(fn(*args))
        except Exception as err:  # noqa: BLE001 - reported as a failure; the table goes on
            errors.append(f"{check} {ad.name} {case_id} {dtype}: {type(err).__name__}: {err}")
            results.append(Result(backend=ad.name, check=check, quantity="raised", dtype=dtype, case=case_id,
                                  abs=float("inf"), rel=float("inf"), tol=0.0, rtol=0.0,
                                  note=f"{type(err).__name__}: {err}"))

    for ad, case, dtype in checks.combinations(adapters, "forward"):
        if checks.applies("coefficients", ad, case, dtype) is None:
            attempt(ad, "forward.components", case.id, dtype, checks.forward_components, ad, case, dtype)
        attempt(ad, "forward.step", case.id, dtype, checks.forward_step, ad, case, dtype)
    for ad, case, dtype in checks.combinations(adapters, "gradients"):
        attempt(ad, "grad", case.id, dtype, checks.gradients, ad, case, dtype, pool)
    for a, b, case, dtype in checks.cross_combinations(adapters):
        attempt(a, f"cross.{b.name}", case.id, dtype, checks.cross_backend, a, b, case, dtype)
    for ad in adapters:
        for dtype in ad.dtypes:
            attempt(ad, "shim", "shim", dtype, shim.shim, ad, dtype)
    with tempfile.TemporaryDirectory() as tmp:
        for a, b, case, dtype in interchange.combinations(adapters):
            attempt(b, f"interchange.from.{a.name}", case.id, dtype, interchange.interchange, a, b, case, dtype, tmp)
    return results, errors


def _check_family(r: Result) -> str:
    """Table row name: forward.* and shim as is; gradients split fd / vs-float64."""
    return r.check


def _worst(value: float) -> float:
    """A sort key for errors: NaN (an error that could not be measured) counts as +inf, as
    compare() counts a NaN element; max() with a NaN key keeps whichever item came first."""
    return math.inf if math.isnan(value) else value


def summarise(results: list[Result]) -> list[dict]:
    groups: dict[tuple, list[Result]] = defaultdict(list)
    for r in results:
        groups[(r.backend, _check_family(r), r.dtype)].append(r)
    rows = []
    for (backend, check, dtype), rs in groups.items():
        worst_abs = max(rs, key=lambda r: _worst(r.abs))
        worst_rel = max(rs, key=lambda r: _worst(r.rel))
        worst_ratio = max(rs, key=lambda r: _worst(r.abs) / max(r.tol, 1e-300))
        failed = [r for r in rs if not r.passed]
        rows.append({
            "backend": backend, "check": check, "dtype": dtype,
            "worst_abs": _worst(worst_abs.abs), "worst_rel": _worst(worst_rel.rel),
            "rtol": worst_rel.rtol, "worst_of_tol": _worst(worst_ratio.abs) / max(worst_ratio.tol, 1e-300),
            "compared": len(rs), "failed": len(failed), "passed": not failed,
            "worst_case": f"{worst_rel.case}/{worst_rel.quantity}",
        })
    order = {"float64": 0, "float32": 1, "bfloat16": 2}
    return sorted(rows, key=lambda r: (r["backend"], r["check"], order.get(r["dtype"], 9)))


def pivot(rows: list[dict]) -> list[str]:
    """Compact view: one line per backend x check, worst rel error per dtype (FAIL marked)."""
    dtypes = [d for d in TOLERANCES if any(r["dtype"] == d for r in rows)]
    cells: dict[tuple, dict] = defaultdict(dict)
    for r in rows:
        cells[(r["backend"], r["check"])][r["dtype"]] = r
    out = ["## Summary: worst rel error (abs / max|oracle|) per dtype", "",
           "| backend | check | " + " | ".join(dtypes) + " |", "|---|---|" + "---|" * len(dtypes)]
    for (backend, check), by in cells.items():
        vals = [("-" if d not in by else f"{by[d]['worst_rel']:.1e}" + ("" if by[d]["passed"] else " FAIL"))
                for d in dtypes]
        out.append(f"| {backend} | {check} | " + " | ".join(vals) + " |")
    return out


def markdown(rows: list[dict], failures: list[Result], errors: list[str], meta: dict) -> str:
    lines = [
        "# mhc conformance", "",
        f"Backends: {', '.join(meta['backends'])}. Cases: {meta['cases']}. "
        f"Run time: {meta['seconds']:.1f} s. Tolerances (rtol, atol) by dtype: "
        + ", ".join(f"{k} {v}" for k, v in TOLERANCES.items())
        + f"; float64 gradients by finite differences, rtol {checks.FD_RTOL:g}.", "",
        "worst abs = max |got - want| over all compared tensors; worst rel = max of abs / max|want| "
        "per tensor; of tol = worst abs / allowed abs (pass when <= 1). grad.fd (float64): "
        "|<g, d> - finite difference| / sum|g d| along random directions d, vs the numpy oracle; "
        "grad (float32, bf16): elementwise vs the same backend's float64 gradients (grad.vs.X: "
        "backend X's, when it has no float64); cross.X: elementwise vs backend X, outputs and "
        "gradients; interchange.from.X: a safetensors file written by X.", "",
    ] + pivot(rows) + [
        "", "## Every backend x check x dtype", "",
        "| backend | check | dtype | worst abs | worst rel | rtol | of tol | tensors | result | worst at |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['backend']} | {r['check']} | {r['dtype']} | {r['worst_abs']:.2e} | "
                     f"{r['worst_rel']:.2e} | {r['rtol']:g} | {r['worst_of_tol']:.2f} | {r['compared']} | "
                     f"{'pass' if r['passed'] else 'FAIL (%d)' % r['failed']} | {r['worst_case']} |")
    if failures:
        lines += ["", "## Failures", ""] + [f"- {r.message()}" for r in failures[:50]]
    if errors:
        lines += ["", "## Checks that raised", ""] + [f"- {e}" for e in errors[:50]]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--backends", default=None, help="comma-separated backend names (default: all available)")
    p.add_argument("--out", default=os.path.join(ROOT, "runs", "conformance"))
    args = p.parse_args(argv)
    from mhc_core.experiments.out_paths import folder_problem

    problem = folder_problem(args.out)  # checked now, not after every check has run
    if problem:
        p.error(f"--out: expected a folder for conformance.md / .json, got {args.out!r}, {problem}")
    names = backends.selected_names(args.backends)
    try:
        loaded = backends.load(names)
    except ValueError as err:  # a name the registry does not know
        p.error(f"--backends: {err}")
    missing = sorted(set(names or ()) - {a.name for a in loaded})
    if missing:
        p.error(f"--backends: {missing} cannot run here (not installed); runnable: "
                f"{[b.name for b in backends.registry.available()]}")

    t0 = time.perf_counter()
    broken = [b for b in loaded if isinstance(b, backends.Broken)]
    adapters = [a for a in loaded if not isinstance(a, backends.Broken)]
    results, errors = run_all(adapters)
    errors += [f"backend {b.name}: adapter does not load: {b.error}" for b in broken]
    seconds = time.perf_counter() - t0

    rows = summarise(results)
    failures = [r for r in results if not r.passed]
    meta = {"backends": [a.name for a in loaded], "cases": len(CASES), "seconds": seconds}
    text = markdown(rows, failures, errors, meta)
    print(text)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "conformance.md"), "w") as fh:
        fh.write(text)
    with open(os.path.join(args.out, "conformance.json"), "w") as fh:
        json.dump({**meta, "tolerances": TOLERANCES, "fd_rtol": checks.FD_RTOL, "rows": rows,
                   "failures": [r.as_dict() for r in failures], "errors": errors}, fh, indent=1)
    print(f"wrote {args.out}/conformance.md and conformance.json")
    return 1 if failures or errors else 0


if __name__ == "__main__":
    sys.exit(main())
