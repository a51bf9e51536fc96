"""benchmarks/profile_compiled_step.py: the per-kernel CPU profile of a compiled mHC step."""
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import profile_compiled_step  # noqa: E402


def test_profile_names_the_projection_matmuls_and_the_fused_kernels(tmp_path):
    """A tiny step: the table has the phi projection's matmuls (m = n*n + 2n = 24 columns
    at n = 4) and inductor's generated kernels, and is written where --out says."""
    out = tmp_path / "sub" / "profile.md"
    assert profile_compiled_step.main(["--tokens", "32", "--dim", "16", "--steps", "1", "--min-ms", "0", "--out", str(out)]) == 0
    text = out.read_text()
    mm_rows = [line for line in text.splitlines() if line.startswith("| `aten::mm")]
    assert mm_rows and all("24" in row for row in mm_rows), mm_rows
    assert "cpp_fused" in text
    assert "x [32, 4, 16], identity layer" in text


@pytest.mark.parametrize("argv,match", [(["--tokens", "0"], "expected"), (["--layer", "attention"], "invalid choice"),
                                        (["--steps", "-1"], "expected"), (["--min-ms", "-1"], "expected"),
                                        (["--min-ms", "nan"], "expected"),
                                        (["--malloc", "tcmalloc"], "invalid choice")])
def test_profile_bad_arguments(argv, match, capsys):
    with pytest.raises(SystemExit) as info:
        profile_compiled_step.main(argv)
    assert info.value.code == 2 and match in capsys.readouterr().err


def test_profile_out_that_is_a_directory_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        profile_compiled_step.main(["--out", str(tmp_path)])
    assert info.value.code == 2 and "which is a folder" in capsys.readouterr().err
