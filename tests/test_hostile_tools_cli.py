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


# README "Correctness: the conformance table": row label -> the check scripts/conformance.py
# names it by (per backend where it differs); header group -> backend.
_README_ROWS = {
    "Sinkhorn": "forward.sinkhorn",
    "coefficients (pre, post, res)": "forward.coefficients",
    "pre-aggregate": "forward.pre_aggregate",
    "post + residual": "forward.post_residual",
    "whole MHC step (linear, MLP)": "forward.step",
    "gradients, float64 vs finite differences": "grad.fd",
    "gradients vs float64 gradients": {"torch-triton": "grad.vs.torch", None: "grad"},
    "torch vs mlx, same weights (outputs + grads)": {"torch": "cross.mlx"},
}
_DTYPES = {"f64": "float64", "f32": "float32", "bf16": "bfloat16"}


def _readme_conformance_cells() -> dict:
    """{(backend, check, dtype): the README's figure} of the table under "Correctness"."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Correctness: the conformance table", 1)[1].split("\n## ", 1)[0]
    table = section[section.index("\n|"):].lstrip("\n")
    lines = table.split("\n\n", 1)[0].splitlines()  # the first table only
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    columns = []  # (backend, dtype) per cell after the row label
    for group in header[1:]:
        backend, dtypes = group.split(" ", 1)
        columns.append([(backend, _DTYPES[d.strip()]) for d in dtypes.split("/")])
    cells = {}
    for line in lines[2:]:
        label, *groups = [c.strip() for c in line.strip("|").split("|")]
        check = _README_ROWS[label]
        for group, cols in zip(groups, columns):
            if not group:
                continue
            for value, (backend, dtype) in zip(group.split("/"), cols):
                name = check.get(backend, check.get(None)) if isinstance(check, dict) else check
                if value.strip() != "-" and name is not None:
                    cells[(backend, name, dtype)] = float(value)
    return cells


def test_readme_conformance_table_is_what_the_script_reports(tmp_path):
    """The README shows the table `python scripts/conformance.py` writes, as measured on the
    CI machine. Every figure it shows for a backend that runs here must be the script's worst
    rel error for that check and dtype, to the README's two digits (25% leaves room for
    another machine's rounding; the table was left from an earlier case list and code, up to
    6x off)."""
    pytest.importorskip("torch")
    import subprocess

    run = subprocess.run([sys.executable, str(ROOT / "scripts" / "conformance.py"), "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    report = json.loads((tmp_path / "conformance.json").read_text())
    measured = {(r["backend"], r["check"], r["dtype"]): r["worst_rel"] for r in report["rows"]}
    readme = _readme_conformance_cells()
    compared = {k: v for k, v in readme.items() if k[0] in report["backends"]}
    assert compared, "no README figure of a backend that runs here"
    wrong = {k: (v, measured.get(k)) for k, v in compared.items()
             if measured.get(k) is None or abs(v - measured[k]) > 0.25 * max(v, measured[k])}
    assert not wrong, "README figure vs scripts/conformance.py: " + ", ".join(
        f"{b} {c} {d}: {v:.1e} vs {'missing' if m is None else f'{m:.1e}'}" for (b, c, d), (v, m) in wrong.items())


def _conformance_script(monkeypatch):
    """scripts/conformance.py as a module, its checks replaced by a recorder (no check runs)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("conformance_script", ROOT / "scripts" / "conformance.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    ran = []
    monkeypatch.setattr(mod, "run_all", lambda adapters: ran.append([a.name for a in adapters]) or ([], []))
    return mod, ran


def test_conformance_out_that_is_a_file_is_a_usage_error_before_the_checks(monkeypatch, tmp_path, capsys):
    """It ran every check (~25 s with the Triton interpreter), printed the table, then ended
    in FileExistsError from os.makedirs, writing nothing."""
    mod, ran = _conformance_script(monkeypatch)
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    for out in (blocker, blocker / "sub"):
        with pytest.raises(SystemExit) as info:
            mod.main(["--backends", "numpy", "--out", str(out)])
        assert info.value.code == 2 and "is a file" in capsys.readouterr().err
    assert not ran and blocker.read_text() == "keep"


def test_conformance_unknown_backend_is_a_usage_error(monkeypatch, tmp_path, capsys):
    """It ended in a ValueError traceback from the test helpers."""
    mod, ran = _conformance_script(monkeypatch)
    with pytest.raises(SystemExit) as info:
        mod.main(["--backends", "numpy,nosuch", "--out", str(tmp_path)])
    assert info.value.code == 2 and "nosuch" in capsys.readouterr().err and not ran


def test_conformance_backend_that_cannot_run_here_is_not_passed_silently(monkeypatch, tmp_path, capsys):
    """A registered backend that is not installed was dropped from the selection without a
    word: `--backends mlx` on a machine without MLX checked nothing and exited 0 ("pass")."""
    mod, ran = _conformance_script(monkeypatch)
    registry = mod.backends.registry
    runnable = [b for b in registry.BACKENDS if b.name == "numpy"]
    absent = next(b.name for b in registry.BACKENDS if b.name != "numpy")
    monkeypatch.setattr(registry, "available", lambda: runnable)
    with pytest.raises(SystemExit) as info:
        mod.main(["--backends", f"numpy,{absent}", "--out", str(tmp_path)])
    assert info.value.code == 2 and absent in capsys.readouterr().err and not ran
    assert mod.main(["--backends", "numpy", "--out", str(tmp_path)]) == 0 and ran == [["numpy"]]


def _pooled(argv: list[str], capsys) -> dict:
    """pool_runs.py's pooled table for `argv`: {ratio: (median, met, count)} for the ratios
    with a target."""
    import pool_runs

    assert pool_runs.main(argv) == 0
    rows = {}
    for line in capsys.readouterr().out.split("| ratio | target |", 1)[1].splitlines()[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[1] == "none":
            continue
        met, _, count = cells[4].split(" ")
        rows[cells[0]] = (float(cells[2]), int(met), int(count))
    return rows


def _readme_command(anchor: str) -> tuple[str, list[str]]:
    """The README paragraph holding `anchor`, and the pool_runs.py arguments of the last
    command it names before `anchor` (`pool_runs.py ARGS` or `--from ...`)."""
    import re
    import shlex

    paragraph = next(p.replace("\n", " ") for p in (ROOT / "README.md").read_text().split("\n\n")
                     if anchor in p.replace("\n", " "))
    before = paragraph[:paragraph.index(anchor)]
    command = re.findall(r"`(?:python benchmarks/)?(?:pool_runs\.py )?(--from [^`]*)`", before)[-1]
    return paragraph, shlex.split(command)


def test_readme_compiled_block_pool_command_gives_its_counts(capsys):
    """README "The compiled block": "over the 25 of them (`pool_runs.py --from ... --skip
    "malloc keep"`) ... pooled median 1.09, <= 1.10 in 18 of 25 runs". Round (5)'s runs,
    logged after, made the same command pool 28; the figures must be what the named command
    prints."""
    paragraph, argv = _readme_command("block took")
    median, met, count = _pooled(argv, capsys)["compiled / eager res"]
    assert f"pooled median {median:.2f}, <= 1.10 in {met} of {count} runs" in paragraph, (argv, median, met, count)


def test_readme_current_code_pool_command_gives_its_medians(capsys):
    """README: "Over the twelve runs of the current code alone (`--from "full run 6 at
    d266670"`) the pooled medians are 1.099 / 1.104"."""
    paragraph, argv = _readme_command("the pooled medians are")
    pooled = _pooled(argv, capsys)
    a, b = pooled["compiled / eager res"][0], pooled["compiled / compiled res"][0]
    assert f"the pooled medians are {a:.3f} / {b:.3f}" in paragraph, (argv, a, b)


def test_readme_session_pool_command_gives_its_counts(capsys):
    """README's speed table row "met in 5 / 3 of 9 runs" is what `pool_runs.py --from "round of
    2026-11-29 (3)"` ("prints this session's runs with their pooled medians") prints."""
    _, argv = _readme_command("prints this session's runs")
    pooled = _pooled(argv, capsys)
    (_, a, count), (_, b, _) = pooled["compiled / eager res"], pooled["compiled / compiled res"]
    text = (ROOT / "README.md").read_text()
    row = next(line for line in text.splitlines() if line.startswith("| same, mHC `torch.compile` / eager residual"))
    assert f"met in {a} / {b} of {count} runs" in row, (argv, a, b, count)


def test_readme_all_runs_pool_command_gives_its_counts(capsys):
    """README round (7): "Over all 34 runs since 5a37974 (`--from ... --skip "malloc keep"`) the
    compiled block's median is 1.097 (19 of 34 runs <= 1.10), 1.099 as ratios of minima (18 of
    34)": what the named command prints."""
    paragraph, argv = _readme_command("the target holds as the pooled median")
    pooled = _pooled(argv, capsys)
    (median, met, count), (minima, met_min, _) = pooled["compiled / eager res"], pooled["compiled / eager res, minima"]
    assert (f"Over all {count} runs since 5a37974" in paragraph and f"median is {median:.3f} ({met} of {count} runs "
            f"<= 1.10), {minima:.3f} as ratios of minima ({met_min} of {count})" in paragraph), (argv, pooled)
