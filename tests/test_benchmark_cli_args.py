"""Bad command lines of the benchmark scripts are usage errors (argparse exit status 2 and
a message naming what was expected), raised before any device work, checks or installs."""
import re
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import cli_args  # noqa: E402
from mhc_core.experiments import out_paths  # noqa: E402


def test_cli_arg_types_accept_good_values():
    assert cli_args.positive_int("8") == 8
    assert cli_args.non_negative_int("0") == 0
    assert cli_args.shape_pair("4096:16384") == (4096, 16384)
    assert cli_args.positive_float("35") == 35.0 and cli_args.positive_float("0.5") == 0.5
    assert cli_args.out_folder(str(ROOT / "benchmarks")) == ROOT / "benchmarks"
    assert cli_args.out_folder("no/such/folder/yet") == Path("no/such/folder/yet")


@pytest.mark.parametrize("fn,text", [(cli_args.positive_int, "0"), (cli_args.positive_int, "-3"),
                                     (cli_args.positive_int, "2.5"), (cli_args.non_negative_int, "-1"),
                                     (cli_args.shape_pair, "4096"), (cli_args.shape_pair, "4096:0"),
                                     (cli_args.shape_pair, "a:b"), (cli_args.shape_pair, "1:2:3"),
                                     (cli_args.positive_float, "0"), (cli_args.positive_float, "-1"),
                                     (cli_args.positive_float, "nan"), (cli_args.positive_float, "inf"),
                                     (cli_args.positive_float, "x")])
def test_cli_arg_types_refuse_bad_values(fn, text):
    import argparse

    with pytest.raises(argparse.ArgumentTypeError, match="expected"):
        fn(text)


def _usage_error(main, argv, capsys, match):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    assert match in capsys.readouterr().err


@pytest.mark.parametrize("argv,match", [
    (["--shapes", "abc"], "expected C:T"),
    (["--shapes", "4096:0"], "expected C:T"),
    (["--shapes", "4096:16384", "1024:16384", "4096:16384"], "--shapes repeats 4096:16384"),
])
def test_gpu_check_bad_shapes(argv, match, capsys, monkeypatch, tmp_path):
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path / "out"))
    import gpu_check

    _usage_error(gpu_check.main, argv, capsys, match)
    assert not (tmp_path / "out").exists()  # nothing ran


def test_gpu_check_smoke_refuses_shapes(capsys, monkeypatch, tmp_path):
    """SMOKE=1 benches one tiny interpreter shape: --shapes would be silently ignored."""
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path / "out"))
    import gpu_check

    _usage_error(gpu_check.main, ["--shapes", "64:8"], capsys, "SMOKE=1 runs one tiny shape")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("argv,match", [
    (["--shapes", "4096:x"], "expected C:T"),
    (["--channels", "0"], "expected an integer >= 1"),
    (["--tokens", "-5"], "expected an integer >= 1"),
    (["--cpu", "--interpret-smoke"], "not allowed with"),
    (["--cpu", "--shapes", "64:8"], "--shapes, --channels and --tokens choose the CUDA run's shapes"),
    (["--interpret-smoke", "--tokens", "8"], "--shapes, --channels and --tokens choose the CUDA run's shapes"),
    (["--cpu", "--ops", "coefficients,foo"], "unknown --ops ['foo']"),
    (["--cpu", "--impls", "bar"], "unknown --impls ['bar']"),
])
def test_bench_mhc_bad_arguments(argv, match, capsys, tmp_path):
    pytest.importorskip("torch")
    import bench_mhc

    _usage_error(bench_mhc.main, [*argv, "--out", str(tmp_path)], capsys, match)


@pytest.mark.parametrize("flag,value", [("--rounds", "0"), ("--calls", "0"), ("--channels", "-1"), ("--n", "0"),
                                        ("--tokens", "-1")])
