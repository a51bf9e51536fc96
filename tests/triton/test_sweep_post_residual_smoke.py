"""benchmarks/sweep_post_residual_bwd.py --interpret-smoke: the GPU sweep's code path (check
against mhc_core float64 autograd, timing, reports) on the CPU in the Triton interpreter at
a tiny shape. Runs as a subprocess: the script sets TRITON_INTERPRET before importing."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_sweep_post_residual_interpret_smoke(tmp_path):
    import torch

    if torch.cuda.is_available():  # gpu-check runs the sweep itself there; this is its CPU rehearsal
        pytest.skip("the interpreter rehearsal of a GPU sweep; on a CUDA machine gpu-check runs the sweep")
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(ROOT / "backends"), env.get("PYTHONPATH", "")])
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "sweep_post_residual_bwd.py"),
                           "--interpret-smoke", "--out", str(tmp_path)],
                          env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads((tmp_path / "sweep_post_residual_bwd.json").read_text())
    rows = report["rows"]
    assert {r["mode"] for r in rows} == {"bwd", "fwd"}
    assert sum(r["default"] for r in rows if r["mode"] == "bwd") == 1, "the default backward config is swept once"
    assert len([r for r in rows if r["mode"] == "bwd"]) >= 3
    for r in rows:
        assert r["ok"] and r["ms"] > 0, r
        assert 0 <= r["max_rel_err"] <= 1e-5, r  # float32 in the smoke run
    md = (tmp_path / "sweep_post_residual_bwd.md").read_text()
    assert "## bwd, n = 4" in md and "## fwd, n = 4" in md and "(default)" in md
