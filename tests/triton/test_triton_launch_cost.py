"""benchmarks/triton_launch_cost.py times every Triton kernel's launch path, the coefficient
forward's included: it listed four modules by hand and missed coefficients_fwd.py (the forward,
its split-K merge and the phi-parts kernel) after the forward moved there. Runs in a subprocess
without TRITON_INTERPRET (the script times the compiled-launch binder), at --reps 1."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "triton_launch_cost.py"


def _run(*args):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "backends"), env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=env, capture_output=True, text=True, timeout=300)


def test_every_kernel_module_is_timed():
    proc = _run("--reps", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = set(re.findall(r"^\| (\w+\.\w+_kernel) \|", proc.stdout, flags=re.M))
    kernel_dir = ROOT / "backends" / "mhc_core_torch" / "kernels"
    # every `def <name>_kernel(` under @triton.jit in the package's source files, read independently
    defined = {f"{p.stem}.{name}" for p in kernel_dir.glob("*.py")
               for name in re.findall(r"@triton\.jit[^\n]*\ndef (\w+_kernel)\(", p.read_text())}
    assert "coefficients_fwd._coeff_fwd_kernel" in defined, defined
    assert rows == defined, (rows ^ defined, proc.stdout)


def test_bad_reps_is_a_usage_error():
    proc = _run("--reps", "0")
    assert proc.returncode == 2 and "argument --reps: expected an integer >= 1" in proc.stderr, proc.stderr
