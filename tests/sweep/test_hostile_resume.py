"""depth_sweep resume attacked: a finished run resumed, fewer steps than done, a rerun without
checkpointing, a lost or damaged metrics.jsonl are refused before any run trains; a changed
logging schedule is printed and recorded in config.json."""
import json
import os
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import depth_sweep  # noqa: E402

TINY = ["--depths", "1", "--steps", "3", "--dim", "8", "--heads", "2", "--seq-len", "4", "--batch", "2",
        "--vocab", "5", "--n", "2", "--no-progress", "--no-plots"]


def _recs(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _resumable(out, *extra):
    return depth_sweep.main(["--backend", "torch", "--out", str(out), *TINY, "--checkpoint-every", "2", *extra])


@pytest.fixture
def checkpointed(tmp_path):
    """hc and mhc at depth 1, 4 steps, checkpoints at 2 and 4."""
    pytest.importorskip("torch")
    out = tmp_path / "ck"
    assert _resumable(out, "--variants", "hc", "mhc", "--steps", "4") == 0
    return out


def _snapshot(out):
    return {p.relative_to(out): p.read_bytes() for p in sorted(out.rglob("*")) if p.is_file()}


def test_finished_run_resumed_with_the_same_command_reports_the_same(checkpointed, capsys):
    before = json.loads((checkpointed / "summary.json").read_text())["runs"]
    assert _resumable(checkpointed, "--variants", "hc", "mhc", "--steps", "4") == 0
    after = json.loads((checkpointed / "summary.json").read_text())["runs"]
    for a, b in zip(before, after):
        for key in ("final_loss", "eval_loss_final", "eval_accuracy_final", "max_composite_forward_gain",
                    "nan_inf_events", "steps_run", "grad_norm_first_last_ratio"):
            assert a[key] == b[key], key
    assert [r["step"] for r in _recs(checkpointed / "mhc-L1")] == [0, 1, 2, 3]
    assert json.loads((checkpointed / "mhc-L1" / "config.json").read_text())["resumes"] == [{"step": 4, "changed": {}}]


@pytest.mark.parametrize("case, extra, says", [
    # a checkpoint of 4 steps resumed with --steps 2 used to report steps_run 4 under a config saying 2
    ("fewer steps", ["--steps", "2"], "has 4 steps done, more than --steps 2"),
    # without checkpointing the run started a fresh log beside the old checkpoints (a later resume mixed them)
    ("no checkpointing", ["--steps", "4", "--checkpoint-every", "0"], "holds checkpoints of a resumable run"),
    ("log lost", ["--steps", "6"], "metrics.jsonl is missing"),
    ("log line corrupt", ["--steps", "6"], "metrics.jsonl line 2 is not the complete record of step 1"),
])
def test_resume_refusals_write_nothing(checkpointed, case, extra, says):
    log = checkpointed / "mhc-L1" / "metrics.jsonl"
    if case == "log lost":
        log.unlink()
    if case == "log line corrupt":
        lines = log.read_text().splitlines(keepends=True)
        log.write_text(lines[0] + lines[1][:20] + "\n" + "".join(lines[2:]))
    before = _snapshot(checkpointed)
    with pytest.raises(SystemExit, match=says):
        _resumable(checkpointed, "--variants", "hc", "mhc", *extra)
    assert _snapshot(checkpointed) == before  # refused before hc (the first run) trained


def test_resume_with_a_new_log_schedule_says_and_records_what_changed(checkpointed, capsys):
    assert _resumable(checkpointed, "--variants", "mhc", "--steps", "6", "--log-every", "1", "--eval-every", "1") == 0
    out = capsys.readouterr().out
    assert "changed since that checkpoint (recorded in config.json 'resumes'): steps 4 -> 6, log_every 20 -> 1, " \
           "eval_every 50 -> 1" in out
    cfg = json.loads((checkpointed / "mhc-L1" / "config.json").read_text())
    assert cfg["resumes"] == [{"step": 4, "changed": {"steps": [4, 6], "log_every": [20, 1], "eval_every": [50, 1]}}]
    recs = _recs(checkpointed / "mhc-L1")
    assert [r["step"] for r in recs] == list(range(6))
    assert [r["step"] for r in recs if "eval_loss" in r] == [0, 4, 5]  # the old schedule, then the new one
