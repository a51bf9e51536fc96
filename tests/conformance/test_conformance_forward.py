"""Forward conformance: every backend's sinkhorn, coefficients, pre_aggregate,
post_residual and whole step vs the numpy float64 oracle (checks.py has the logic)."""
import pytest

import backends
import checks
from compare import assert_results


@pytest.mark.conformance("coefficients")
def test_components(backend, case, dtype):
    """sinkhorn (mhc), coefficients (pre, post, res), pre_aggregate, post_residual."""
    backends.require(backend)
    assert_results(checks.forward_components(backend, case, dtype))


@pytest.mark.conformance("forward")
def test_step(backend, case, dtype):
    """The whole MHC step (adapter.make_mhc + run) around the case's linear / mlp layer."""
    backends.require(backend)
    assert_results(checks.forward_step(backend, case, dtype))