def test_bench_host_overhead_bad_counts(flag, value, capsys, tmp_path):
    pytest.importorskip("torch")
    import bench_host_overhead

    _usage_error(bench_host_overhead.main, ["--stub-kernels", "--out", str(tmp_path), flag, value], capsys,
                 "expected an integer >=")


def test_bench_host_overhead_more_streams_than_the_kernels_take(capsys, tmp_path):
    pytest.importorskip("torch")
    import bench_host_overhead

    _usage_error(bench_host_overhead.main, ["--stub-kernels", "--out", str(tmp_path), "--n", "17"], capsys,
                 "--n must be at most 16")


def test_bench_host_overhead_only_matching_no_case(tmp_path):
    """--only that selects no row is an error naming the rows, not an empty report."""
    pytest.importorskip("torch")
    import bench_host_overhead

    with pytest.raises(SystemExit, match="matches none of the cases.*MHC\\(triton\\) fwd"):
        bench_host_overhead.main(["--stub-kernels", "--out", str(tmp_path), "--calls", "1", "--rounds", "1",
                                  "--channels", "16", "--only", "no-such-case"])
    assert not (tmp_path / "bench_host_overhead.json").exists()


def test_bench_mhc_interpret_smoke_from_python_needs_the_interpreter(monkeypatch, tmp_path):
    """main(['--interpret-smoke']) from Python cannot switch Triton to its interpreter after the
    kernels were imported: it says so instead of launching them for a GPU on the CPU."""
    pytest.importorskip("torch")
    import bench_mhc

    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(SystemExit, match="needs TRITON_INTERPRET=1"):
        bench_mhc.main(["--interpret-smoke", "--out", str(tmp_path)])
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("script", ["sweep_coefficients_fwd", "sweep_post_residual_bwd", "bench_mhc"])
def test_out_that_is_a_file_is_refused_before_running(script, capsys, tmp_path):
    """--out naming an existing file is a usage error at parse time (the sweeps used to find
    out only when writing their reports, after a minute of GPU time); the file is untouched."""
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    import importlib

    main = importlib.import_module(script).main
    out = tmp_path / "a_file"
    out.write_text("keep")
    mode = ["--cpu"] if script == "bench_mhc" else ["--interpret-smoke"]
    _usage_error(main, [*mode, "--out", str(out)], capsys, "expected a folder for the reports")
    assert out.read_text() == "keep"


def test_out_folder_and_out_file_refuse_a_file_on_the_path(tmp_path, monkeypatch):
    """A file where a report folder (or one of its parents) should be, and a folder where a
    report file should be, are refused with the offending path named; a folder we cannot
    write to is refused too (os.access patched: the tests may run as root)."""
    import argparse

    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    for fn, text in ((cli_args.out_folder, blocker / "sub" / "deeper"), (cli_args.out_file, blocker / "r.json")):
        with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"but '{blocker}' is a file")):
            fn(str(text))
    with pytest.raises(argparse.ArgumentTypeError, match="expected a file path for the report.*which is a folder"):
        cli_args.out_file(str(tmp_path))
    assert cli_args.out_file(str(tmp_path / "new" / "r.json")) == tmp_path / "new" / "r.json"
    monkeypatch.setattr(out_paths.os, "access", lambda path, mode: False)
    with pytest.raises(argparse.ArgumentTypeError, match=re.escape(f"but '{tmp_path}' is not writable")):
        cli_args.out_folder(str(tmp_path / "results"))


@pytest.mark.parametrize("script", ["bench_host_overhead", "bench_recompute"])
def test_out_under_a_file_is_refused_before_running(script, capsys, tmp_path):
    """bench_host_overhead / bench_recompute took --out unchecked and failed on mkdir after the
    whole benchmark had run."""
    pytest.importorskip("torch")
    import importlib

    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    argv = ["--out", str(blocker / "results")] + (["--stub-kernels"] if script == "bench_host_overhead" else [])
    _usage_error(importlib.import_module(script).main, argv, capsys, f"but '{blocker}' is a file")


