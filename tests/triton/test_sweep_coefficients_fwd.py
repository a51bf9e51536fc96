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


def test_best_configs_drive_the_bench(tmp_path):
    """The sweep's "best" per shape (fastest correct row, its FwdConfig fields) is what
    `bench_mhc.py --fwd-configs` launches with at exactly that (n, C, T), bf16; any other
    shape or dtype keeps the library's fwd_config; a file without "best" is a clear error."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_mhc
    import sweep_coefficients_fwd as sw
    import torch
    from mhc_core_torch.kernels import coefficients_fwd as cf

    def row(bt, ms, **kw):
        return {**dict(n=4, C=40, T=20, config="", block_t=bt, block_k=16, num_warps=4, num_stages=2, splits=1,
                       ms=ms), **kw}

    rows = [row(16, 2.0, config="auto"), row(32, 1.0, num_stages=3), row(64, None)]
    best = sw.best(rows)
    assert best == [dict(n=4, C=40, T=20, K=160, ms=1.0, auto_ms=2.0,
                         config=dict(block_t=32, block_k=16, num_warps=4, num_stages=3, splits=1))]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(dict(best=best)))
    cpu, library = torch.device("cpu"), cf.fwd_config
    try:
        listed = bench_mhc.use_swept_fwd_configs(path)
        assert listed == {"n=4 C=40 T=20": best[0]["config"]}
        assert cf.fwd_config(20, 4, 160, torch.bfloat16, cpu) == cf.FwdConfig(32, 16, 4, 3, 1)
        assert cf.fwd_config(21, 4, 160, torch.bfloat16, cpu) == library(21, 4, 160, torch.bfloat16, cpu)
        assert cf.fwd_config(20, 4, 160, torch.float32, cpu) == library(20, 4, 160, torch.float32, cpu)
    finally:
        cf.fwd_config = library
    (tmp_path / "bad.json").write_text(json.dumps(dict(rows=[])))
    with pytest.raises(SystemExit, match="expected a sweep_coefficients_fwd.json with a 'best' list"):
        bench_mhc.use_swept_fwd_configs(tmp_path / "bad.json")


_GOOD_CONFIG = dict(block_t=32, block_k=16, num_warps=4, num_stages=3, splits=1)


@pytest.mark.parametrize("text, why", [
    ("not json", "JSONDecodeError"),
    ("[]", "TypeError"),
    ('{"best": []}', "'best' must be a non-empty list"),
    ('{"best": {"n": 4}}', "'best' must be a non-empty list"),
    ('{"best": [{"n": 4, "K": 160, "T": 20}]}', "KeyError: 'config'"),
    ('{"best": [{"n": "4", "K": 160, "T": 20, "config": %s}]}' % json.dumps(_GOOD_CONFIG),
     r"n, K, T must be integers >= 1 with K a multiple of n, got \('4', 160, 20\)"),
    ('{"best": [{"n": 3, "K": 160, "T": 20, "config": %s}]}' % json.dumps(_GOOD_CONFIG), "K a multiple of n"),
    ('{"best": [{"n": 4, "K": 160, "T": 20, "config": {"block_t": 24}}]}', "TypeError"),
    ('{"best": [{"n": 4, "K": 160, "T": 20, "config": %s}]}' % json.dumps({**_GOOD_CONFIG, "block_t": 24}),
     "FwdConfig.block_t must be a power of two"),
    ('{"best": [{"n": 4, "K": 160, "T": 20, "config": %s}]}' % json.dumps({**_GOOD_CONFIG, "num_warps": True}),
     "FwdConfig.num_warps must be one of"),
], ids=["not-json", "a-list", "empty-best", "best-a-dict", "no-config", "string-n", "K-not-n-multiple",
        "missing-fields", "bad-block", "bool-warps"])
def test_fwd_configs_malformed_json_is_a_clear_error(tmp_path, text, why):
    """Every malformed sweep JSON is a SystemExit naming the file and what was wrong, and
    the library's fwd_config stays in place."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_mhc
    from mhc_core_torch.kernels import coefficients_fwd as cf

    library = cf.fwd_config
    path = tmp_path / "sweep.json"
    path.write_text(text)
    with pytest.raises(SystemExit, match=rf"--fwd-configs: .*could not use .*sweep.json: .*{why}"):
        bench_mhc.use_swept_fwd_configs(path)
    assert cf.fwd_config is library


def test_fwd_configs_report_lists_only_the_shapes_benchmarked(tmp_path, capsys):
    """A sweep at shapes the bench does not run (mismatched JSON): the report lists only the
    swept shapes this run benchmarks (none here), the others are printed as unused."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_mhc
    import torch
    from mhc_core_torch.kernels import coefficients_fwd as cf

    best = [dict(n=4, K=160, T=20, config=_GOOD_CONFIG), dict(n=4, K=64, T=8, config=_GOOD_CONFIG)]
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(dict(best=best)))
    library = cf.fwd_config
    try:
        assert bench_mhc.use_swept_fwd_configs(path, [(4, 40, 20)]) == {"n=4 C=40 T=20": _GOOD_CONFIG}
        cf.fwd_config = library
        assert bench_mhc.use_swept_fwd_configs(path, [(4, 1024, 4096)]) == {}
        assert cf.fwd_config(8, 4, 64, torch.bfloat16, torch.device("cpu")) == cf.FwdConfig(**_GOOD_CONFIG)
    finally:
        cf.fwd_config = library
    assert "not benchmarked in this run (their configs unused): n=4 C=40 T=20, n=4 C=16 T=8" in capsys.readouterr().out
    import harness

    env = dict(device_name="cpu", device="cpu", date="-", commit="-", versions={})
    unused = {**env, "coefficient_fwd_configs": {}}
    assert "none of the sweep's shapes is benchmarked here" in harness.markdown([], unused)
    assert "--fwd-configs" not in harness.markdown([], env)


def test_fwd_configs_refused_with_cpu(tmp_path):
    """--cpu runs no Triton kernel: --fwd-configs there is a usage error, not silently unused."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_mhc

    with pytest.raises(SystemExit) as err:
        bench_mhc.main(["--cpu", "--fwd-configs", str(tmp_path / "sweep.json"), "--out", str(tmp_path)])
    assert err.value.code == 2 and not any(tmp_path.iterdir())
