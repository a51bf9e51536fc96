"""Small helpers shared by tests/scale: comparisons whose failure names the worst element,
the registry's adapters, and subprocess plumbing (repo root, python, free ports)."""
from __future__ import annotations

import os
import socket
import sys

import numpy as np
import pytest

import backend_registry as registry

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PYTHON = sys.executable
TOL = {"float64": (1e-10, 1e-12), "float32": (1e-5, 1e-6), "bfloat16": (2e-2, 2e-2)}  # (rtol, atol)


def worst(got, want) -> tuple[float, tuple, float, float]:
    """(max abs error, index, got, want) over two same-shape arrays; NaN vs finite = inf."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    assert got.shape == want.shape, f"shape {got.shape} != expected {want.shape}"
    with np.errstate(invalid="ignore"):
        diff = np.abs(got - want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))
    diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
    i = np.unravel_index(int(np.argmax(diff)), diff.shape) if diff.ndim else ()
    return float(diff[i]), tuple(int(k) for k in i), float(got[i]), float(want[i])


def assert_close(got, want, *, rtol: float, atol: float, case: str) -> float:
    """Assert |got - want| <= atol + rtol * max|want| elementwise; returns the max abs error."""
    err, i, g, w = worst(got, want)
    finite = np.abs(np.asarray(want, np.float64))
    scale = float(finite[np.isfinite(finite)].max()) if np.isfinite(finite).any() else 0.0
    allowed = atol + rtol * scale
    assert err <= allowed, (f"[{case}] worst element {list(i)}: got {g!r} want {w!r}; abs err {err:.3e} "
                            f"> allowed {allowed:.3e} (rtol {rtol:g}, atol {atol:g}, scale {scale:.3g})")
    return err


def adapters(dtypes=("float32",), fused=None) -> list:
    """pytest params (adapter, dtype) for every runnable registry backend and dtype it has;
    fused=False / True keeps only the backends running the mhc_core math / their own kernels."""
    out = []
    for b in registry.available():
        if fused is not None and b.fused != fused:
            continue
        ad = b.adapter()
        out += [pytest.param(ad, d, id=f"{b.name}-{d}") for d in dtypes if d in ad.dtypes]
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def subprocess_env(**extra) -> dict:
    """Environment for child python processes: repo on the path, one thread each (2 cores)."""
    env = dict(os.environ)
    env.update({"PYTHONPATH": os.pathsep.join([REPO, os.path.join(REPO, "backends"), os.path.join(REPO, "tests"), env.get("PYTHONPATH", "")]),
                "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"})
    env.update({k: str(v) for k, v in extra.items()})
    return env
