"""scripts/depth_sweep.py attacked as a hostile user: arguments that used to be accepted and
then crashed mid-sweep or trained the wrong thing silently are usage errors naming what was
expected; the held-out sets are what they claim; a resume names what changed; the plots
show only the sweep's own runs (checked against numpy on metrics.jsonl)."""
import json
import os
import re
import sys

import numpy as np
import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import depth_sweep  # noqa: E402

from mhc_core.experiments.data import DIGITS_TEST, make_stream  # noqa: E402
from mhc_core.experiments.tasks import TaskStream  # noqa: E402

TINY = ["--depths", "1", "--steps", "3", "--dim", "8", "--heads", "2", "--seq-len", "4", "--batch", "2",
        "--vocab", "5", "--n", "2", "--no-progress", "--no-plots"]

TASK_FREE = [a for i, a in enumerate(TINY)  # without --seq-len / --vocab: digits and text fix them
             if a not in ("--seq-len", "--vocab") and TINY[i - 1] not in ("--seq-len", "--vocab")]


@pytest.mark.parametrize("bad, says", [
    # a repeated depth or variant trained the same run dir twice and counted it twice in the summary
    (["--depths", "1", "1"], "--depths must not repeat a value, got 1 1"),
    (["--variants", "mhc", "mhc"], "--variants must not repeat a value, got mhc mhc"),
    # --metric-rows 0 crashed at the first measured step (KeyError 'layer_inputs')
    # the task's fixed vocab / sequence length silently replaced a different value given
    (["--task", "digits", "--vocab", "50"], "--vocab is fixed by --task digits to 10, got 50"),
    (["--task", "digits", "--seq-len", "4", "--patch", "2"], "--seq-len is fixed by --task digits to 16 (--patch 2), got 4"),
    (["--task", "text", "--vocab", "5"], "--vocab is fixed by --task text to 256, got 5"),
    # two rates that print alike trained into the same folder, the second over the first
    (["--lrs", "0.001", "0.0010000001"], "--lrs must differ in their first 6 significant digits"),
    (["--metric-rows", "0"], "--metric-rows must be an integer >= 1, got 0"),
    (["--metric-rows", "3"], "--metric-rows must be at most --batch (2), got 3"),
    # recompute of the history variant raised ValueError inside the run, after the others trained
    (["--variants", "mhc", "history", "--recompute", "2"], "--recompute 2 is not implemented for the history variant"),
    # digits' held-out set has 450 images: a larger --eval-size was cut to 450 silently
    (["--task", "digits", "--eval-size", str(DIGITS_TEST + 1)],
     f"eval_size must be at most the {DIGITS_TEST} held-out digits images"),
    (["--task", "text", "--eval-size", "100000", "--seq-len", "4"], "distinct held-out text windows of seq_len 4"),
])
def test_bad_arguments_are_usage_errors_before_any_run(tmp_path, capsys, bad, says):
    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        depth_sweep.main(["--out", str(out), *TASK_FREE, *bad])
    assert exc.value.code == 2
    assert says in capsys.readouterr().err
    assert not out.exists()


def test_edge_values_that_are_valid_still_parse():
    base = TASK_FREE
    args = depth_sweep.parse_args([*base, "--metric-rows", "2", "--task", "digits", "--eval-size", str(DIGITS_TEST)])
    assert args.metric_rows == 2 and args.eval_size == DIGITS_TEST and (args.vocab, args.seq_len) == (10, 16)
    # the values a digits run's own rerun line repeats are accepted
    args = depth_sweep.parse_args([*base, "--task", "digits", "--vocab", "10", "--seq-len", "1", "--patch", "8"])
    assert (args.vocab, args.seq_len) == (10, 1)
    assert depth_sweep.parse_args([*base, "--task", "text", "--vocab", "256", "--seq-len", "4"]).seq_len == 4


def test_text_eval_windows_are_distinct_and_inside_the_held_out_bytes():
    s = make_stream("text", vocab=256, seq_len=8, batch_size=2, seed=0, eval_size=0)
    assert len(s.eval_set()[0]) == 256
    test = s._arrays["test"]
    with pytest.raises(ValueError, match="distinct held-out text windows"):
        make_stream("text", vocab=256, seq_len=8, batch_size=2, seed=0, eval_size=len(test) - 8 + 1)
    biggest = make_stream("text", vocab=256, seq_len=8, batch_size=2, seed=0, eval_size=len(test) - 8)
    inputs, targets, _ = biggest.eval_set()
    windows = np.concatenate([inputs, targets[:, -1:]], 1)  # every start once, in order, to the last byte
    np.testing.assert_array_equal(windows, np.stack([test[i:i + 9] for i in range(len(test) - 8)]))


def test_text_held_out_windows_found_in_training_bytes_are_counted():
    """The text split is by position; windows of repeated code also occur in the training
    bytes: describe() counts them (checked by a naive search over the training text)."""
    s = make_stream("text", vocab=256, seq_len=12, batch_size=2, seed=0, eval_size=64)
    inputs, targets, _ = s.eval_set()
    train = bytes(s._arrays["train"])
    naive = sum(bytes(list(row) + [int(t[-1])]) in train for row, t in zip(inputs, targets))
    assert s.describe()["eval_windows_in_train"] == naive


