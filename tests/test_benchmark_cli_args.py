"""Bad command lines of the benchmark scripts are usage errors (argparse exit status 2 and
a message naming what was expected), raised before any device work, checks or installs."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import cli_args  # noqa: E402


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
