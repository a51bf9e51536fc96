"""Suite-wide setup.

`assert_close` (a fixture, so every folder's tests get it under any import mode) is the
one closeness check of the backend, Triton and integration tests.

Without CUDA, Triton kernels run in the interpreter (TRITON_INTERPRET=1). Triton reads the
variable when a kernel is decorated, so it is set here, before any test module imports
the kernels. Tests marked `gpu` are skipped where CUDA is absent.
"""
import importlib.util
import os

import numpy as np
import pytest

import backend_registry as registry


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


CUDA = _cuda_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A test skipped because a required backend does not import fails instead."""
    outcome = yield
    report = outcome.get_result()
    message = registry.import_skip_of_required(report)
    if message is not None:
        report.outcome, report.longrepr = "failed", f"required backend missing (MHC_REQUIRE_BACKENDS): {message}"


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    """A test module skipped at import because a required backend is missing fails instead."""
    outcome = yield
    report = outcome.get_result()
    message = registry.import_skip_of_required(report)
    if message is not None:
        report.outcome, report.longrepr = "failed", f"required backend missing (MHC_REQUIRE_BACKENDS): {message}"


def pytest_collection_modifyitems(config, items):
    interpreted = os.environ.get("TRITON_INTERPRET") == "1"  # set by the caller even where CUDA exists
    if CUDA and not interpreted:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (and TRITON_INTERPRET unset)" if CUDA else "needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


def _as_float64(a) -> np.ndarray:
    if hasattr(a, "detach"):  # torch.Tensor (torch is not imported here unless installed)
        a = a.detach().double().cpu().numpy()
    return np.asarray(a, np.float64)


def _assert_close(got, want, tol: float, case: str) -> float:
    """Fail with the worst element, both values and the case id; return the worst |error|.
    The bound is tol * max(1, max |want|)."""
    __tracebackhide__ = True
    got, want = _as_float64(got), _as_float64(want)
    assert got.shape == want.shape, f"[{case}] shape {got.shape} != reference {want.shape}"
    if not np.all(np.isfinite(got)):
        raise AssertionError(f"[{case}] non-finite values at {np.argwhere(~np.isfinite(got))[:3].tolist()}")
    err = np.abs(got - want)
    worst = np.unravel_index(int(np.argmax(err)), err.shape) if err.size else ()
    bound = tol * max(1.0, float(np.abs(want).max(initial=0.0)))
    if err.size and not err[worst] <= bound:  # raise, not assert: keeps pytest from dumping arrays
        raise AssertionError(
            f"[{case}] worst |err| {err[worst]:.3e} > {bound:.1e} at index {tuple(int(i) for i in worst)}: "
            f"got {float(got[worst])!r}, reference {float(want[worst])!r}")
    if os.environ.get("MHC_REPORT_ERRORS"):  # `MHC_REPORT_ERRORS=1 pytest -s ...` prints what was measured
        print(f"\n[{case}] max |err| {float(err.max(initial=0.0)):.3e} (bound {bound:.1e})")
    return float(err.max(initial=0.0))


@pytest.fixture
def assert_close():
    return _assert_close