def _bench_cpu_ratios():
    pytest.importorskip("torch")
    import bench_cpu_ratios

    return bench_cpu_ratios


@pytest.mark.parametrize("argv,match", [
    (["--rounds", "0"], "argument --rounds: expected an integer >= 1"),
    (["--rounds", "-2"], "argument --rounds: expected an integer >= 1"),
    (["--rounds", "many"], "argument --rounds: expected an integer >= 1"),
    (["--sections", "gpu"], "argument --sections: invalid choice: 'gpu'"),
    (["--malloc", "jemalloc"], "argument --malloc: invalid choice: 'jemalloc'"),
])
def test_bench_cpu_ratios_bad_arguments(argv, match, capsys, tmp_path):
    """--rounds 0 used to run the section and fail in statistics.median on no timings."""
    _usage_error(_bench_cpu_ratios().main, [*argv, "--out", str(tmp_path / "r")], capsys, match)
    assert not any(tmp_path.iterdir())


def test_bench_cpu_ratios_out_is_checked_before_running(capsys, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    _usage_error(_bench_cpu_ratios().main, ["--out", str(blocker / "cpu_ratios")], capsys,
                 f"but '{blocker}' is a file")


@pytest.mark.parametrize("content", [None, "not json", '{"rows": []}', "[1, 2]"],
                         ids=["missing", "not-json", "compile-report", "a-list"])
def test_bench_cpu_ratios_render_refuses_other_files(content, tmp_path):
    """--render of a missing file or another tool's JSON names the file and what was expected
    (it used to end in FileNotFoundError / KeyError: 'environment'); no .md is written."""
    src = tmp_path / "other.json"
    if content is not None:
        src.write_text(content)
    with pytest.raises(SystemExit, match="--render: expected a results .json written by bench_cpu_ratios.py, "
                                         f"could not use {src}"):
        _bench_cpu_ratios().main(["--render", str(src)])
    assert not (tmp_path / "other.md").exists()


def test_bench_cpu_ratios_keeps_finished_sections_when_interrupted(monkeypatch, tmp_path):
    """Ctrl-C in the second section leaves the first one's results in the .json and .md."""
    mod = _bench_cpu_ratios()
    monkeypatch.setattr(mod, "bench_sweep", lambda: {"mhc": {"median_ms": 2.0, "min_ms": 1.5}, "ratio": 1.25})

    def interrupted(rounds, compile_):
        raise KeyboardInterrupt

    monkeypatch.setattr(mod, "bench_block", interrupted)
    with pytest.raises(KeyboardInterrupt):
        mod.main(["--sections", "sweep", "block", "--rounds", "1", "--out", str(tmp_path / "r")])
    import json

    report = json.loads((tmp_path / "r.json").read_text())
    assert list(report["sections"]) == ["sweep"] and report["sections"]["sweep"]["result"]["ratio"] == 1.25
    assert "| ratio | 1.25 |" in (tmp_path / "r.md").read_text()


def _gpu_check():
    import gpu_check

    return gpu_check


def _smoke_run(gpu_check, fake_run, monkeypatch, out) -> int:
    """gpu_check.main's exit status in SMOKE=1 mode writing to `out`, every step run by
    `fake_run(cmd, log, limit_s, env)` instead of a subprocess."""
    monkeypatch.setattr(gpu_check, "_run", fake_run)
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.setenv("GPU_CHECK_OUT", str(out))
    return gpu_check.main([])


def test_gpu_check_out_that_is_a_file_is_a_usage_error(capsys, monkeypatch, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("keep")
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.setenv("GPU_CHECK_OUT", str(blocker))
    _usage_error(_gpu_check().main, [], capsys, f"GPU_CHECK_OUT: expected a folder for the reports, got '{blocker}'")
    assert blocker.read_text() == "keep"


@pytest.mark.parametrize("value", ["yes", "true", "2"])
def test_gpu_check_smoke_other_than_0_or_1_is_a_usage_error(value, capsys, monkeypatch, tmp_path):
    """SMOKE=yes used to mean a CUDA run (only "1" is the smoke run)."""
    monkeypatch.setenv("SMOKE", value)
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path / "out"))
    _usage_error(_gpu_check().main, [], capsys, f"SMOKE must be 1 (CPU smoke run), 0 or unset (CUDA run), got {value!r}")
    assert not (tmp_path / "out").exists()


