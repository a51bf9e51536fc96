"""The depth sweep's scale options end to end: SIGKILL + restart of the real
script, torchrun with 2 ranks, a NaN event that is logged rather than raised, bf16 and
block recompute. Sizes are toy; what is asserted is exact where the math is
deterministic (resume, recompute: bitwise) and float32-rounding where it is not
(2 ranks: sums in another order)."""
from __future__ import annotations

import importlib.util
import json
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from scale_helpers import PYTHON, REPO, subprocess_env

SCRIPT = os.path.join(REPO, "scripts", "depth_sweep.py")
TINY = ["--backend", "torch", "--depths", "2", "--steps", "16", "--log-every", "3", "--dim", "16", "--heads", "2",
        "--seq-len", "8", "--batch", "4", "--vocab", "16", "--streams", "4", "--no-progress", "--no-plots"]
# --streams, not --n: torchrun's own parser rejects "--n" as an ambiguous abbreviation
TIMING = ("tokens_per_sec", "step_time_s")  # the only fields allowed to differ between runs


def _sweep_module():
    spec = importlib.util.spec_from_file_location("depth_sweep_under_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.path.insert(0, os.path.dirname(SCRIPT))
    spec.loader.exec_module(module)
    return module


def _run_inprocess(out, *extra) -> None:
    assert _sweep_module().main([*TINY, "--out", str(out), *extra]) == 0


def _records(run_dir) -> list[dict]:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in f]


def _summary_rows(out) -> list[dict]:
    rows = json.load(open(os.path.join(out, "summary.json")))["runs"]
    return [{k: v for k, v in r.items() if k != "wall_s"} for r in rows]


def test_sweep_sigkill_and_same_command_resumes(tmp_path):
    ref = tmp_path / "ref"
    _run_inprocess(ref, "--variants", "mhc", "hc", "--checkpoint-every", "4")
    out = tmp_path / "killed"
    cmd = [PYTHON, SCRIPT, *TINY, "--variants", "mhc", "hc", "--checkpoint-every", "4", "--out", str(out)]
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    # in mhc-L2 kill after line 5 at least (checkpoint 4 is committed before line 5 is
    # written), so the restart has something to resume; in hc-L2 anywhere (mhc-L2 is done)
    run = rng.choice(["mhc-L2", "hc-L2"])
    target = rng.randrange(5 if run == "mhc-L2" else 1, 14)
    log = out / run / "metrics.jsonl"
    proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if log.exists() and sum(1 for _ in open(log, "rb")) >= target:
            break
        time.sleep(0.002)
    time.sleep(rng.uniform(0, 0.03))
    alive = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert alive, f"(seed {seed}) the sweep ended before the kill in {run} at {target} lines"
    again = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert again.returncode == 0, f"(seed {seed}) restart failed:\n{again.stdout[-2000:]}\n{again.stderr[-2000:]}"
    assert "[resume]" in again.stdout, f"(seed {seed}) the restart did not resume:\n{again.stdout[-2000:]}"
    for name in ("mhc-L2", "hc-L2"):
        got, want = _records(out / name), _records(ref / name)
        assert [r["step"] for r in got] == list(range(16)), f"(seed {seed}) {name} steps {[r['step'] for r in got]}"
        for g, w in zip(got, want):
            assert g == w, f"(seed {seed}, killed in {run} at ~{target}) {name} step {w['step']}: {g} != {w}"
    assert _summary_rows(out) == _summary_rows(ref), f"(seed {seed}) summaries differ"


