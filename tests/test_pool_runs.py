"""benchmarks/pool_runs.py: the per-run ratios it reads from the runs log are the ones
bench_cpu_ratios.py computed for the same run, and its pooled counts follow the targets."""
import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import pool_runs  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"


def _timing(median, minimum):
    return {"median_ms": median, "min_ms": minimum, "runs": 3, "faults_per_call": 0.0}


def _block(res, comp, comp_res, eager):
    return {"residual": _timing(*res), "mhc compiled": _timing(*comp), "residual compiled": _timing(*comp_res),
            "mhc eager": _timing(*eager)}


def _log(*runs):
    lines = ["# round of a test"]
    for label, sections in runs:
        lines.append(f"# {label}")
        lines += [f"[{name}] {json.dumps(result)}" for name, result in sections.items()]
    return "\n".join(lines) + "\n"


def test_ratios_of_the_committed_run_match_the_report():
    """The log's copy of the committed run gives the ratios the report .json holds."""
    report = json.loads((RESULTS / "cpu_ratios.json").read_text())
    block = report["sections"]["block"]["result"]
    runs = pool_runs.parse_log((RESULTS / "cpu_ratios_runs.log").read_text())
    committed = [s for _, s, _ in runs if s.get("block") == block]
    assert committed, "the committed run's block section is not in the runs log"
    got = pool_runs.run_ratios(committed[-1])
    assert got["compiled / eager res"] == block["ratios_vs_residual"]["mhc compiled"]
    assert got["eager"] == block["ratios_vs_residual"]["mhc eager"]
    assert got["compiled / compiled res"] == block["mhc compiled / residual compiled"]
    assert got["compiled / eager res, minima"] == block["ratios_of_minima_vs_residual"]["mhc compiled"]
    assert got["compiled / compiled res, minima"] == block["mhc compiled / residual compiled, minima"]
    sweep = report["sections"]["sweep"]["result"]
    for depth in (12, 24, 48):
        assert got[f"sweep d{depth}"] == sweep[f"depth{depth}"]["mhc/hc"]


def test_pooled_medians_and_counts():
    runs = [("run a", {"block": _block((100, 90), (105, 99), (100, 100), (120, 110))}),
            ("run b", {"block": _block((100, 80), (112, 90), (110, 85), (130, 100))}),
            ("run c (malloc keep)", {"block": _block((100, 100), (150, 150), (100, 100), (200, 200))}),
            ("run d", {"block": _block((200, 190), (220, 200), (190, 180), (250, 240))}),
            ("run e", {"block": _block((100, 100), (150, 104), (100, 100), (120, 110))})]
    selected = pool_runs.select(pool_runs.parse_log(_log(*runs)), "run b", ["malloc keep"])
    assert [label for label, _ in selected] == ["run b", "run d", "run e"]
    rows = [pool_runs.run_ratios(s) for _, s in selected]
    pooled = pool_runs.pooled(rows)
    comp = [112 / 100, 220 / 200, 150 / 100]  # 220 / 200 is the target itself: met (<=)
    assert statistics.median(comp) != statistics.fmean(comp)
    assert pooled["compiled / eager res"] == (statistics.median(comp), min(comp), max(comp), 1, 3)
    minima = [90 / 80, 200 / 190, 104 / 100]
    assert pooled["compiled / eager res, minima"] == (statistics.median(minima), min(minima), max(minima), 2, 3)
    assert "sweep d12" not in pooled  # no run has a sweep section
    text = pool_runs.markdown(selected)
    assert (f"| compiled / eager res | <= 1.1 | {statistics.median(comp):.3f} | {min(comp):.3f}-{max(comp):.3f} "
            "| 1 of 3 |") in text


def test_a_repeated_section_is_a_further_run():
    text = _log(("runs", {"block": _block((100, 90), (105, 99), (100, 100), (120, 110))}))
    text += "[block] " + json.dumps(_block((100, 90), (120, 99), (100, 100), (120, 110))) + "\n"
    parsed = pool_runs.parse_log(text)
    assert [label for label, _, _ in parsed] == ["runs", "runs [2]"]
    assert [pool_runs.run_ratios(s)["compiled / eager res"] for _, s, _ in parsed] == [105 / 100, 120 / 100]


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -1.0, 0.0, True, "3"])
def test_a_time_that_is_not_a_positive_number_is_named(bad):
    block = _block((100, 90), (105, 99), (100, 100), (120, 110))
    block["mhc compiled"]["median_ms"] = bad
    runs = pool_runs.parse_log(_log(("run x", {"block": block})))  # json writes NaN / Infinity, and reads them
    with pytest.raises(ValueError, match="run 'run x'.*median_ms"):
        pool_runs.markdown(pool_runs.select(runs, None, []))


