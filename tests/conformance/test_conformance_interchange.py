"""Weights saved by one backend (safetensors, save_state) load into another (load_state)
and give the same outputs; see interchange.py."""
import interchange
from compare import assert_results


def test_interchange(interchange_combo, tmp_path):
    a, b, case, dtype = interchange_combo
    assert_results(interchange.interchange(a, b, case, dtype, str(tmp_path)))
