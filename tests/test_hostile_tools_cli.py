"""Hostile use of the benchmark and report CLIs: what a user's command line or the README
says against what the tools write."""
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))


def _bench_cpu_ratios(monkeypatch):
    """bench_cpu_ratios with its sweep section replaced by a fixed result (no timing)."""
    pytest.importorskip("torch")
    import bench_cpu_ratios

    monkeypatch.setattr(bench_cpu_ratios, "bench_sweep", lambda: {"mhc": {"median_ms": 2.0, "min_ms": 1.5}, "ratio": 1.25})
    return bench_cpu_ratios


@pytest.mark.parametrize("name", ["cpu_ratios_v1.1", "run_2026.11.29"])
def test_bench_cpu_ratios_out_with_a_dot_keeps_its_whole_name(name, monkeypatch, tmp_path):
    """--help: "reports' path without suffix: writes <out>.json and <out>.md". A name with a
    dot in it (a version, a date) must not lose what follows the dot: `--out r.1` and
    `--out r.2` wrote the same r.json / r.md, the second run overwriting the first."""
    mod = _bench_cpu_ratios(monkeypatch)
    out = tmp_path / name
    assert mod.main(["--sections", "sweep", "--out", str(out)]) == 0
    written = sorted(p.name for p in tmp_path.iterdir())
    assert written == sorted([name + ".json", name + ".md"])
    assert json.loads((tmp_path / (name + ".json")).read_text())["sections"]["sweep"]["result"]["ratio"] == 1.25


def test_bench_cpu_ratios_two_dotted_outs_do_not_overwrite_each_other(monkeypatch, tmp_path):
    mod = _bench_cpu_ratios(monkeypatch)
    for name in ("r.1", "r.2"):
        assert mod.main(["--sections", "sweep", "--out", str(tmp_path / name)]) == 0
    assert len(list(tmp_path.glob("*.json"))) == 2


@pytest.mark.parametrize("suffix", [".json", ".md"])
def test_bench_cpu_ratios_out_naming_a_report_file_writes_the_pair(suffix, monkeypatch, tmp_path):
    """--out r.json (or r.md) names the pair r.json + r.md, as before (not r.json.json)."""
    mod = _bench_cpu_ratios(monkeypatch)
    assert mod.main(["--sections", "sweep", "--out", str(tmp_path / ("r" + suffix))]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json", "r.md"]


def test_bench_cpu_ratios_out_whose_json_is_a_folder_is_refused_before_running(monkeypatch, tmp_path, capsys):
    """A folder standing where <out>.json goes used to end the run in IsADirectoryError after
    its first section had been measured."""
    mod = _bench_cpu_ratios(monkeypatch)
    ran = []
    monkeypatch.setattr(mod, "bench_sweep", lambda: ran.append(1) or {"ratio": 1.0})
    (tmp_path / "r.json").mkdir()
    with pytest.raises(SystemExit) as info:
        mod.main(["--sections", "sweep", "--out", str(tmp_path / "r")])
    assert info.value.code == 2 and not ran
    assert "r.json" in capsys.readouterr().err
