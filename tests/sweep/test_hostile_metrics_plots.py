"""Depth-sweep metrics and plots attacked: spread, grad ratio and gains against numpy on
metrics.jsonl, NaN runs (huge lr, NaN weights), NaN logits, torch / MLX output parity, and
plot_runs on stale run folders, cut logs, near-equal gains and bad paths."""
import json
import os
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import depth_sweep  # noqa: E402

from mhc_core.experiments.data import make_stream  # noqa: E402
from nan_runs import poison_hc_embedding  # noqa: E402  (tests/sweep is on pytest's sys.path)

TINY = ["--depths", "1", "--steps", "3", "--dim", "8", "--heads", "2", "--seq-len", "4", "--batch", "2",
        "--vocab", "5", "--n", "2", "--no-progress", "--no-plots"]


@pytest.fixture(scope="module")
def two_seed_sweep(tmp_path_factory):
    """mhc at depth 2, seeds 0 and 1, gains every step, plots on."""
    pytest.importorskip("torch")
    out = tmp_path_factory.mktemp("spread") / "s"
    assert depth_sweep.main(["--backend", "torch", "--out", str(out), *TINY[:-1], "--variants", "mhc",
                             "--seeds", "0", "1", "--log-every", "1", "--depths", "2"]) == 0
    return out


