"""Resumable runs: SIGKILL a real training subprocess at random points,
restart it with the same command, and demand the run an uninterrupted one gives: every
step in metrics.jsonl exactly once, every logged loss and the final parameters bitwise
equal. Corrupt / truncated checkpoints are detected, reported, and the previous one used.

The loop is tests/scale/resume_worker.py: the depth sweep's Trainer and TaskStream with
mhc_core.experiments.checkpoints.RunCheckpointer and the backend's capture / restore.
"""
from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time

import numpy as np
import pytest

import resume_worker as W
from mhc_core.experiments.checkpoints import CheckpointStore, RunCheckpointer
import backend_registry as registry
from scale_helpers import PYTHON, REPO, subprocess_env

HERE = os.path.dirname(os.path.abspath(__file__))
STEPS, EVERY = 24, 4
BACKENDS = [b for b in registry.training_names() if registry.get(b).runnable()]


def _lines(path: str) -> list[dict]:
    with open(path) as f:
        return [json.loads(line) for line in f]


def _reference(tmp_path, backend: str, steps: int = STEPS) -> tuple[list[dict], dict]:
    out = str(tmp_path / f"ref-{backend}-{steps}")
    W.main(["--backend", backend, "--out", out, "--steps", str(steps), "--every", str(EVERY)])
    return _lines(os.path.join(out, "metrics.jsonl")), dict(np.load(os.path.join(out, "final.npz")))


def _assert_same_run(out: str, ref_lines: list[dict], ref_params: dict, note: str) -> None:
    lines = _lines(os.path.join(out, "metrics.jsonl"))
    steps = [r["step"] for r in lines]
    assert steps == list(range(len(ref_lines))), f"{note}: steps logged {steps}"
    for got, want in zip(lines, ref_lines):
        assert got == want, f"{note}: step {want['step']} logged {got}, uninterrupted run logged {want}"
    params = dict(np.load(os.path.join(out, "final.npz")))
    for k, v in ref_params.items():
        assert np.array_equal(params[k], v), f"{note}: final {k} differs by {np.abs(params[k] - v).max():.3e}"