def test_sweep_under_torchrun_matches_one_process(tmp_path):
    pytest.importorskip("torch.distributed")
    ref, out = tmp_path / "single", tmp_path / "ranks"
    extra = ["--variants", "mhc", "--steps", "6", "--checkpoint-every", "3"]
    _run_inprocess(ref, *extra)
    cmd = [PYTHON, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", SCRIPT,
           *TINY, *extra, "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, f"torchrun sweep failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    got, want = _records(out / "mhc-L2"), _records(ref / "mhc-L2")
    assert [r["step"] for r in got] == list(range(6)), "rank 0 must log every step once (and only rank 0)"
    loss_g, loss_w = np.array([r["loss"] for r in got]), np.array([r["loss"] for r in want])
    assert np.allclose(loss_g, loss_w, rtol=1e-5, atol=1e-6), f"2-rank losses {loss_g} vs one process {loss_w}"
    gn_g, gn_w = np.array([r["grad_norm"] for r in got]), np.array([r["grad_norm"] for r in want])
    assert np.allclose(gn_g, gn_w, rtol=1e-4), f"2-rank grad norms {gn_g} vs {gn_w}"
    cfg = json.load(open(out / "mhc-L2" / "config.json"))
    assert cfg["scale"]["world_size"] == 2
    assert sorted(os.listdir(out / "mhc-L2" / "checkpoints")) == [
        "ckpt-00000003.json", "ckpt-00000003.safetensors", "ckpt-00000006.json", "ckpt-00000006.safetensors"]


def test_nan_in_the_stream_is_an_event_not_a_crash(tmp_path, monkeypatch):
    """Poison the embedding (so the stream entering every mixing layer is NaN) for one
    measured step: the sweep logs a NaN event with NaN gains, skips that update, goes on."""
    import torch

    from mhc_core_torch import lm

    bad_step, calls = 6, {"n": 0}
    original = lm.Trainer.step

    def step(self, *args, **kwargs):
        k, calls["n"] = calls["n"], calls["n"] + 1
        if k != bad_step:
            return original(self, *args, **kwargs)
        saved = self.model.embed.weight.detach().clone()
        with torch.no_grad():
            self.model.embed.weight[3] = float("nan")
        try:
            return original(self, *args, **kwargs)
        finally:
            with torch.no_grad():
                self.model.embed.weight.copy_(saved)

    monkeypatch.setattr(lm.Trainer, "step", step)
    out = tmp_path / "nan"
    _run_inprocess(out, "--variants", "mhc", "--steps", "10", "--batch", "16")
    recs = [json.loads(line) for line in open(out / "mhc-L2" / "metrics.jsonl")]
    assert len(recs) == 10, "the run must go on after the NaN step"
    bad = recs[bad_step]
    assert bad["nan_inf_event"] == 1 and bad["nonfinite_loss"] == 1 and bad["loss"] == "nan", bad
    assert bad["composite_forward_gain"]["max"] == "nan", "the measured gains of a NaN forward are NaN, logged"
    assert all(r["nan_inf_event"] == 0 and np.isfinite(r["loss"]) for i, r in enumerate(recs) if i != bad_step)
    row = json.load(open(out / "summary.json"))["runs"][0]
    assert row["nan_inf_events"] == 1 and not row["diverged"]


def test_bf16_sweep_finite_where_float32_is_and_recompute_is_exact(tmp_path):
    base = ["--variants", "mhc", "hc", "--steps", "12"]
    _run_inprocess(tmp_path / "f32", *base)
    _run_inprocess(tmp_path / "bf16", *base, "--dtype", "bfloat16")
    _run_inprocess(tmp_path / "recompute", *base, "--recompute", "auto")
    for name in ("mhc-L2", "hc-L2"):
        f32, bf16 = _records(tmp_path / "f32" / name), _records(tmp_path / "bf16" / name)
        assert all(r["nan_inf_event"] == 0 for r in f32), f"float32 {name} itself had NaN events"
        assert all(r["nan_inf_event"] == 0 and np.isfinite(r["loss"]) for r in bf16), f"bf16 {name} not finite"
        l32, l16 = f32[-1]["loss"], bf16[-1]["loss"]
        assert abs(l16 - l32) < 0.15 * l32 + 0.1, f"bf16 {name} final loss {l16} vs float32 {l32}"
        assert _records(tmp_path / "recompute" / name) == f32, f"recompute changed {name}'s metrics"
    cfg = json.load(open(tmp_path / "bf16" / "mhc-L2" / "config.json"))
    assert cfg["scale"]["dtype"] == "bfloat16" and "--dtype bfloat16" in cfg["rerun"]


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_bf16_sweep_of_the_history_variant_keeps_its_skip_weights_float32(tmp_path, backend):
    """`--dtype bfloat16 --variants history` died recording the mixing state (numpy has no
    bfloat16: the skip logits had been cast with the layers); they stay float32 now, and
    the run ends near the float32 one."""
    if backend == "mlx":
        pytest.importorskip("mlx.core")
    base = ["--variants", "history", "--steps", "12", "--backend", backend]
    _run_inprocess(tmp_path / "f32", *base)
    _run_inprocess(tmp_path / "bf16", *base, "--dtype", "bfloat16")
    f32, bf16 = _records(tmp_path / "f32" / "history-L2"), _records(tmp_path / "bf16" / "history-L2")
    assert all(r["nan_inf_event"] == 0 and np.isfinite(r["loss"]) for r in bf16), "bf16 history not finite"
    l32, l16 = f32[-1]["loss"], bf16[-1]["loss"]
    assert abs(l16 - l32) < 0.15 * l32 + 0.1, f"bf16 history final loss {l16} vs float32 {l32}"


def test_resume_refuses_a_checkpoint_of_other_settings(tmp_path):
    out = tmp_path / "s"
    _run_inprocess(out, "--variants", "mhc", "--steps", "4", "--checkpoint-every", "2")
    with pytest.raises(SystemExit, match=r"different settings \(lr\)"):
        _run_inprocess(out, "--variants", "mhc", "--steps", "8", "--checkpoint-every", "2", "--lr", "0.01")
    _run_inprocess(out, "--variants", "mhc", "--steps", "8", "--checkpoint-every", "2")  # more steps: continues
    assert [json.loads(line)["step"] for line in open(out / "mhc-L2" / "metrics.jsonl")] == list(range(8))