def test_gpu_check_without_torch_names_the_python_to_use(capsys, monkeypatch, tmp_path):
    """`make gpu-check` runs GPU_PY (python3): one without torch / triton gets a message naming
    GPU_PY, exit status 1, no traceback and no results folder."""
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name in ("torch", "triton")
                        else real(name, *a))
    monkeypatch.setenv("SMOKE", "1")
    monkeypatch.setenv("GPU_CHECK_OUT", str(tmp_path / "out"))
    assert _gpu_check().main([]) == 1
    err = capsys.readouterr().err
    assert "torch and triton not importable by" in err and "make gpu-check GPU_PY=" in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("args,python,installs", [
    (["SMOKE=1"], ".venv/bin/python", True),                  # the CPU rehearsal: the repo's venv, created first
    ([], "python3", False),                                   # the GPU box: its own Python, nothing installed
    (["SMOKE=1", "GPU_PY=/opt/py/bin/python"], "/opt/py/bin/python", False),
])
def test_make_gpu_check_picks_its_python(args, python, installs):
    """`make gpu-check SMOKE=1` from a clean checkout ran the system python3 (no torch there:
    a traceback); it now builds .venv like `make test` and runs in it. Dry run (make -n -B)."""
    import shutil
    import subprocess

    if shutil.which("make") is None:
        pytest.skip("no make here")
    plan = subprocess.run(["make", "-n", "-B", "-C", str(ROOT), "gpu-check", *args], capture_output=True, text=True,
                          timeout=60, check=True).stdout
    smoke = "1" if "SMOKE=1" in args else ""
    assert f"SMOKE={smoke} {python} benchmarks/gpu_check.py" in plan, plan
    assert ("pip install" in plan) == installs, plan


@pytest.mark.parametrize("content", [None, '{"environment": {}, "sections": {}}'], ids=["missing", "cpu-ratios-json"])
def test_bench_mhc_bad_fwd_configs_fail_before_the_checks(content, monkeypatch, tmp_path):
    """--fwd-configs naming a missing file or another tool's JSON fails at once; it used to be
    read only after every op's correctness check (minutes in the interpreter)."""
    pytest.importorskip("torch")
    pytest.importorskip("triton")
    import bench_mhc

    monkeypatch.setenv("TRITON_INTERPRET", "1")
    src = tmp_path / "sweep.json"
    if content is not None:
        src.write_text(content)
    checked = []
    monkeypatch.setattr(bench_mhc.impls, "check_against_reference", lambda *a, **k: checked.append(a) or 0.0)
    with pytest.raises(SystemExit, match="--fwd-configs: expected a sweep_coefficients_fwd.json"):
        bench_mhc.main(["--interpret-smoke", "--fwd-configs", str(src), "--out", str(tmp_path / "out")])
    assert not checked and not (tmp_path / "out").exists()


def test_gpu_check_interrupted_writes_the_summary_of_finished_steps(monkeypatch, tmp_path, capsys):
    """Ctrl-C during a step: the steps that finished are in env.json / summary.md / the
    .tar.gz, the run is marked interrupted, exit status 130 (was: a traceback and no summary)."""
    pytest.importorskip("torch")
    gpu_check = _gpu_check()
    calls = []

    def fake_run(cmd, log, limit_s, env):
        calls.append(log.name)
        if len(calls) == 2:
            raise KeyboardInterrupt
        log.write_text("ok\n")
        return {"ok": True, "rc": 0, "seconds": 0.1, "log": log.name}

    assert _smoke_run(gpu_check, fake_run, monkeypatch, tmp_path) == 130
    import json

    info = json.loads((tmp_path / "env.json").read_text())
    assert info["interrupted"] is True and list(info["steps"]) == ["install", "bench"], info["steps"]
    assert "**Interrupted**" in (tmp_path / "summary.md").read_text()
    assert (tmp_path / f"{tmp_path.name}.tar.gz").exists()


