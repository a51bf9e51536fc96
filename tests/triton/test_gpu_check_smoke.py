"""`make gpu-check SMOKE=1` (benchmarks/gpu_check.py) on the CPU: the GPU check's every step
(offline install check, pytest, bench_mhc, bench_host_overhead) runs in the Triton
interpreter at a tiny shape and writes its one results folder. Figures are meaningless
there; this proves the command works before it meets a GPU."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")
ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_smoke_runs_and_writes_results(tmp_path):
    import torch

    if torch.cuda.is_available():  # the GPU box runs `make gpu-check` itself, not its CPU rehearsal
        pytest.skip("SMOKE is the CPU rehearsal of gpu-check; on a CUDA machine run `make gpu-check`")
    env = {**os.environ, "SMOKE": "1", "GPU_CHECK_OUT": str(tmp_path)}
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_check.py")], env=env,
                          capture_output=True, text=True, timeout=900)
    logs = {p.name: p.read_text()[-2000:] for p in tmp_path.glob("*.txt")}
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:] + json.dumps(logs, indent=1)
    info = json.loads((tmp_path / "env.json").read_text())
    assert info["smoke"] is True and info["commit"], info
    assert set(info["steps"]) == {"install", "pytest", "bench", "host"}
    assert all(step["ok"] for step in info["steps"].values()), info["steps"]
    assert "passed" in (tmp_path / "pytest.txt").read_text()
    import tarfile

    with tarfile.open(tmp_path / f"{tmp_path.name}.tar.gz") as tar:  # the one file to copy off a GPU box
        names = {Path(m).name for m in tar.getnames()}
    assert {"env.json", "summary.md", "pytest.txt", "bench.json", "bench_host_overhead.json"} <= names, names
    bench = json.loads((tmp_path / "bench.json").read_text())
    ours = [r for r in bench["results"] if r["impl"] == "ours-triton" and "ms" in r]
    assert ours, "the smoke benchmark timed none of our kernels"
    assert bench["copy_bw_GBps"] > 0
    host = json.loads((tmp_path / "bench_host_overhead.json").read_text())
    assert any(r["case"] == "MHC(triton) fwd+bwd" and r["us_per_call"] > 0 for r in host["results"])


def test_timeout_kills_the_whole_process_group(tmp_path):
    """A step past its limit is killed with every process it started (pytest-xdist workers
    outlive their pytest otherwise, and would run under the next step's timings)."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    marker = tmp_path / "child_alive"
    child = f"import time, pathlib; time.sleep(3); pathlib.Path({str(marker)!r}).write_text('x')"
    parent = f"import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', {child!r}]); time.sleep(60)"
    r = gpu_check._run([sys.executable, "-c", parent], tmp_path / "step.txt", 1, dict(os.environ))
    assert r["rc"] == 124 and not r["ok"]
    assert "process group killed" in (tmp_path / "step.txt").read_text()
    import time

    time.sleep(4)
    assert not marker.exists(), "the step's child process survived the timeout"


@pytest.mark.parametrize("argv", [["--sweeps"], ["--sweeps", "sweep_coefficients_fwd"], ["--bench-swept-fwd"],
                                  ["--shapes", "4096:4096"]], ids=["sweeps-none", "sweeps-one", "swept-fwd", "shapes"])
def test_smoke_refuses_cuda_run_flags(monkeypatch, tmp_path, argv, capsys):
    """SMOKE=1 runs one tiny bench shape and no sweep: a flag that only shapes the CUDA run
    (--sweeps, even empty, --bench-swept-fwd, --shapes) is a usage error naming them, not
    silently ignored; nothing is written."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check

    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path / "out"))
    with pytest.raises(SystemExit) as err:
        gpu_check.main(argv)
    assert err.value.code == 2 and "SMOKE=1 runs one tiny shape" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


GOOD_BEST = dict(n=4, K=16384, T=4096, config=dict(block_t=64, block_k=64, num_warps=4, num_stages=3, splits=1))


def _bench_swept_fwd_commands(monkeypatch, out, written):
    """gpu_check.main(['--bench-swept-fwd', ...]) on a faked CUDA device with every step
    stubbed; the sweep step writes `written` (text, or None: no file) to its JSON. Returns
    the command lines the steps were given."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import gpu_check
    import torch

    monkeypatch.delenv("SMOKE", raising=False)
    monkeypatch.setenv("GPU_CHECK_OUT", str(out))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i=0: "fake gpu")
    ok = {"ok": True, "rc": 0, "seconds": 0.0, "log": "x.txt"}
    monkeypatch.setattr(gpu_check, "install_missing", lambda out, env: dict(ok))
    commands = []

    def run(cmd, log, limit_s, env):
        commands.append(cmd)
        if Path(cmd[1]).name == "sweep_coefficients_fwd.py" and written is not None:
            (out / "sweep_coefficients_fwd.json").write_text(written)
        return dict(ok)

    monkeypatch.setattr(gpu_check, "_run", run)
    assert gpu_check.main(["--bench-swept-fwd", "--sweeps", "sweep_coefficients_fwd"]) == 0
    return commands


@pytest.mark.parametrize("written", [None, '{"best": []}', "{not json"], ids=["none", "empty-best", "corrupt"])
def test_bench_swept_fwd_ignores_a_stale_or_empty_sweep_json(monkeypatch, tmp_path, written):
    """--bench-swept-fwd in a reused GPU_CHECK_OUT folder: when this run's sweep writes no
    JSON (it failed), or one with no correct config (empty "best") or a corrupt one, the bench
    runs without --fwd-configs (which would refuse such a file and lose the bench step) and
    never with the earlier run's file. (Steps stubbed; CUDA faked: only the command lines
    are checked.)"""
    out = tmp_path / "out"
    out.mkdir()
    (out / "sweep_coefficients_fwd.json").write_text(json.dumps(dict(best=[GOOD_BEST])))  # an earlier run's
    commands = _bench_swept_fwd_commands(monkeypatch, out, written)
    assert Path(commands[0][1]).name == "sweep_coefficients_fwd.py"
    bench = [c for c in commands if Path(c[1]).name == "bench_mhc.py"]
    assert bench and not any("--fwd-configs" in c for c in bench), bench


def test_bench_swept_fwd_passes_a_good_sweep_json(monkeypatch, tmp_path):
    """The counterpart: this run's sweep wrote a "best" list, so both benches get
    --fwd-configs with that file."""
    out = tmp_path / "out"
    commands = _bench_swept_fwd_commands(monkeypatch, out, json.dumps(dict(best=[GOOD_BEST])))
    bench = [c for c in commands if Path(c[1]).name == "bench_mhc.py"]
    assert len(bench) == 2 and all(c[c.index("--fwd-configs") + 1] == str(out / "sweep_coefficients_fwd.json")
                                   for c in bench), bench