def test_from_a_round_header():
    runs = [("run a", {"block": _block((100, 90), (105, 99), (100, 100), (120, 110))}),
            ("run b", {"block": _block((100, 80), (112, 90), (110, 85), (130, 100))})]
    text = _log(*runs).replace("# run b", "# round two: a header line\n# run b")
    parsed = pool_runs.parse_log(text)
    assert [(label, notes) for label, _, notes in parsed] == [("run a", ("round of a test",)),
                                                             ("run b", ("round two: a header line",))]
    assert [label for label, _ in pool_runs.select(parsed, "round two", [])] == ["run b"]
    assert [label for label, _ in pool_runs.select(parsed, "round of a test", [])] == ["run a", "run b"]


def test_bandwidth_target_is_a_floor():
    bandwidth = {"pre_aggregate fwd+bwd": {"pct_copy": 39.9}, "post_residual fwd+bwd": {"pct_copy": 40.0}}
    rows = [pool_runs.run_ratios({"bandwidth": bandwidth})]
    pooled = pool_runs.pooled(rows)
    assert pooled["pre-agg fwd+bwd %"][3:] == (0, 1)
    assert pooled["post-res fwd+bwd %"][3:] == (1, 1)


@pytest.mark.parametrize("text,match", [
    ("[block] {}\n", "before any '# label'"),
    ("# run\n[block] {not json\n", "expected '\\[section\\] {json}'"),
    ("# run\nstray text\n", "expected '# label' or"),
])
def test_malformed_log_lines_are_named(text, match):
    with pytest.raises(ValueError, match=match):
        pool_runs.parse_log(text)


def test_a_run_without_the_fields_is_named():
    runs = pool_runs.parse_log(_log(("run x", {"block": {"residual": {"median_ms": 1.0}, "mhc eager": {}}})))
    with pytest.raises(ValueError, match="run 'run x': its sections are not bench_cpu_ratios.py results"):
        pool_runs.markdown(pool_runs.select(runs, None, []))


def test_cli_errors_are_usage_errors(tmp_path, capsys):
    log = tmp_path / "runs.log"
    log.write_text(_log(("run a", {"block": _block((100, 90), (105, 99), (100, 100), (120, 110))})))
    with pytest.raises(SystemExit) as e:
        pool_runs.main([str(log), "--from", "no such run"])
    assert e.value.code == 2 and "containing 'no such run'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as e:
        pool_runs.main([str(tmp_path / "missing.log")])
    assert e.value.code == 2
    empty = tmp_path / "empty.log"
    empty.write_text("# a round header and no run\n")
    with pytest.raises(SystemExit) as e:
        pool_runs.main([str(empty)])
    assert e.value.code == 2 and "no run selected" in capsys.readouterr().err
    other = tmp_path / "other.log"
    other.write_text("# run\n[foo] {}\n")
    with pytest.raises(SystemExit) as e:
        pool_runs.main([str(other)])
    assert e.value.code == 2 and "no selected run has a sweep, block or bandwidth result" in capsys.readouterr().err
    assert pool_runs.main([str(log)]) == 0
    assert "| run a |" in capsys.readouterr().out


def test_static_floor_column_is_reported_without_a_target():
    """The fixed-coefficient mixing's ratio is a per-run column and a pooled row with no
    target; runs from before the contender was added have no value in it."""
    def block(static_ms):
        b = {k: {"median_ms": 100.0, "min_ms": 100.0} for k in ("residual", "mhc eager", "mhc compiled")}
        if static_ms is not None:
            b["static mixing compiled"] = {"median_ms": static_ms, "min_ms": static_ms}
        return {"block": b}

    selected = pool_runs.select(pool_runs.parse_log(_log(("old", block(None)), ("new 1", block(105.0)),
                                                       ("new 2", block(109.0)))), None, [])
    rows = [pool_runs.run_ratios(s) for _, s in selected]
    assert "static / eager res" not in rows[0] and rows[2]["static / eager res"] == 109.0 / 100.0
    assert pool_runs.pooled(rows)["static / eager res"] == (1.07, 1.05, 1.09, None, 2)
    table = pool_runs.markdown(selected)
    assert "| static / eager res | none | 1.070 | 1.050-1.090 | (2 runs) |" in table