def _recs(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_plot_band_and_summary_spread_against_numpy_on_metrics_jsonl(two_seed_sweep):
    import plot_runs

    out = two_seed_sweep
    loss = np.array([[r["loss"] for r in _recs(out / f"mhc-L2-s{s}")] for s in (0, 1)])
    runs = plot_runs.load_runs(str(out))
    (group,) = plot_runs.groups(runs)
    steps, mean, lo, hi = plot_runs._mean_band([plot_runs._series(r["metrics"], "loss") for r in group])
    np.testing.assert_array_equal(steps, [0, 1, 2])
    np.testing.assert_allclose(mean, loss.mean(0), rtol=1e-12)
    np.testing.assert_allclose(lo, loss.min(0), rtol=1e-12)
    np.testing.assert_allclose(hi, loss.max(0), rtol=1e-12)
    finals = [_recs(out / f"mhc-L2-s{s}")[-1]["eval_loss_final"] for s in (0, 1)]
    (g,) = json.loads((out / "summary.json").read_text())["groups"]
    assert g["eval_loss_final"]["mean"] == pytest.approx(np.mean(finals), rel=1e-12)
    assert g["eval_loss_final"]["std"] == pytest.approx(np.std(finals, ddof=1), rel=1e-9)
    for name in plot_runs.PLOT_NAMES:
        assert (out / f"{name}.png").stat().st_size > 0, name


def test_grad_ratio_and_gain_peak_against_metrics_jsonl(two_seed_sweep):
    """Summary's first/last block gradient ratio (mean over steps of block 0's norm over that of
    the last block, block norm = L2 over its attention and MLP weights) and max composite gain,
    recomputed in numpy from the per-step records."""
    rows = {r["run"]: r for r in json.loads((two_seed_sweep / "summary.json").read_text())["runs"]}
    for seed in (0, 1):
        recs = _recs(two_seed_sweep / f"mhc-L2-s{seed}")
        g = np.array([r["layer_grad_norm"] for r in recs])  # [steps, 4]: block 0 attn, mlp; block 1 attn, mlp
        ratio = np.linalg.norm(g[:, :2], axis=1).mean() / np.linalg.norm(g[:, 2:], axis=1).mean()
        row = rows[f"mhc-L2-s{seed}"]
        assert row["grad_norm_first_last_ratio"] == pytest.approx(ratio, rel=1e-12)
        assert row["max_composite_forward_gain"] == max(max(r["per_layer"]["composite_forward_gain_max"]) for r in recs)


def test_plots_leave_out_an_earlier_sweeps_runs_in_the_same_out(two_seed_sweep, tmp_path):
    """A stale run folder (another task, seed 7) used to be pooled with this sweep's seeds,
    and a plot this sweep does not draw stayed from the earlier one; a run the summary lists
    but the folder lacks is named."""
    import shutil

    import plot_runs

    out = tmp_path / "s"
    shutil.copytree(two_seed_sweep, out)
    stale = out / "mhc-L2-s7"
    shutil.copytree(out / "mhc-L2-s0", stale)
    cfg = json.loads((stale / "config.json").read_text())
    cfg["model"]["seed"], cfg["train"]["task"] = 7, "copy"
    (stale / "config.json").write_text(json.dumps(cfg))
    assert {r["name"] for r in plot_runs.load_runs(str(out))} == {"mhc-L2-s0", "mhc-L2-s1"}
    for run in ("mhc-L2-s0", "mhc-L2-s1"):  # this sweep has no H_res to draw: h_res.png must go
        (out / run / "res_final.json").unlink()
    written = plot_runs.plot_runs(str(out))
    assert not (out / "h_res.png").exists() and len(written) == len(plot_runs.PLOT_NAMES) - 1
    summary = json.loads((out / "summary.json").read_text())
    summary["runs"] = [{"run": "mhc-L2-s0"}, {"run": "gone"}]
    (out / "summary.json").write_text(json.dumps(summary))
    with pytest.raises(SystemExit, match="summary.json lists run 'gone'"):
        plot_runs.load_runs(str(out))


def test_huge_lr_is_recorded_as_nan_events_against_the_log(tmp_path):
    """lr 1e6: HC's gradients go non-finite after the first update; the sweep does not crash, every
    such step is an event whose count matches metrics.jsonl (counted here directly), and the
    run stops as diverged after --max-nonfinite in a row, with no final training loss. mHC's
    second step has a huge but finite gradient (~1e24): not an event, the update is applied."""
    pytest.importorskip("torch")
    out = tmp_path / "hot"
    assert depth_sweep.main(["--backend", "torch", "--out", str(out), *TINY, "--variants", "hc", "mhc",
                             "--lr", "1e6", "--steps", "8", "--max-nonfinite", "2"]) == 0
    rows = {r["run"]: r for r in json.loads((out / "summary.json").read_text())["runs"]}
    for run in ("hc-L1", "mhc-L1"):
        recs = _recs(out / run)
        grads_bad = [not np.isfinite(float(r["grad_norm"])) or not np.isfinite(float(r["loss"])) for r in recs]
        assert [r["nan_inf_event"] for r in recs] == [int(b) for b in grads_bad]
        assert recs[-1]["nan_inf_events_total"] == sum(grads_bad) == rows[run]["nan_inf_events"]
        if run == "mhc-L1":
            assert not any(grads_bad) and not rows[run]["diverged"] and len(recs) == 8
            assert max(float(r["grad_norm"]) for r in recs) > 1e20  # its square overflows float32
            continue
        assert rows[run]["diverged"] and grads_bad[-2:] == [True, True] and rows[run]["steps_run"] == len(recs) < 8
        # no final training loss for a diverged run (it used to report the loss from before it diverged)
        assert rows[run]["final_loss"] is None and rows[run]["final_loss_avg10pct"] == "nan"
        assert rows[run]["last_finite_loss"] == [r["loss"] for r in recs if not r["nan_inf_event"]][-1]
    (group,) = [g for g in json.loads((out / "summary.json").read_text())["groups"] if g["variant"] == "hc"]
    assert group["final_loss_avg10pct"]["n"] == 0 and group["diverged"] == 1


def test_a_run_whose_every_gain_is_nan_reports_no_gain_not_zero(tmp_path, monkeypatch):
    """A NaN embedding makes every measured gain NaN: the summary's max composite gain used to
    read 0.0 (the accumulator's start), an amplification below any real network's."""
    pytest.importorskip("torch")
    poison_hc_embedding(monkeypatch, depth_sweep)
    out = tmp_path / "nan"
    assert depth_sweep.main(["--backend", "torch", "--out", str(out), *TINY, "--variants", "hc", "mhc",
                             "--max-nonfinite", "2", "--log-every", "1"]) == 0
    assert all(r["composite_forward_gain"]["max"] == "nan" for r in _recs(out / "hc-L1"))
    summary = json.loads((out / "summary.json").read_text())
    hc, mhc = summary["runs"]
    assert hc["max_composite_forward_gain"] is None and hc["max_composite_backward_gain"] is None
    peaks = [r["composite_forward_gain_peak"] for r in _recs(out / "mhc-L1")]
    assert mhc["max_composite_forward_gain"] == max(peaks)
    assert summary["groups"][0]["max_composite_forward_gain"]["n"] == 0
    assert "| hc | 1 | 0 | 0.001 | — |" in (out / "summary.md").read_text()


def _shape(obj, skip=("versions",)):
    """The key structure of a JSON value (dict keys recursively, list lengths), values left out."""
    if isinstance(obj, dict):
        return {k: _shape(v) for k, v in obj.items() if k not in skip}
    if isinstance(obj, list):
        return [len(obj)] + [_shape(v) for v in obj[:1]]
    return type(obj).__name__ if not isinstance(obj, (int, float)) or isinstance(obj, bool) else "number"


def test_mlx_and_torch_sweeps_write_the_same_files_and_keys(tmp_path):
    """Every file, every metrics record's keys, config.json / res_final.json / summary.json
    structure and the plot set: the same on both backends (history included)."""
    pytest.importorskip("torch")
    pytest.importorskip("mlx.core")
    outs = {}
    for backend in ("torch", "mlx"):
        outs[backend] = tmp_path / backend
        assert depth_sweep.main(["--backend", backend, "--out", str(outs[backend]), *TINY[:-1],
                                 "--variants", "mhc", "history", "--log-every", "2"]) == 0
    files = {b: sorted(str(p.relative_to(o)) for p in o.rglob("*") if p.is_file()) for b, o in outs.items()}
    assert files["torch"] == files["mlx"] and "mhc-L1/res_final.json" in files["torch"]
    for name in files["torch"]:
        if name.endswith(".jsonl"):
            keys = [[sorted(json.loads(line)) for line in (o / name).read_text().splitlines()] for o in outs.values()]
            assert keys[0] == keys[1], name
        elif name.endswith(".json"):
            shapes = [_shape(json.loads((o / name).read_text())) for o in outs.values()]
            assert shapes[0] == shapes[1], name


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_held_out_accuracy_of_nan_logits_is_nan_not_a_number(backend):
    """NaN weights give NaN logits; argmax of them picks a class anyway, so the held-out
    accuracy used to read 0.019 (chance-like) beside a NaN loss and entered the mean over seeds."""
    pytest.importorskip("torch" if backend == "torch" else "mlx.core")
    import importlib

    from mhc_core.experiments.lm_config import LMConfig, init_lm_params

    lm = importlib.import_module(f"mhc_core_{backend}.lm")
    cfg = LMConfig(vocab=5, dim=8, n_layers=1, n_heads=2, seq_len=4, variant="hc", n=2)
    stream = make_stream("incrementing", vocab=5, seq_len=4, batch_size=2, seed=1, eval_size=8)
    params = init_lm_params(cfg)
    healthy = lm.Trainer(cfg, params).evaluate(*stream.eval_set())
    assert 0.0 <= healthy["eval_accuracy"] <= 1.0 and np.isfinite(healthy["eval_loss"])
    params["embed.weight"][1] = np.nan  # one token's embedding: the rows holding it go NaN
    ev = lm.Trainer(cfg, params).evaluate(*stream.eval_set())
    assert np.isnan(ev["eval_loss"]) and np.isnan(ev["eval_accuracy"])


def test_log_axis_of_near_equal_gains_is_not_stretched():
    """Gains 0.999999 and 1 used to fill a log panel top to bottom (1e-6 drawn as a drop);
    the axis now spans at least MIN_LOG_SPAN, and a wide range is left as it is."""
    import matplotlib.pyplot as plt
    import plot_runs

    fig, (a, b) = plt.subplots(1, 2)
    a.plot([0, 1], [0.999999, 1.0])
    b.plot([0, 1], [1.0, 1e6])
    b.set_yscale("log")
    before = b.get_ylim()
    plot_runs._log_y(a)
    plot_runs._log_y(b)
    lo, hi = a.get_ylim()
    assert hi / lo == pytest.approx(plot_runs.MIN_LOG_SPAN) and lo < 0.999999 and hi > 1.0
    assert b.get_ylim() == before
    plt.close(fig)


@pytest.mark.parametrize("what", ["missing", "file"])
def test_plot_runs_cli_names_a_runs_dir_that_is_not_a_folder(tmp_path, capsys, what):
    import plot_runs

    path = tmp_path / "x"
    if what == "file":
        path.write_text("")
    with pytest.raises(SystemExit) as exc:
        plot_runs.main([str(path)])
    assert exc.value.code == 2
    assert f"runs_dir expected a sweep folder written by scripts/depth_sweep.py, got {str(path)!r} " \
           f"({'a file' if what == 'file' else 'no such folder'})" in capsys.readouterr().err


def test_metrics_with_a_cut_last_line_plot_and_a_corrupt_middle_line_is_named(tmp_path, capsys):
    """A run killed without checkpoints leaves a half-written last line: plot_runs used to fail
    with JSONDecodeError. It is left out with a warning; a bad line elsewhere is named."""
    import plot_runs

    log = tmp_path / "metrics.jsonl"
    good = [{"step": 0, "loss": 1.5}, {"step": 1, "loss": "nan"}]
    log.write_text("".join(json.dumps(r) + "\n" for r in good) + '{"step": 2, "lo')
    assert plot_runs.read_metrics(str(log)) == good
    assert "last line is incomplete" in capsys.readouterr().err
    log.write_text(json.dumps(good[0]) + "\n" + '{"step": 1, "lo\n' + json.dumps(good[1]) + "\n")
    with pytest.raises(SystemExit, match="metrics.jsonl line 2 is not a JSON record"):
        plot_runs.read_metrics(str(log))
