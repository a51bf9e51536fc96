"""Every Triton kernel compiles for A100 (sm_80) and H100/H200 (sm_90a) without a GPU, and
meets the rules of benchmarks/compile_report.py: no register spill at any n <= 16, shared memory
within sm_80's per-block limit at every n (else the kernel cannot launch on an A100), and no
32-bit arithmetic on a token index (addresses would wrap once T * n * C >= 2^31).

The report runs in a subprocess: the kernels must be decorated for the compiler, and this
test session decorated them for the interpreter (TRITON_INTERPRET=1). Subset for CI time:
n in {4, 8, 16}, bfloat16 inputs (the full matrix is `python benchmarks/compile_report.py`,
committed under benchmarks/results/compile_report.md). Skips only where the triton wheel
has no ptxas.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

triton = pytest.importorskip("triton")

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(triton.__file__).parent / "backends" / "nvidia" / "bin"


def test_compile_report_rules(tmp_path):
    if not any(BIN.glob("ptxas*")):
        pytest.skip(f"no ptxas in the triton wheel ({BIN}): cannot compile for sm_80 / sm_90a here")
    out = tmp_path / "report.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "backends"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "compile_report.py"), "--n", "4", "8", "16",
                           "--dtype", "bfloat16", "--arch", "80", "90", "--json", str(out)],
                          env=env, capture_output=True, text=True, timeout=1200)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(out.read_text())
    rows = report["rows"]
    kernels = {r["kernel"] for r in rows}
    assert {"coefficients_fwd", "coefficients_gate_bwd", "coefficients_x_bwd", "pre_aggregate_fwd",
            "pre_aggregate_bwd", "post_residual_fwd", "post_residual_bwd"} <= kernels, kernels
    assert {(r["n"], r["arch"]) for r in rows} == {(n, a) for n in (4, 8, 16) for a in ("sm_80", "sm_90a")}
    assert all(r["registers"] > 0 for r in rows if not r["error"]), "ptxas -v output was not parsed"
    assert not report["violations"], "\n".join(report["violations"])