@pytest.mark.parametrize("backend", BACKENDS)
def test_sigkill_at_random_points_then_resume(backend, tmp_path):
    ref_lines, ref_params = _reference(tmp_path, backend)
    seed = random.randrange(2**32)
    rng = random.Random(seed)
    out = str(tmp_path / "killed")
    cmd = [PYTHON, os.path.join(HERE, "resume_worker.py"), "--backend", backend, "--out", out,
           "--steps", str(STEPS), "--every", str(EVERY)]
    log = os.path.join(out, "metrics.jsonl")
    kills = []
    for _ in range(2):  # two kills at random points, then a clean finish
        # the first kill anywhere (maybe before any checkpoint: a fresh restart), the second
        # after line EVERY + 1, when checkpoint EVERY is committed, so the end has one to resume
        target = rng.randrange(1, STEPS - 3) if not kills else rng.randrange(max(kills[-1], EVERY + 1), STEPS - 3)
        proc = subprocess.Popen(cmd, cwd=REPO, env=subprocess_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if os.path.exists(log) and sum(1 for _ in open(log, "rb")) >= target:
                break
            time.sleep(0.002)
        time.sleep(rng.uniform(0, 0.05))  # land anywhere: mid-step, mid-log-write, mid-checkpoint
        alive = proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert alive, f"(seed {seed}) the run ended before the kill at ~{target} lines:\n{proc.stdout.read().decode()[-2000:]}"
        kills.append(target)
    proc = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"(seed {seed}) restart failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    resumed = json.load(open(os.path.join(out, "done.json")))["resumed_from"]
    assert resumed > 0, f"(seed {seed}) the restart did not resume from a checkpoint"
    _assert_same_run(out, ref_lines, ref_params, f"{backend} killed at ~{kills} lines (seed {seed}), resumed at {resumed}")
    assert len(CheckpointStore(os.path.join(out, "checkpoints")).steps()) == 2, "keep=2 not honoured"


def _corrupt(path_st: str, path_js: str, how: str) -> None:
    if how == "truncated-tensors":
        data = open(path_st, "rb").read()
        open(path_st, "wb").write(data[: len(data) // 2])
    elif how == "flipped-byte":
        data = bytearray(open(path_st, "rb").read())
        data[len(data) - 7] ^= 0x40
        open(path_st, "wb").write(bytes(data))
    elif how == "missing-tensors":
        os.remove(path_st)
    elif how == "truncated-json":
        data = open(path_js, "rb").read()
        open(path_js, "wb").write(data[: len(data) // 3])
    elif how == "edited-meta":
        record = json.load(open(path_js))
        record["meta"]["data_position"] += 1
        open(path_js, "w").write(json.dumps(record))


@pytest.mark.parametrize("how", ["truncated-tensors", "flipped-byte", "missing-tensors", "truncated-json", "edited-meta"])
def test_corrupt_checkpoint_is_reported_and_previous_used(how, tmp_path, capsys):
    """Train 12 steps (checkpoints 8 and 12 kept), damage 12, resume to 16: the damage is
    reported naming checkpoint 12, step 8 is loaded, and the result equals a clean 16-step run."""
    ref_lines, ref_params = _reference(tmp_path, "torch", steps=16)
    out = str(tmp_path / how)
    W.main(["--backend", "torch", "--out", out, "--steps", "12", "--every", str(EVERY)])
    store = CheckpointStore(os.path.join(out, "checkpoints"))
    assert store.steps() == [12, 8]
    _corrupt(*(os.path.join(out, "checkpoints", f"ckpt-00000012.{e}") for e in ("safetensors", "json")), how)
    loaded = store.load_latest(warn=False)
    assert loaded.step == 8 and len(loaded.problems) == 1 and "checkpoint 12 skipped" in loaded.problems[0], loaded.problems
    capsys.readouterr()
    W.main(["--backend", "torch", "--out", out, "--steps", "16", "--every", str(EVERY)])
    err = capsys.readouterr().err
    assert "checkpoint 12 skipped" in err and "using the previous one" in err, f"not reported on stderr: {err!r}"
    assert json.load(open(os.path.join(out, "done.json")))["resumed_from"] == 8
    _assert_same_run(out, ref_lines, ref_params, f"resume after {how}")


def test_store_keeps_last_two_ignores_partial_writes(tmp_path):
    store = CheckpointStore(str(tmp_path), keep=2)
    for step in (1, 2, 3):
        store.save(step, {"w": np.full(3, step, np.float32)}, {"k": step})
    assert store.steps() == [3, 2]
    open(tmp_path / "ckpt-00000004.safetensors.tmp", "wb").write(b"half a file")  # killed mid-write
    open(tmp_path / "ckpt-00000004.safetensors", "wb").write(b"renamed but no commit record")
    loaded = store.load_latest()
    assert loaded.step == 3 and loaded.meta["k"] == 3 and loaded.problems == []
    assert np.array_equal(loaded.tensors["w"], np.full(3, 3, np.float32))
    for step in (3, 2):  # every checkpoint damaged: a fresh start, with both problems listed
        os.remove(tmp_path / f"ckpt-{step:08d}.safetensors")
    with pytest.warns(RuntimeWarning, match="skipped"):
        none = store.load_latest()
    assert not none.found and none.step == 0 and len(none.problems) == 2


def test_log_cut_back_to_the_checkpoint(tmp_path):
    """Lines after the checkpoint, and a line cut by the kill, are dropped on resume."""
    ckpt = RunCheckpointer(str(tmp_path), every=2)
    ckpt.resume()
    with ckpt.open_log() as log:
        for s in range(3):
            log.write(json.dumps({"step": s}) + "\n")
            ckpt.step_done(s + 1, lambda: ({"x": np.zeros(1)}, {}))
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.write('{"step": 3}\n{"st')  # step 3 logged, then killed mid-line before checkpoint 4
    again = RunCheckpointer(str(tmp_path), every=2)
    loaded = again.resume()
    assert loaded.step == 2 and [r["step"] for r in _lines(str(tmp_path / "metrics.jsonl"))] == [0, 1]


def test_torch_capture_restore_bf16_and_rng(tmp_path):
    import torch

    from mhc_core_torch.training import checkpoint as C

    model = torch.nn.Linear(4, 3).to(torch.bfloat16)
    opt = torch.optim.Adam(model.parameters(), lr=0.1)
    model(torch.randn(2, 4, dtype=torch.bfloat16)).float().sum().backward()
    opt.step()
    torch.manual_seed(123)
    np.random.seed(7)
    tensors, meta = C.capture(model, opt, meta={"position": 5})
    store = CheckpointStore(str(tmp_path))
    store.save(1, tensors, meta)
    want = (torch.rand(3), np.random.rand(2), random.random())
    fresh = torch.nn.Linear(4, 3).to(torch.bfloat16)
    fresh_opt = torch.optim.Adam(fresh.parameters(), lr=0.1)
    loaded = store.load_latest()
    C.restore(fresh, fresh_opt, loaded.tensors, loaded.meta)
    got = (torch.rand(3), np.random.rand(2), random.random())
    assert torch.equal(got[0], want[0]) and np.array_equal(got[1], want[1]) and got[2] == want[2], "RNG not restored"
    assert fresh.weight.dtype == torch.bfloat16 and torch.equal(fresh.weight, model.weight)
    want_state, got_state = opt.state_dict()["state"], fresh_opt.state_dict()["state"]
    assert sorted(want_state) == sorted(got_state)
    for pid, a in want_state.items():
        for k in a:
            assert torch.equal(a[k], got_state[pid][k]), f"optimizer state {pid}/{k} differs"
    assert loaded.meta["position"] == 5
