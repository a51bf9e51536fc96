"""The pass/fail rules of benchmarks/compile_report.py (`failures`) on hand-made report rows:
a spill at any n <= 16 fails every kernel, shared memory over sm_80's limit, 32-bit token math and compile errors fail. No compiler
needed: the rules only read the rows."""
import importlib.util
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def report_module():
    pytest.importorskip("triton")
    sys.path.insert(0, str(ROOT / "backends"))
    spec = importlib.util.spec_from_file_location("compile_report_rules", ROOT / "benchmarks" / "compile_report.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up there
    spec.loader.exec_module(mod)
    return mod


def _row(kernel, n, spill=0, smem=1024, token_math=(), error=""):
    return dict(kernel=kernel, n=n, dtype="bfloat16", arch="sm_90a", spill_stores=spill, spill_loads=spill,
                shared_bytes=smem, offsets_64bit=not token_math, i32_token_math=list(token_math), error=error)


def test_spill_rule_covers_n16(report_module):
    fails = report_module.failures({"rows": [_row("coefficients_x_bwd", 16, spill=8), _row("post_residual_bwd", 4)]})
    assert len(fails) == 1 and "coefficients_x_bwd n=16" in fails[0] and "spills" in fails[0]


def test_spill_rule_has_no_exceptions(report_module):
    for n in (1, 8, 16):
        fails = report_module.failures({"rows": [_row("coefficients_fwd", n, spill=12)]})
        assert len(fails) == 1 and "spills" in fails[0]


def test_other_rules(report_module):
    over = report_module.SMEM_LIMIT[80] + 1
    rows = [_row("a", 4, smem=over), _row("b", 4, token_math=["%1 = arith.muli %t, %n : i32"]), _row("c", 4, error="x")]
    fails = report_module.failures({"rows": rows})
    assert len(fails) == 3
    assert "shared memory" in fails[0] and "32-bit token offset" in fails[1] and fails[2].startswith("c n=4")


@pytest.mark.parametrize("argv,match", [
    (["--n", "0", "--json", "{tmp}/r.json"], "argument --n: expected a stream count n in 1..16"),
    (["--n", "17", "--json", "{tmp}/r.json"], "argument --n: expected a stream count n in 1..16"),
    (["--n", "four", "--json", "{tmp}/r.json"], "argument --n: expected a stream count n in 1..16"),
    (["--kernel", "no_such_kernel", "--json", "{tmp}/r.json"], "--kernel expected one or more of coefficients_fwd"),
    (["--kernel", "--json", "{tmp}/r.json"], "--kernel expected one or more of coefficients_fwd"),
    (["--n", "4"], "choose a subset: give --json PATH"),
    (["--kernel", "sinkhorn_fwd"], "choose a subset: give --json PATH"),
    (["--json", "{tmp}"], "argument --json: expected a file path for the report"),
    (["--json", "{tmp}/a_file/r.json"], "argument --json: expected a file path for the report"),
    (["--arch", "75", "--json", "{tmp}/r.json"], "argument --arch: invalid choice: 75"),
])
def test_bad_command_lines_are_usage_errors(report_module, argv, match, tmp_path, capsys):
    """Refused before compiling anything: n outside the kernels' 1..16 (n = 0 and n = -2 used
    to compile and report nonsense rows), an unknown kernel name (used to write an empty
    report over the committed one), a subset without its own --json (used to overwrite the
    committed full report), a --json that is a folder or under a file."""
    (tmp_path / "a_file").write_text("keep")
    with pytest.raises(SystemExit) as info:
        report_module.main([a.replace("{tmp}", str(tmp_path)) for a in argv])
    assert info.value.code == 2 and match in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_no_ptxas_is_a_clear_skip_that_writes_nothing(report_module, monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(report_module, "ptxas_path", lambda cc=80: None)
    out = tmp_path / "r.json"
    assert report_module.main(["--n", "4", "--json", str(out)]) == 1
    err = capsys.readouterr().err
    assert "compile_report: skipped, nothing written: no ptxas for sm_80, sm_90a in the triton wheel" in err
    assert not out.exists() and not out.with_suffix(".md").exists()


def test_kernel_names_cover_the_committed_report(report_module):
    """--kernel accepts every kernel name of the committed full report."""
    import json

    committed = json.loads((ROOT / "benchmarks" / "results" / "compile_report.json").read_text())
    assert {r["kernel"] for r in committed["rows"]} == set(report_module.kernel_names())


def test_git_lookup_without_git_is_empty(report_module, monkeypatch):
    """Where git is missing the report's commit lookup gives "" (it raised FileNotFoundError
    after every kernel had been compiled)."""
    def no_git(cmd, *args, **kwargs):
        raise FileNotFoundError(2, "No such file or directory", cmd[0])

    monkeypatch.setattr(report_module.subprocess, "run", no_git)
    assert report_module._git("rev-parse", "HEAD") == ""
