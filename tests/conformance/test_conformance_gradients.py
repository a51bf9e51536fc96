"""Gradient conformance of the whole step w.r.t. x, phi, bias, alpha and the layer weights.

float64: directional derivatives vs finite differences of the numpy float64 oracle.
float32 / bfloat16: elementwise vs the same backend's float64 gradients (same rounded
weights, inputs and cotangent). Backends against each other: outputs and gradients
elementwise on identical weights. The logic is in checks.py.
"""
import pytest

import backends
import checks
from compare import assert_results


@pytest.mark.conformance("gradients")
def test_gradients(backend, case, dtype, all_backends):
    backends.require(backend)
    ref = checks.reference_f64(backend, all_backends)
    if dtype != "float64" and ref is None:
        pytest.skip(f"no differentiable float64 backend to compare {backend.name} {dtype} with")
    assert_results(checks.gradients(backend, case, dtype, all_backends))


def test_cross_backend(pair, case, dtype):
    """Two backends, identical weights: outputs (and gradients when both have them)."""
    a, b = pair
    assert_results(checks.cross_backend(a, b, case, dtype))
