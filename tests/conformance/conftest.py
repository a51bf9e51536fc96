"""Parametrisation of the conformance suite over registry backends x cases x dtypes.

Restrict backends with `--backends numpy,torch` (when tests/conformance is on the command
line) or `MHC_BACKENDS=numpy,torch` (always). Test ids: `torch-mhc-n4-C64-b2x3-mlp-float32`.

A test marked `@pytest.mark.conformance("<check>")` taking `backend, case, dtype` gets
every applicable combination (checks.applies); one taking `pair, case, dtype` gets every
backend pair sharing the dtype; one taking `backend, dtype` gets each backend's dtypes; `interchange_combo` gets every
ordered pair of backends with save_state / load_state, per interchange case and dtype.
"""
from __future__ import annotations

import pytest

import backends as backends_mod
import checks
import interchange
from cases import DTYPES


def pytest_addoption(parser):
    parser.addoption("--backends", default=None,
                     help="comma-separated registry backend names to test (default: all available)")


def pytest_configure(config):
    config.addinivalue_line("markers", "conformance(check): parametrise over backends x cases x dtypes")


def _adapters(config):
    try:
        option = config.getoption("--backends")
    except ValueError:
        option = None
    return backends_mod.load(backends_mod.selected_names(option))


def _broken_param(b, names):
    return pytest.param(*([b] + [None] * (len(names) - 1)), id=f"{b.name}-adapter-import")


def pytest_generate_tests(metafunc):
    names = metafunc.fixturenames
    marker = metafunc.definition.get_closest_marker("conformance")
    if not {"backend", "pair", "interchange_combo"} & set(names):
        return
    loaded = _adapters(metafunc.config)
    ok = [a for a in loaded if not isinstance(a, backends_mod.Broken)]
    broken = [a for a in loaded if isinstance(a, backends_mod.Broken)]

    if "interchange_combo" in names:
        params = [pytest.param((a, b, c, d), id=f"{a.name}-to-{b.name}-{c.id}-{d}")
                  for a, b, c, d in interchange.combinations(ok)]
        metafunc.parametrize("interchange_combo", params or [pytest.param(None, marks=pytest.mark.skip(
            reason="fewer than two backends with save_state/load_state"), id="no-pairs")])
        return

    if "pair" in names:
        params = [pytest.param((a, b), case, dtype, id=f"{a.name}~{b.name}-{case.id}-{dtype}")
                  for a, b, case, dtype in checks.cross_combinations(ok)]
        metafunc.parametrize("pair,case,dtype", params or [pytest.param(None, None, None, marks=pytest.mark.skip(
            reason="fewer than two working backends"), id="no-pairs")])
        return
    if "case" in names:
        check = marker.args[0] if marker else "forward"
        params = [pytest.param(a, case, dtype, id=f"{a.name}-{case.id}-{dtype}")
                  for a, case, dtype in checks.combinations(ok, check)]
        params += [_broken_param(b, ["backend", "case", "dtype"]) for b in broken]
        metafunc.parametrize("backend,case,dtype", params)
        return
    if "dtype" in names:
        params = [pytest.param(a, d, id=f"{a.name}-{d}") for a in ok for d in DTYPES if d in a.dtypes]
        params += [_broken_param(b, ["backend", "dtype"]) for b in broken]
        metafunc.parametrize("backend,dtype", params)
        return
    params = [pytest.param(a, id=a.name) for a in ok] + [_broken_param(b, ["backend"]) for b in broken]
    metafunc.parametrize("backend", params)


@pytest.fixture
def all_backends():
    """Every working adapter the registry has, whatever --backends selects: a restricted
    run still finds a float64 backend to compare low-precision gradients with."""
    return [a for a in backends_mod.load(None) if not isinstance(a, backends_mod.Broken)]