def test_gpu_check_exit_status_is_1_when_a_step_fails(monkeypatch, tmp_path):
    """One failing step (here pytest) makes the whole check exit 1; the others still run."""
    pytest.importorskip("torch")
    gpu_check = _gpu_check()

    def fake_run(cmd, log, limit_s, env):
        log.write_text("x\n")
        ok = log.name != "pytest.txt"
        return {"ok": ok, "rc": 0 if ok else 1, "seconds": 0.1, "log": log.name}

    assert _smoke_run(gpu_check, fake_run, monkeypatch, tmp_path) == 1
    summary = (tmp_path / "summary.md").read_text()
    assert "| pytest | NO | 1 |" in summary and "| host | yes | 0 |" in summary


@pytest.mark.parametrize("argv,match", [
    (["--cpu", "--ops", ","], "--ops names nothing; expected a comma-separated subset of"),
    (["--cpu", "--ops", ""], "--ops names nothing"),
    (["--cpu", "--impls", ","], "--impls names nothing; expected a comma-separated subset of"),
    (["--quick", "--shapes", "64:8"], "--quick picks one small shape"),
    (["--quick", "--interpret-smoke"], "--quick picks one small shape"),
    (["--shapes", "64:8", "64:8"], "--shapes repeats [(64, 8)]"),
    (["--channels", "64", "64"], "--channels repeats [64]"),
    (["--tokens", "8", "16", "8"], "--tokens repeats [8]"),
])
def test_bench_mhc_empty_lists_and_conflicts(argv, match, capsys, tmp_path):
    """--ops ',' used to run nothing and end in UnboundLocalError ('js'); --impls ',' timed an
    implementation named '' (a ValueError per row); --quick with explicit shapes was ignored."""
    pytest.importorskip("torch")
    import bench_mhc

    _usage_error(bench_mhc.main, [*argv, "--out", str(tmp_path)], capsys, match)
    assert not any(tmp_path.iterdir())


def test_bench_recompute_keeps_finished_measurements_when_interrupted(monkeypatch, tmp_path):
    """Ctrl-C during the second child run: the first one's row is in recompute_*.json / .md
    (they were written only at the end, after ~10 minutes of runs)."""
    pytest.importorskip("torch")
    import bench_recompute

    calls = []

    def fake_spawn(args, timeout=1800):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return {"saved_mb": 1.5, "cpu_peak_live_mb": 2.5, "peak_rss_delta_mb": 3.5, "time_ms": 45.0}

    monkeypatch.setattr(bench_recompute, "_spawn", fake_spawn)
    with pytest.raises(KeyboardInterrupt):
        bench_recompute.main(["--quick", "--no-mlx", "--no-compile", "--out", str(tmp_path)])
    import json

    (js,) = tmp_path.glob("recompute_*_quick.json")
    rows = json.loads(js.read_text())["torch"]
    assert len(rows) == 1 and rows[0]["time_ms"] == 45.0
    assert "| 1.5 | 2.5 | 3.5 | 45 |" in js.with_suffix(".md").read_text()


def test_gpu_check_summary_without_git(monkeypatch, tmp_path):
    """A GPU box without the git binary: the summary is still written (the commit lookup
    raised FileNotFoundError after every step had run)."""
    pytest.importorskip("torch")
    gpu_check = _gpu_check()

    def no_git(cmd, *args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])

    monkeypatch.setattr(gpu_check.subprocess, "run", no_git)
    steps = {"bench": {"ok": True, "rc": 0, "seconds": 1.0, "log": "bench.txt"}}
    gpu_check.write_summary(tmp_path, steps, "cpu-interpreter", smoke=True)
    import json

    assert json.loads((tmp_path / "env.json").read_text())["commit"] == "unknown (no git here)"
    assert "| bench | yes | 0 |" in (tmp_path / "summary.md").read_text()


