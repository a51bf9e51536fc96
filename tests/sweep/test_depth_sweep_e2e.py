"""scripts/depth_sweep.py end to end at a toy size (subprocess, a few steps): the files of
each run, the keys of every metrics record, the summary and the plots; and the
cross-backend run check: the same sweep on MLX logs the same losses and gains as on torch
(float32; rel 1e-5 over 3 Adam steps, see test_lm_backends.py for why that is the bound)."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from nan_runs import poison_hc_embedding  # tests/sweep is on pytest's sys.path

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
SCRIPT = os.path.join(ROOT, "scripts", "depth_sweep.py")
TINY = ["--depths", "1", "2", "--steps", "3", "--log-every", "2", "--dim", "8", "--heads", "2",
        "--seq-len", "6", "--batch", "2", "--vocab", "7", "--n", "2", "--no-progress"]
STEP_KEYS = {"step", "loss", "lr", "grad_norm", "mixing_grad_norm", "layer_grad_norm", "nan_inf_event",
             "nonfinite_loss", "nonfinite_grad_tensors", "nan_inf_events_total", "tokens_per_sec"}
GAIN_KEYS = {"forward_gain", "backward_gain", "composite_forward_gain", "composite_backward_gain",
             "composite_forward_gain_peak", "composite_backward_gain_peak", "identity_distance", "per_layer"}
PLOTS = ("loss", "grad_norm", "nan_inf_events", "gain", "depth_scaling", "gain_vs_layer", "grad_heatmap",
         "grad_vs_layer", "h_res")


def _sweep(tmp_path, backend, extra=()):
    out = tmp_path / f"sweep-{backend}"
    cmd = [sys.executable, SCRIPT, "--backend", backend, "--out", str(out), *TINY, *extra]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return out


@pytest.fixture(scope="module")
def torch_sweep(tmp_path_factory):
    pytest.importorskip("torch")
    return _sweep(tmp_path_factory.mktemp("e2e"), "torch")


def _records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_torch_sweep_writes_runs_summary_and_plots(torch_sweep):
    out = torch_sweep
    for variant in ("residual", "hc", "mhc"):
        for depth in (1, 2):
            run = out / f"{variant}-L{depth}"
            cfg = json.loads((run / "config.json").read_text())
            assert cfg["backend"] == "torch" and "torch" in cfg["versions"]
            assert cfg["model"]["n_layers"] == depth and cfg["model"]["variant"] == variant
            assert cfg["model"]["n"] == (1 if variant == "residual" else 2)
            assert cfg["model"]["seed"] == 0 and "depth_sweep.py" in cfg["rerun"]
            recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
            assert [r["step"] for r in recs] == [0, 1, 2]
            for r in recs:
                assert STEP_KEYS <= set(r), STEP_KEYS - set(r)
                assert len(r["layer_grad_norm"]) == 2 * depth
            measured = [r["step"] for r in recs if GAIN_KEYS <= set(r)]
            assert measured == [0, 2]  # every --log-every steps and the last step
            if variant == "residual":  # 1x1 identity: every gain is exactly 1
                assert recs[0]["composite_forward_gain"] == {"max": 1.0, "mean": 1.0, "min": 1.0}
            res = json.loads((run / "res_final.json").read_text())
            assert len(res["composite_mean"]) == cfg["model"]["n"]
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["runs"]) == 6
    assert {"final_loss", "max_composite_forward_gain", "nan_inf_events", "grad_norm_first_last_ratio"} <= set(
        summary["runs"][0])
    md = (out / "summary.md").read_text()
    assert md.count("\n| ") == 7 + 7 and "| mhc | 2 | 0 | 0.001 |" in md  # spread and runs: header + 6 rows each
    for name in PLOTS:
        assert (out / f"{name}.png").stat().st_size > 5000, name


def test_mlx_sweep_matches_torch_sweep(tmp_path, torch_sweep):
    pytest.importorskip("mlx.core")
    out = _sweep(tmp_path, "mlx", ["--no-plots"])
    assert json.loads((out / "mhc-L1" / "config.json").read_text())["backend"] == "mlx"
    assert (out / "summary.md").is_file()
    for run in ("residual-L1", "residual-L2", "hc-L1", "hc-L2", "mhc-L1", "mhc-L2"):
        mlx_recs, torch_recs = _records(out / run), _records(torch_sweep / run)
        assert len(mlx_recs) == len(torch_recs) == 3 and all(STEP_KEYS <= set(r) for r in mlx_recs)
        for key, sub in (("loss", None), ("grad_norm", None), ("composite_forward_gain", "max"),
                         ("composite_backward_gain", "max")):
            got = np.array([r[key] if sub is None else r[key][sub] for r in mlx_recs if key in r])
            want = np.array([r[key] if sub is None else r[key][sub] for r in torch_recs if key in r])
            err = np.abs(got - want) / np.abs(want)
            assert err.max() < 1e-5, f"[{run} {key}] step {err.argmax()}: mlx {got[err.argmax()]!r} torch {want[err.argmax()]!r}"


def test_nan_is_recorded_and_the_sweep_goes_on(tmp_path, monkeypatch):
    """A NaN weight makes every loss NaN: each step is logged as a NaN/Inf event with the
    update skipped, the run stops after --max-nonfinite steps as diverged, and the next
    run of the sweep still trains."""
    pytest.importorskip("torch")
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import depth_sweep
    poison_hc_embedding(monkeypatch, depth_sweep)
    out = tmp_path / "nan"
    args = ["--backend", "torch", "--out", str(out), "--variants", "hc", "mhc", "--max-nonfinite", "3",
            "--no-plots", *TINY]
    args[args.index("--depths") + 1: args.index("--depths") + 3] = ["1"]
    args[args.index("--steps") + 1] = "5"
    assert depth_sweep.main(args) == 0
    hc = _records(out / "hc-L1")
    assert [r["nan_inf_event"] for r in hc] == [1, 1, 1] and hc[-1]["nan_inf_events_total"] == 3
    assert all(r["loss"] == "nan" and r["nonfinite_loss"] == 1 for r in hc)
    runs = {r["run"]: r for r in json.loads((out / "summary.json").read_text())["runs"]}
    assert runs["hc-L1"]["diverged"] and runs["hc-L1"]["nan_inf_events"] == 3 and runs["hc-L1"]["steps_run"] == 3
    assert not runs["mhc-L1"]["diverged"] and runs["mhc-L1"]["nan_inf_events"] == 0
    assert runs["mhc-L1"]["final_loss"] < _records(out / "mhc-L1")[0]["loss"]
    assert "| hc | 1 | 0 | 0.001 | — |" in (out / "summary.md").read_text() and "3 (diverged)" in (out / "summary.md").read_text()


@pytest.mark.parametrize("bad, says", [
    (["--lr", "nan"], "argument --lr: expected a finite number > 0"),
    (["--lr", "-1"], "argument --lr: expected a finite number > 0"),
    (["--grad-clip", "inf"], "--grad-clip must be a finite number >= 0"),
    (["--warmup", "-2"], "--warmup must be an integer >= 0"),
    (["--seed", "-1"], "--seed must be an integer >= 0"),
    (["--max-nonfinite", "0"], "--max-nonfinite must be an integer >= 1"),
    (["--n", "0"], "argument --n/--streams: expected an integer >= 1"),
    (["--history", "0"], "argument --history: expected an integer >= 1"),
    # history settings without the history variant would be silently ignored
    (["--variants", "mhc", "--history", "3"], "has no 'history'"),
    (["--variants", "hc", "mhc", "--detach-history"], "has no 'history'"),
    (["--batch", "0"], "--batch"),
    # the bad setting of the last variant is refused before the first variant trains
    (["--variants", "residual", "mhc-lite", "--n", "7"], "variant mhc-lite: mhc-lite mixes the n! permutation"),
])
def test_bad_arguments_are_usage_errors_before_any_run(tmp_path, capsys, bad, says):
    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import depth_sweep

    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        depth_sweep.main(["--quick", "--out", str(out), "--no-plots", "--no-progress", *bad])
    assert exc.value.code == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_rerun_command_of_each_run_parses_and_names_history_only_where_used(tmp_path):
    """Every config.json's rerun line is a valid command for that one run: the history
    window travels with a history run and is left off the others (where it is refused)."""
    import shlex

    sys.path.insert(0, os.path.join(ROOT, "scripts"))
    import depth_sweep

    out = tmp_path / "h"
    assert depth_sweep.main(["--out", str(out), "--depths", "1", *TINY[5:], "--steps", "1", "--no-plots",
                             "--variants", "mhc", "history", "--history", "3", "--detach-history"]) == 0
    for variant in ("mhc", "history"):
        rerun = shlex.split(json.loads((out / f"{variant}-L1" / "config.json").read_text())["rerun"])
        args = depth_sweep.parse_args(rerun[2:])
        assert args.variants == [variant]
        assert (args.history, args.detach_history) == ((3, True) if variant == "history" else (4, False))
