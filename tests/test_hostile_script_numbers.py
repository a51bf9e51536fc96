"""The numbers the user-facing scripts print, against an independent recomputation:
scripts/conformance.py's summary rows, scripts/sweep_stats.py's mean ± sample std,
scripts/int8_quantize.py's error / size figures and scripts/plot_runs.py's NaN/Inf note."""
from __future__ import annotations

import importlib.util
import math
import sys
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "tests" / "conformance"))


def _script(name: str):
    spec = importlib.util.spec_from_file_location(f"{name}_under_test", ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


# ---- scripts/conformance.py: summary rows ------------------------------------------------

@pytest.mark.parametrize("nan_at", [0, 1, 2])
def test_conformance_row_shows_a_nan_error_wherever_it_comes(nan_at):
    """A NaN error (a directional derivative of NaN gradients in grad.fd) is a failure, and
    the row's worst abs / rel must say so wherever it sits among the row's results. max()
    with a NaN key keeps whatever it met first: the NaN stayed hidden behind a small finite
    'worst abs' unless it came first."""
    from compare import Result

    conformance = _script("conformance")
    errs = [1e-9, 3e-9, 2e-9]
    errs[nan_at] = float("nan")
    results = [Result(backend="numpy", check="grad.fd", quantity=f"q{i}", dtype="float64", case="c",
                      abs=e, rel=e, tol=1e-6, rtol=1e-6) for i, e in enumerate(errs)]
    (row,) = conformance.summarise(results)
    # the independent reading: a NaN error counts as the worst (compare() maps NaN to inf)
    assert row["failed"] == 1 and not row["passed"]
    assert not math.isfinite(row["worst_abs"]) and not math.isfinite(row["worst_rel"]), row
    assert not math.isfinite(row["worst_of_tol"]), row
    assert row["worst_case"] == f"c/q{nan_at}"
    assert "FAIL" in conformance.pivot([row])[-1]


def test_conformance_row_figures_match_a_recomputation():
    from compare import Result

    conformance = _script("conformance")
    rng = np.random.default_rng(0)
    results = [Result(backend="torch", check="forward.step", quantity=f"q{i}", dtype="float32", case=f"c{i % 3}",
                      abs=float(a), rel=float(a) / s, tol=float(t), rtol=1e-5)
               for i, (a, s, t) in enumerate(zip(rng.uniform(0, 1e-5, 12), rng.uniform(0.5, 2, 12),
                                                 rng.uniform(2e-6, 2e-5, 12)))]
    (row,) = conformance.summarise(results)
    assert row["worst_abs"] == max(r.abs for r in results)
    assert row["worst_rel"] == max(r.rel for r in results)
    assert row["worst_of_tol"] == max(r.abs / r.tol for r in results)
    assert row["failed"] == sum(r.abs > r.tol for r in results) and row["compared"] == 12


# ---- scripts/sweep_stats.py: mean ± sample std -----------------------------------------

@pytest.mark.parametrize("values", [
    [0.9999990000000001, 0.9999990000000002],   # a max gain of 1 in two seeds, one ulp apart
    [1.0, float(np.nextafter(1.0, 2.0))],
    [3.0, 3.0, float(np.nextafter(3.0, 4.0))],
    [1e9 + 0.1, 1e9 + 0.2, 1e9 + 0.3],
    [0.1, 0.2, 0.3, 0.4],
])
def test_sweep_stats_spread_is_the_exact_sample_std(values):
    """Against the exact mean and sample variance of the floats (fractions): np.mean's
    rounded sum was 2 ulps off at 1e9, and np.std(ddof=1) subtracted that rounded mean, so
    one-ulp spreads came out 41% high (2.2e-16 for 1.6e-16; a reference summary.md printed
    '1 ± 1.1e-16' where the exact std of those two gains is 7.9e-17)."""
    import sweep_stats

    exact = [Fraction(v) for v in values]
    mean = sum(exact) / len(exact)
    variance = sum((v - mean) ** 2 for v in exact) / (len(exact) - 1)
    got = sweep_stats.spread(values)
    assert got["mean"] == float(mean)
    assert got["std"] == pytest.approx(math.sqrt(variance), rel=1e-15, abs=0)


REFERENCE_SWEEPS = sorted(p.parent for p in (ROOT / "runs" / "reference").glob("*/summary.json")
                          if "## Mean ± sample std over seeds" in (p.parent / "summary.md").read_text())


@pytest.mark.parametrize("sweep", REFERENCE_SWEEPS, ids=lambda p: p.name)
def test_reference_summary_tables_are_what_sweep_stats_prints_from_their_runs(sweep):
    """Each committed summary.md's mean ± std table, and summary.json's groups, recomputed
    from the per-run rows summary.json holds."""
    import json

    import sweep_stats

    summary = json.loads((sweep / "summary.json").read_text())
    groups = sweep_stats.aggregate(summary["runs"])
    table = (sweep / "summary.md").read_text().splitlines()
    missing = [line for line in sweep_stats.markdown_table(groups) if line not in table]
    assert not missing, missing
    for want, got in zip(groups, summary["groups"], strict=True):
        for m in sweep_stats.METRICS:
            assert (got[m]["mean"], got[m]["std"], got[m]["n"]) == (want[m]["mean"], want[m]["std"], want[m]["n"]), \
                (want["variant"], want["depth"], m)


# ---- scripts/int8_quantize.py: error and size figures ------------------------------------

def test_int8_report_figures_match_a_numpy_recomputation(tmp_path):
    """Each row's figures recomputed in float64 numpy from the two models' logits, and the
    size column in the unit its header names: the script divides by 2**20, which is MiB
    (its header said MB: 13.78 'MB' is 14.45 MB)."""
    import copy
    import io
    import json
    import warnings

    torch = pytest.importorskip("torch")
    pytest.importorskip("transformers")
    if torch.backends.quantized.engine == "none":
        pytest.skip("no quantized engine in this torch build")
    script = _script("int8_quantize")
    out = tmp_path / "int8"
    argv = ["--out", str(out), "--hidden", "32", "--layers", "1", "--vocab", "64", "--steps", "2"]
    assert script.main(argv) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert "| model | state_dict MiB |" in out.with_suffix(".md").read_text()

    args = script.argparse.Namespace(seed=0, vocab=64, hidden=32, layers=1, steps=2, lr=5e-3)
    model = script.build(args)  # the same seeds: the same trained model
    ids = script.task_batch(torch.Generator().manual_seed(1), 4, 32, 64)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torch.ao.quantization import quantize_dynamic

        q = quantize_dynamic(copy.deepcopy(model), {torch.nn.Linear}, dtype=torch.qint8)
    with torch.no_grad():
        ref = model(ids).logits.double().numpy()
        got = q(ids).logits.double().numpy()
    buf = io.BytesIO()
    torch.save(q.state_dict(), buf)
    base = io.BytesIO()
    torch.save(model.state_dict(), base)
    row = report["rows"][1]
    err = np.abs(got - ref)
    targets = ids[:, 1:].numpy()
    assert row["max_abs_logit_err"] == pytest.approx(err.max(), rel=1e-6)
    assert row["mean_abs_logit_err"] == pytest.approx(err.mean(), rel=1e-5)
    assert row["logit_std"] == pytest.approx(ref.std(ddof=1), rel=1e-5)
    assert row["top1_agreement"] == pytest.approx(np.mean(got.argmax(-1) == ref.argmax(-1)), rel=1e-6)
    assert row["task_accuracy"] == pytest.approx(np.mean(got[:, :-1].argmax(-1) == targets), rel=1e-6)
    assert row["state_dict_MiB"] == pytest.approx(buf.getbuffer().nbytes / 2**20, rel=1e-3)
    assert row["compression"] == pytest.approx(base.getbuffer().nbytes / buf.getbuffer().nbytes, rel=1e-3)
    mhc = sum(p.numel() for n, p in model.named_parameters() if n.rsplit(".", 1)[-1] in ("phi", "bias", "alpha")
              and "_mhc" in n)
    assert report["model"]["mhc_params_float32"] == mhc > 0


# ---- scripts/plot_runs.py: the NaN/Inf plot's count ---------------------------------------

def test_nan_plot_counts_the_events_of_every_seed(tmp_path, monkeypatch):
    """Two seeds, NaN/Inf steps only in seed 1 (its log edited after a clean tiny sweep):
    the plot's title said 'no NaN/Inf step in any run', as it counted the first seed only
    while claiming 'all runs together'. Recomputed here from every run's metrics.jsonl."""
    import json

    pytest.importorskip("torch")
    import depth_sweep
    import plot_runs

    out = tmp_path / "sweep"
    assert depth_sweep.main(["--backend", "torch", "--out", str(out), "--depths", "1", "--steps", "3", "--dim", "8",
                             "--heads", "2", "--seq-len", "4", "--batch", "2", "--vocab", "5", "--n", "2",
                             "--variants", "mhc", "--seeds", "0", "1", "--no-progress", "--no-plots"]) == 0
    log = out / "mhc-L1-s1" / "metrics.jsonl"
    recs = [json.loads(line) for line in log.read_text().splitlines()]
    total = 0
    for r, event in zip(recs, (0, 1, 1)):
        total += event
        r["nan_inf_event"], r["nan_inf_events_total"] = event, total
    log.write_text("".join(json.dumps(r) + "\n" for r in recs))
    want = sum(json.loads(p.read_text().splitlines()[-1])["nan_inf_events_total"]
               for p in out.glob("*/metrics.jsonl"))
    assert want == 2
    titles = {}
    real = plot_runs._line_plot
    monkeypatch.setattr(plot_runs, "_line_plot",
                        lambda runs, path, key, *a, **k: titles.setdefault(key, a[2]) and real(runs, path, key, *a, **k))
    plot_runs.plot_runs(str(out))
    assert titles["nan_inf_event"] == f"NaN/Inf events ({want} NaN/Inf steps in all runs together)"
    assert (out / "nan_inf_events.png").stat().st_size > 0


# ---- scripts/compare_generation.py: the texts it prints --------------------------------

def test_byte_tokenizer_decode_keeps_every_token():
    """A model saved without a tokenizer and a vocabulary above 256 (the README's tiny
    Qwen3 has 300) generates ids 256..299 that are no byte: decode dropped them, so
    compare_generation printed five tokens as two characters, and two different
    continuations of such ids as the same (empty) text beside 'same text: no'."""
    from finetune_data import ByteTokenizer

    tok = ByteTokenizer(300)
    ids = [*"héllo".encode(), 290, 104, 257]
    assert tok.decode(ids) == "héllo<290>h<257>"
    assert tok.decode(list("plain".encode())) == "plain"
    assert tok.decode([256, 299]) != tok.decode([299, 256])


# ---- benchmarks/pool_runs.py: pooled statistics of the runs log ---------------------------

def _independent_pool(text: str, start: str | None, skip: list[str]) -> dict:
    """The log read afresh: a run per label (a repeated section starts the label's next run),
    its ratios, then per column the median, range and count meeting the target."""
    import json

    sys.path.insert(0, str(ROOT / "benchmarks"))
    from pool_runs import TARGETS, UNTARGETED  # the targets and the column names only

    runs, comments, current, label = [], [], None, None
    for line in text.splitlines():
        if line.startswith("# "):
            current = None
            comments.append(line[2:].strip())
        elif line.startswith("["):
            name, payload = line[1:line.index("]")], json.loads(line[line.index("]") + 2:])
            if current is None or name in current["s"]:
                if current is None:
                    label, notes, k, comments = comments[-1], comments[:-1], 1, []
                else:
                    notes, k = [], k + 1
                current = {"label": label if k == 1 else f"{label} [{k}]", "notes": notes, "s": {}}
                runs.append(current)
            current["s"][name] = payload
    if start is not None:
        runs = runs[next(i for i, r in enumerate(runs) if start in r["label"] or any(start in n for n in r["notes"])):]
    runs = [r for r in runs if not any(w in r["label"] for w in skip)]
    cols: dict[str, list[float]] = {}
    for r in runs:
        s = r["s"]
        sweep, block, bw = s.get("sweep", {}), s.get("block", {}), s.get("bandwidth", {})
        for d in (12, 24, 48):
            if {"mhc", "hc"} <= set(sweep.get(f"depth{d}", {})):
                cols.setdefault(f"sweep d{d}", []).append(
                    sweep[f"depth{d}"]["mhc"]["median_ms"] / sweep[f"depth{d}"]["hc"]["median_ms"])
        pairs = {"eager": ("mhc eager", "residual", "median_ms"),
                 "compiled / eager res": ("mhc compiled", "residual", "median_ms"),
                 "compiled / eager res, minima": ("mhc compiled", "residual", "min_ms"),
                 "compiled / compiled res": ("mhc compiled", "residual compiled", "median_ms"),
                 "compiled / compiled res, minima": ("mhc compiled", "residual compiled", "min_ms"),
                 "static / eager res": ("static mixing compiled", "residual", "median_ms")}
        for col, (a, b, key) in pairs.items():
            if a in block and b in block:
                cols.setdefault(col, []).append(block[a][key] / block[b][key])
        for key, col in (("pre_aggregate fwd+bwd", "pre-agg fwd+bwd %"), ("post_residual fwd+bwd", "post-res fwd+bwd %")):
            if key in bw:
                cols.setdefault(col, []).append(bw[key]["pct_copy"])
    out = {}
    for col, v in cols.items():
        v = sorted(v)
        mid = len(v) // 2
        median = v[mid] if len(v) % 2 else (v[mid - 1] + v[mid]) / 2
        if col in UNTARGETED:
            met = None
        else:
            target, at_most = TARGETS[col]
            met = sum((x <= target) if at_most else (x >= target) for x in v)
        out[col] = (median, v[0], v[-1], met, len(v))
    return out


@pytest.mark.parametrize("start, skip", [
    (None, []),
    ("round of 2026-11-29 (3)", ["e8dff7d", "b1997a4", "ed407f2"]),
    ("sweep-section run at fc36397", ["e8dff7d", "b1997a4", "ed407f2"]),
    ("round of 2026-11-29 (5)", ["b1997a4", "ed407f2"]),
    ("round of 2026-11-29 (6)", ["ed407f2"]),
    ("round of 2026-11-29 (7)", []),
    ("full run 1 at 5a37974", ["malloc keep", "ed407f2"]),
    ("full run 1 at 5a37974", ["malloc keep"]),
    ("full run 1 at 5a37974", ["malloc keep", "e8dff7d", "b1997a4", "ed407f2"]),
    ("full run 6 at d266670", ["e8dff7d", "b1997a4", "ed407f2"]),
])
def test_pool_runs_statistics_match_an_independent_reading_of_the_log(start, skip):
    """The selections the README quotes: pooled median, range and runs meeting each target."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import pool_runs

    text = pool_runs.LOG.read_text()
    selected = pool_runs.select(pool_runs.parse_log(text), start, skip)
    got = pool_runs.pooled([pool_runs.run_ratios(s) for _, s in selected])
    want = _independent_pool(text, start, skip)
    assert got.keys() == want.keys()
    for col in want:
        assert got[col][3:] == want[col][3:], col
        np.testing.assert_allclose(got[col][:3], want[col][:3], rtol=1e-12, err_msg=col)


@pytest.mark.parametrize("gains", [["nan", 2.0, 3.0], [2.0, "nan", 3.0], [3.0, 2.0, "nan"]])
def test_depth_scaling_gain_skips_nan_wherever_it_is_logged(gains):
    """depth_scaling.png's point for a run is its max composite gain over the logged steps;
    the summary leaves NaN gains out (depth_sweep's gains_max), and so must the plot: max()
    returned NaN when the NaN came first (the run's point then vanished under nanmean)."""
    import plot_runs

    recs = [{"step": i, "composite_forward_gain_peak": g} for i, g in enumerate(gains)]
    finite = [float(g) for g in gains if g != "nan"]
    assert plot_runs._max_over_steps(recs, "composite_forward_gain_peak") == max(finite)
    assert math.isnan(plot_runs._max_over_steps([{"k": "nan"}], "k"))
