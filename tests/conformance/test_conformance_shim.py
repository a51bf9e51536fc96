"""The shim on every backend: each function of mhc_core.xp.SUBSET and EXTRAS called on
the backend's arrays (every dtype it has) and compared with numpy float64."""
from mhc_core.xp import EXTRAS, SUBSET

import backends
import shim
from compare import assert_results


def test_every_shim_function_is_checked():
    missing = sorted((set(SUBSET) | set(EXTRAS)) - set(shim.CALLS))
    assert not missing, f"shim functions without a conformance call in shim.CALLS: {missing}"


def test_shim(backend, dtype):
    backends.require(backend)
    assert_results(shim.shim(backend, dtype))
