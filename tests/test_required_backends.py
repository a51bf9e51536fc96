"""A backend that CI requires (MHC_REQUIRE_BACKENDS, set in .ci/run) but that cannot run
here fails this test by name, instead of its tests silently disappearing from the run."""
import subprocess
import sys
import os

import pytest

import backend_registry as registry

TESTS = os.path.dirname(os.path.abspath(__file__))


@pytest.mark.parametrize("name", registry.required_names() or [pytest.param(None, marks=pytest.mark.skip(
    reason="MHC_REQUIRE_BACKENDS is not set"))])
def test_required_backend_is_available(name):
    reason = registry.get(name).unavailable_reason()
    assert reason is None, f"backend {name!r} is required (MHC_REQUIRE_BACKENDS) but cannot run: {reason}"


def _missing_in_subprocess(env_value: str, stale_dir: str | None = None) -> str:
    """What missing_required() says in a fresh interpreter, optionally with a stale
    (import-broken) `mlx` folder first on sys.path."""
    env = dict(os.environ, MHC_REQUIRE_BACKENDS=env_value)
    paths = ([stale_dir] if stale_dir else []) + [TESTS]
    env["PYTHONPATH"] = os.pathsep.join(paths + [env.get("PYTHONPATH", "")])
    code = "import backend_registry as r; print(r.missing_required())"
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          check=True).stdout


def test_stale_mlx_folder_does_not_count_as_installed(tmp_path):
    stale = tmp_path / "site"
    (stale / "mlx").mkdir(parents=True)  # what an uninstall can leave behind: a folder without
    (stale / "mlx" / "__init__.py").write_text("")  # its compiled core; first on sys.path here
    out = _missing_in_subprocess("mlx", str(stale))
    assert "'mlx'" in out and "mlx.core" in out


def test_unknown_required_name_is_an_error(monkeypatch):
    monkeypatch.setenv("MHC_REQUIRE_BACKENDS", "torch,jax")
    with pytest.raises(ValueError, match="unknown backend.*jax"):
        registry.required_names()


def test_required_and_available_is_not_missing(monkeypatch):
    monkeypatch.setenv("MHC_REQUIRE_BACKENDS", "numpy")
    assert registry.missing_required() == {}


class _Report:
    skipped = True

    def __init__(self, message):
        self.longrepr = ("file.py", 1, message)


def test_import_skip_of_a_required_backend_becomes_a_failure(monkeypatch):
    """tests/conftest.py turns `pytest.importorskip` of a required backend's module into a
    failure (per test, or per module at collection); other skips stay skips."""
    _skip_hides_required = registry.import_skip_of_required
    monkeypatch.setenv("MHC_REQUIRE_BACKENDS", "mlx")
    assert _skip_hides_required(_Report("could not import 'mlx.core': No module named 'mlx'"))
    assert _skip_hides_required(_Report("could not import 'transformers': no")) is None
    assert _skip_hides_required(_Report("needs a CUDA GPU")) is None
    monkeypatch.setenv("MHC_REQUIRE_BACKENDS", "")
    assert _skip_hides_required(_Report("could not import 'mlx.core': No module named 'mlx'")) is None
