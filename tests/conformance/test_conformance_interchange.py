"""Weights saved by one backend (safetensors, save_state) load into another (load_state)
and give the same outputs; see interchange.py."""
import pytest

import interchange
from compare import assert_results


def pytest_generate_tests(metafunc):
    if "combo" in metafunc.fixturenames:
        import backends

        ok = [a for a in backends.load(backends.selected_names(None)) if not isinstance(a, backends.Broken)]
        params = [pytest.param((a, b, c, d), id=f"{a.name}-to-{b.name}-{c.id}-{d}")
                  for a, b, c, d in interchange.combinations(ok)]
        metafunc.parametrize("combo", params or [pytest.param(None, marks=pytest.mark.skip(
            reason="fewer than two backends with save_state/load_state"), id="no-pairs")])


def test_interchange(combo, tmp_path):
    a, b, case, dtype = combo
    assert_results(interchange.interchange(a, b, case, dtype, str(tmp_path)))
