"""The backends under test, taken from `backend_registry.available()` (never a hand-kept
list), optionally restricted by name (`--backends a,b` or env MHC_BACKENDS).

A registered, installed backend whose adapter fails to import or construct is
not skipped silently: it is returned as `Broken` and every test of it fails with the
import error.
"""
from __future__ import annotations

import importlib
import os
from dataclasses import dataclass

import backend_registry as registry


@dataclass(frozen=True)
class Broken:
    name: str
    error: str


def selected_names(option: str | None = None) -> list[str] | None:
    raw = option or os.environ.get("MHC_BACKENDS") or ""
    names = [s.strip() for s in raw.split(",") if s.strip()]
    return names or None


_CACHE: dict[str, object] = {}


def load(only: list[str] | None = None) -> list:
    """Adapters (or `Broken`) of the runnable registry backends, in registry order."""
    avail = registry.available()
    if only is not None:
        unknown = set(only) - {b.name for b in registry.BACKENDS}
        if unknown:
            raise ValueError(f"unknown backend(s) {sorted(unknown)}; registered: "
                             f"{[b.name for b in registry.BACKENDS]}")
        avail = [b for b in avail if b.name in only]
    out = []
    for b in avail:
        if b.name not in _CACHE:
            try:
                _CACHE[b.name] = b.adapter()
            except Exception as err:  # noqa: BLE001 - reported as a failing backend
                _CACHE[b.name] = Broken(b.name, f"{type(err).__name__}: {err}")
        out.append(_CACHE[b.name])
    return out


def package(adapter) -> object | None:
    """The backend's top-level package (mhc_core_torch, mhc_core_mlx; mhc_core for numpy), where
    MHC / StreamHead / save_state / load_state live."""
    return importlib.import_module(registry.get(adapter.name).package)


def require(adapter) -> None:
    """Fail the calling test when `adapter` is `Broken` (registered but not loading)."""
    if isinstance(adapter, Broken):
        import pytest

        pytest.fail(f"backend {adapter.name!r} is registered and installed, but its testing "
                    f"Adapter does not load: {adapter.error}")
