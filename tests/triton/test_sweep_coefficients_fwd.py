"""benchmarks/sweep_coefficients_fwd.py --interpret-smoke: the GPU sweep's own code (reference
checks, timing, reports) runs on the CPU in the Triton interpreter at a tiny shape, every
candidate passes its float64 checks, and both reports are written."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_interpret_smoke(tmp_path):
    import torch

    if torch.cuda.is_available():  # gpu-check runs the sweep itself there; this is its CPU rehearsal
        pytest.skip("the interpreter rehearsal of a GPU sweep; on a CUDA machine gpu-check runs the sweep")
    env = dict(os.environ, TRITON_INTERPRET="1", CUDA_VISIBLE_DEVICES="")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "backends"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_coefficients_fwd.py"), "--interpret-smoke",
                           "--out", str(tmp_path)], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "sweep_coefficients_fwd.json").read_text())
    rows = report["rows"]
    assert rows and rows[0]["config"] == "auto", "the launcher's own choice is the first candidate"
    assert {r["splits"] for r in rows} >= {1, 2}, "one-launch and split-K candidates both swept"
    for r in rows:
        assert not r["error"], r
        assert r["max_err"] <= report["tol"] and r["ms"] > 0, r
    assert "Fastest correct candidate" in (tmp_path / "sweep_coefficients_fwd.md").read_text()


def test_sweep_budget_skips_remaining_candidates():
    """Past the time budget every remaining candidate is reported as skipped (not timed), so
    the sweep ends inside gpu-check's per-sweep limit with a complete report."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import sweep_coefficients_fwd as sw
    import torch

    rows = sw.sweep(sw.SMOKE_SHAPES, sw.SMOKE_CANDIDATES, torch.device("cpu"), budget_s=0.0, log=lambda *a: None)
    assert len(rows) == 1 + len(sw.SMOKE_CANDIDATES)
    assert all(r["error"].startswith("skipped") and r["ms"] is None for r in rows), rows
    assert "Fastest correct candidate" in sw.markdown(rows, dict(device_name="cpu", date="-", commit="-", versions={}))