def test_incrementing_held_out_rows_are_training_rows_and_say_so():
    """A held-out seed gives no held-out data for incrementing: every held-out row also comes
    out of the training stream (counted here directly), and config.json's data record says so."""
    s = make_stream("incrementing", vocab=7, seq_len=5, batch_size=8, seed=1, eval_size=16)
    held = {row.tobytes() for row in s.eval_set()[0]}
    train = TaskStream("incrementing", vocab=7, seq_len=5, batch_size=8, seed=1)
    seen = {row.tobytes() for i in range(50) for row in train.batch(i)[0]}
    assert held <= seen
    d = s.describe()
    assert d["distinct_sequences"] == 7 and d["heldout_disjoint"].startswith("no")
    copy = make_stream("copy", vocab=7, seq_len=5, batch_size=8, seed=1).describe()
    assert copy["distinct_sequences"] == 7 ** 3  # rows of 6 = 3 tokens twice


@pytest.fixture(scope="module")
def two_seed_sweep(tmp_path_factory):
    """mhc at depth 1, seeds 0 and 1, plots on; then a stale run folder of another task with
    seed 7 (as an earlier sweep into the same --out leaves it) and a stale h_res.png."""
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


def test_huge_lr_is_recorded_as_nan_events_against_the_log(tmp_path):
    """lr 1e6: gradients go non-finite after the first update; the sweep does not crash, every
    such step is an event whose count matches metrics.jsonl (counted here directly), and the
    run stops as diverged after --max-nonfinite in a row, with no final training loss."""
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
        assert rows[run]["diverged"] and grads_bad[-2:] == [True, True] and rows[run]["steps_run"] == len(recs) < 8
        # no final training loss for a diverged run (it used to report the loss from before it diverged)
        assert rows[run]["final_loss"] is None and rows[run]["final_loss_avg10pct"] == "nan"
        assert rows[run]["last_finite_loss"] == [r["loss"] for r in recs if not r["nan_inf_event"]][-1]
    (group,) = [g for g in json.loads((out / "summary.json").read_text())["groups"] if g["variant"] == "mhc"]
    assert group["final_loss_avg10pct"]["n"] == 0 and group["diverged"] == 1


def test_a_run_whose_every_gain_is_nan_reports_no_gain_not_zero(tmp_path, monkeypatch):
    """A NaN embedding makes every measured gain NaN: the summary's max composite gain used to
    read 0.0 (the accumulator's start), an amplification below any real network's."""
    pytest.importorskip("torch")
    from mhc_core.experiments.lm_config import init_lm_params

    def poisoned(cfg):
        p = init_lm_params(cfg)
        if cfg.variant == "hc":
            p["embed.weight"][:] = np.nan
        return p

    monkeypatch.setattr(depth_sweep, "init_lm_params", poisoned)
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


@pytest.mark.parametrize("bad, says", [
    # the list used to win silently: --seed 3 --seeds 0 1 ran seeds 0 and 1
    (["--seed", "3", "--seeds", "0", "1"], "--seed and --seeds both given (--seed 3, --seeds 0 1); give one of them"),
    (["--lr", "0.01", "--lrs", "0.001", "0.1"], "--lr and --lrs both given (--lr 0.01, --lrs 0.001 0.1)"),
])
def test_a_single_value_and_its_list_together_are_refused(bad, says, capsys):
    with pytest.raises(SystemExit) as exc:
        depth_sweep.parse_args([*TINY, *bad])
    assert exc.value.code == 2 and says in capsys.readouterr().err


def test_single_values_and_defaults_still_apply():
    assert (depth_sweep.parse_args(TINY).lrs, depth_sweep.parse_args(TINY).seeds) == ([1e-3], [0])
    args = depth_sweep.parse_args([*TINY, "--lr", "0.01", "--seed", "3"])
    assert (args.lr, args.lrs, args.seed, args.seeds) == (0.01, [0.01], 3, [3])


@pytest.mark.parametrize("bad, says", [
    (["--checkpoint-every", "-1"], "--checkpoint-every must be an integer >= 0 (0 = off), got -1"),
    (["--keep-checkpoints", "0"], "--keep-checkpoints must be an integer >= 1, got 0"),
    (["--recompute", "-2"], "--recompute must be 0, auto or a positive integer, got '-2'"),
])
def test_bad_scale_flags_name_the_value_before_any_run(tmp_path, bad, says):
    out = tmp_path / "never"
    with pytest.raises(SystemExit, match=re.escape(says)):
        depth_sweep.main(["--out", str(out), *TINY, *bad])
    assert not out.exists()


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


@pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="needs Linux /proc (a filesystem no one can write)")
def test_out_on_a_filesystem_nobody_can_write_is_a_usage_error(capsys):
    """os.access says yes to root on /proc; the sweep then failed in makedirs after loading
    the backend. A trial file in the nearest existing folder decides."""
    with pytest.raises(SystemExit) as exc:
        depth_sweep.parse_args(["--out", "/proc/mhc-sweep/out"])
    assert exc.value.code == 2
    assert "--out expected a sweep folder (existing, or one to create), got '/proc/mhc-sweep/out', but '/proc' " \
           "is not writable" in capsys.readouterr().err


def test_committed_reference_commands_still_parse(tmp_path):
    """The stricter checks above refuse nothing a committed reference run was made with: every
    runs/reference sweep command and every run's rerun line parses (digits / text reruns repeat
    the vocab and seq_len the task fixes)."""
    import glob
    import shlex

    lines = [shlex.split(json.load(open(p))["command"])[1:]
             for p in glob.glob(os.path.join(ROOT, "runs", "reference", "*", "summary.json"))]
    lines += [shlex.split(json.load(open(p))["rerun"])[2:]
              for p in glob.glob(os.path.join(ROOT, "runs", "reference", "*", "*", "config.json"))]
    if not lines:
        pytest.skip("no runs/reference in this checkout")
    for argv in lines:
        argv[argv.index("--out") + 1] = str(tmp_path / "out")
        if "--task" in argv and argv[argv.index("--task") + 1] == "digits":
            pytest.importorskip("sklearn")
        depth_sweep.parse_args(argv)