@pytest.mark.parametrize("script,mode", [("bench_mhc", "--cpu"), ("bench_host_overhead", "--stub-kernels")])
@pytest.mark.parametrize("stem", ["sub/bench", "", ".."])
def test_stem_with_a_folder_part_is_refused(script, mode, stem, capsys, tmp_path):
    """--stem 'sub/bench' failed with FileNotFoundError when the reports were written, after
    the benchmark had run."""
    pytest.importorskip("torch")
    import importlib

    _usage_error(importlib.import_module(script).main, [mode, "--out", str(tmp_path), "--stem", stem], capsys,
                 "expected a file name stem such as 'bench'")
    assert not any(tmp_path.iterdir())


def test_bench_cpu_ratios_mlx_section_without_mlx(monkeypatch, capsys, tmp_path):
    """Without MLX, --sections mlx is a usage error up front (it ended in ImportError after the
    other sections had run), and the default leaves the mlx section out."""
    mod = _bench_cpu_ratios()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlx" else real(name, *a))
    _usage_error(mod.main, ["--sections", "sweep", "mlx", "--out", str(tmp_path / "r")], capsys,
                 "--sections mlx needs MLX")
    ran = []
    monkeypatch.setattr(mod, "bench_sweep", lambda: ran.append("bench_sweep") or {"ratio": 1.0})  # its own step count
    for name in ("bench_bandwidth", "bench_mlx"):
        monkeypatch.setattr(mod, name, lambda rounds, name=name: ran.append(name) or {"ratio": 1.0})
    monkeypatch.setattr(mod, "bench_block", lambda rounds, compile_: ran.append("bench_block") or {"ratio": 1.0})
    assert mod.main(["--rounds", "1", "--out", str(tmp_path / "r")]) == 0
    assert ran == ["bench_sweep", "bench_block", "bench_bandwidth"]


def test_gpu_check_reused_folder_keeps_no_earlier_figures(monkeypatch, tmp_path):
    """A reused results folder (the SMOKE one, or GPU_CHECK_OUT): an earlier run's bench.json
    must not survive a bench step that writes none this time (it went into the archive as if
    measured now); files gpu_check does not write stay."""
    pytest.importorskip("torch")
    gpu_check = _gpu_check()
    (tmp_path / "bench.json").write_text('{"old": true}')
    (tmp_path / "sweep_post_residual_bwd.md").write_text("old")
    (tmp_path / "my_notes.txt").write_text("keep")

    def fake_run(cmd, log, limit_s, env):
        log.write_text("x\n")
        return {"ok": False, "rc": 1, "seconds": 0.1, "log": log.name}

    assert _smoke_run(gpu_check, fake_run, monkeypatch, tmp_path) == 1
    assert not (tmp_path / "bench.json").exists() and not (tmp_path / "sweep_post_residual_bwd.md").exists()
    assert (tmp_path / "my_notes.txt").read_text() == "keep" and (tmp_path / "summary.md").exists()


def test_bench_cpu_ratios_interleaved_counts_page_faults():
    """Each contender's minor page faults per call come from getrusage: a call that writes
    fresh anonymous memory (8 MiB, mapped anew each call) shows about one fault per 4 KiB
    page, one that touches nothing shows none."""
    import mmap

    bench = _bench_cpu_ratios()
    size = 8 << 20

    def fresh():
        with mmap.mmap(-1, size) as m:
            for off in range(0, size, mmap.PAGESIZE):
                m[off] = 1

    r = bench.interleaved({"fresh": fresh, "none": lambda: None}, rounds=3)
    assert r["none"]["faults_per_call"] == 0
    assert r["fresh"]["faults_per_call"] >= 0.9 * size / mmap.PAGESIZE
