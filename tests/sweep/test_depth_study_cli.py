"""scripts/depth_sweep.py as a depth study: --task digits / text with held-out metrics,
--seeds with mean ± std (checked against numpy on the per-run values), --lrs, --norm and
--model end to end at toy sizes; every bad argument is a usage error naming what was
expected; a refused resume writes nothing."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "scripts", "depth_sweep.py")
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import depth_sweep  # noqa: E402
import sweep_stats  # noqa: E402

TINY = ["--depths", "1", "--steps", "3", "--log-every", "2", "--eval-every", "2", "--eval-size", "16", "--dim", "8",
        "--heads", "2", "--batch", "4", "--n", "2", "--no-progress"]


@pytest.mark.parametrize("argv, message", [
    (["--task", "imagenet"], "argument --task: invalid choice: 'imagenet'"),
    (["--seeds"], "argument --seeds: expected at least one argument"),
    (["--eval-every", "0"], "--eval-every must be >= 1, got 0"),
    (["--eval-every", "-3"], "--eval-every must be >= 1, got -3"),
    (["--lr", "-1"], "argument --lr: expected a finite number > 0, got -1"),
    (["--lr", "0"], "argument --lr: expected a finite number > 0, got 0"),
    (["--lrs", "1e-3", "-1"], "argument --lrs: expected a finite number > 0, got -1"),
    (["--vocab", "1"], "--vocab must be >= 2"),
    (["--init-std", "0"], "argument --init-std: expected a finite number > 0, got 0"),
    (["--n", "0"], "argument --n/--streams: expected an integer >= 1, got 0"),
    (["--seeds", "0", "0"], "--seeds and --lrs must not repeat a value"),
    (["--task", "digits", "--patch", "3"], "--patch must divide the image side 8"),
    (["--model", "cnn"], "argument --model: invalid choice: 'cnn'"),
    (["--norm", "layer"], "argument --norm: invalid choice: 'layer'"),
])
def test_bad_arguments_are_usage_errors(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        depth_sweep.parse_args(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_n_zero_is_a_usage_error_not_a_traceback(tmp_path):
    proc = subprocess.run([sys.executable, SCRIPT, "--n", "0", "--out", str(tmp_path / "x")], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "usage:" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not (tmp_path / "x").exists()


def test_digits_without_scikit_learn_names_the_package(monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(SystemExit) as e:
        depth_sweep.parse_args(["--task", "digits"])
    assert e.value.code == 2 and "pip install scikit-learn" in capsys.readouterr().err


def test_task_fixes_vocab_and_sequence():
    pytest.importorskip("sklearn")
    a = depth_sweep.parse_args(["--task", "digits", "--quick"])
    assert (a.vocab, a.seq_len, a.patch, a.seeds, a.lrs, a.init_std) == (10, 16, 2, [0], [1e-3], 0.2)
    assert depth_sweep.parse_args(["--task", "digits", "--init-std", "0.05"]).init_std == 0.05
    a = depth_sweep.parse_args(["--task", "digits", "--model", "mlp", "--seeds", "4", "5", "--lrs", "0.01", "0.1"])
    assert (a.seq_len, a.patch, a.seeds, a.lrs) == (1, 8, [4, 5], [0.01, 0.1])
    assert depth_sweep.parse_args(["--task", "text"]).vocab == 256


def _check_sweep(out, variants, seeds, task):
    summary = json.loads((out / "summary.json").read_text())
    rows = summary["runs"]
    assert len(rows) == len(variants) * len(seeds) and summary["seeds"] == seeds
    for g in summary["groups"]:
        per_seed = [r for r in rows if r["variant"] == g["variant"] and r["depth"] == g["depth"]]
        assert [r["seed"] for r in per_seed] == seeds == g["seeds"]
        for key in ("eval_loss_final", "eval_accuracy_final", "final_loss_avg10pct"):
            vals = np.array([r[key] for r in per_seed], dtype=float)
            assert g[key]["mean"] == pytest.approx(vals.mean(), rel=1e-12)
            assert g[key]["std"] == pytest.approx(vals.std(ddof=1), rel=1e-9, abs=1e-15)
    md = (out / "summary.md").read_text()
    assert "Mean ± sample std over seeds" in md and " ± " in md
    for r in rows:
        run = out / r["run"]
        assert r["run"].endswith(f"-s{r['seed']}")
        cfg = json.loads((run / "config.json").read_text())
        assert cfg["train"]["task"] == task and cfg["model"]["seed"] == r["seed"] and cfg["data"]["eval_examples"] == 16
        recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [rec["step"] for rec in recs if "eval_loss" in rec] == [0, 2]
        assert "eval_loss_final" in recs[-1] and recs[-1]["eval_loss_final"] == r["eval_loss_final"]
        assert all(0.0 <= rec["eval_accuracy"] <= 1.0 for rec in recs if "eval_accuracy" in rec)
    return summary, cfg


def test_digits_two_seeds_torch(tmp_path):
    pytest.importorskip("torch")
    pytest.importorskip("sklearn")
    out = tmp_path / "digits"
    assert depth_sweep.main(["--backend", "torch", "--task", "digits", "--seeds", "0", "1", "--out", str(out), *TINY]) == 0
    _, cfg = _check_sweep(out, ["residual", "hc", "mhc"], [0, 1], "digits")
    assert cfg["model"]["inputs"] == "patches" and cfg["data"]["heldout"] == 450 and "--task digits" in cfg["rerun"]
    assert (out / "eval.png").stat().st_size > 5000 and (out / "loss.png").stat().st_size > 5000


def test_text_two_seeds_mlx_and_conditions(tmp_path):
    pytest.importorskip("mlx.core")
    out = tmp_path / "text"
    argv = ["--backend", "mlx", "--task", "text", "--seq-len", "8", "--seeds", "0", "1", "--variants", "hc", "mhc",
            "--model", "mlp", "--norm", "post", "--no-plots", "--out", str(out), *TINY]
    assert depth_sweep.main(argv) == 0
    _, cfg = _check_sweep(out, ["hc", "mhc"], [0, 1], "text")
    assert cfg["model"]["arch"] == "mlp" and cfg["model"]["norm"] == "post" and cfg["backend"] == "mlx"
    assert cfg["data"]["corpus"] == "Python standard-library sources" and cfg["data"]["bytes"] > 0


def test_lrs_run_each_rate(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "lrs"
    argv = ["--backend", "torch", "--variants", "mhc", "--lrs", "0.001", "0.01", "--no-plots", "--out", str(out), *TINY]
    assert depth_sweep.main(argv) == 0
    rows = json.loads((out / "summary.json").read_text())["runs"]
    assert [(r["run"], r["lr"]) for r in rows] == [("mhc-L1-lr0.001", 0.001), ("mhc-L1-lr0.01", 0.01)]
    for r in rows:
        recs = [json.loads(line) for line in (out / r["run"] / "metrics.jsonl").read_text().splitlines()]
        assert {rec["lr"] for rec in recs} == {r["lr"]}


def test_spread_against_numpy():
    s = sweep_stats.spread([1.0, 2.5, None, float("nan"), 4.0])
    assert s["n"] == 3 and s["mean"] == pytest.approx(np.mean([1, 2.5, 4])) and s["std"] == pytest.approx(np.std([1, 2.5, 4], ddof=1))
    assert sweep_stats.spread([3.0])["std"] == 0.0 and sweep_stats.spread([None])["mean"] is None
    assert sweep_stats.fmt_spread(s) == "2.5 ± 1.5 (3/5)"


def test_refused_resume_writes_nothing(tmp_path):
    pytest.importorskip("torch")
    out = tmp_path / "resume"
    base = ["--backend", "torch", "--no-plots", "--out", str(out), "--checkpoint-every", "2", *TINY]
    assert depth_sweep.main(["--variants", "mhc", *base]) == 0
    run = out / "mhc-L1"
    before = {name: (run / name).read_bytes() for name in ("config.json", "metrics.jsonl")}
    summary = (out / "summary.json").read_bytes()
    with pytest.raises(SystemExit, match=r"different settings \(lr\)"):
        depth_sweep.main(["--variants", "hc", "mhc", "--lr", "0.01", *base])
    assert {name: (run / name).read_bytes() for name in before} == before  # config.json and metrics unchanged
    assert not (out / "hc-L1").exists()  # refused before the first run (hc) was started
    assert (out / "summary.json").read_bytes() == summary


@pytest.mark.parametrize("where", ["file", "under-file"])
def test_out_that_cannot_be_a_folder_is_a_usage_error(where, tmp_path, capsys):
    """--out naming a file, or a path under a file, is refused before any run (it used to
    raise FileExistsError / NotADirectoryError from makedirs)."""
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    out = blocker if where == "file" else blocker / "sweep"
    with pytest.raises(SystemExit) as e:
        depth_sweep.parse_args(["--out", str(out)])
    assert e.value.code == 2
    assert f"--out expected a sweep folder (existing, or one to create), got {str(out)!r}, but {str(blocker)!r} " \
           "is a file" in capsys.readouterr().err
    assert blocker.read_text() == "keep"
