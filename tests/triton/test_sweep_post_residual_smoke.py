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


@pytest.mark.parametrize("script,stem", [("sweep_post_residual_bwd", "sweep_post_residual_bwd"),
                                         ("sweep_coefficients_fwd", "sweep_coefficients_fwd")])
def test_sweep_stopped_midway_keeps_the_rows_it_measured(script, stem, monkeypatch, tmp_path):
    """A sweep stopped during its second timing (Ctrl-C here; gpu_check's time limit kills it
    the same way) leaves complete reports holding the first row: they used to be written only
    at the end, so a sweep past gpu_check's cap lost every figure."""
    import importlib
    import torch

    if torch.cuda.is_available():
        pytest.skip("the interpreter rehearsal of a GPU sweep")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    mod = importlib.import_module(script)
    timed = []
    real_time = mod._time

    def stop_at_second(*args, **kwargs):
        if timed:
            raise KeyboardInterrupt
        timed.append(1)
        return real_time(*args, **kwargs)

    monkeypatch.setattr(mod, "_time", stop_at_second)
    with pytest.raises(KeyboardInterrupt):
        mod.main(["--interpret-smoke", "--out", str(tmp_path)])
    report = json.loads((tmp_path / f"{stem}.json").read_text())
    timed_rows = [r for r in report["rows"] if r["ms"] is not None]
    assert len(timed_rows) == 1 and timed_rows[0]["ms"] > 0, report["rows"]
    assert (tmp_path / f"{stem}.md").read_text().strip()
    assert not list(tmp_path.glob("*.tmp"))
