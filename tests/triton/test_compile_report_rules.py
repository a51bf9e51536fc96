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
