"""Cross-backend weight interchange: backend A's `save_state` writes a real safetensors
file, backend B's `load_state` reads it into a module built from different weights, and
B then computes what A computes (and what the oracle computes).

Backends take part when their package (mhc_core_torch, mhc_core_mlx, ...) has `save_state`,
`load_state` and `module_state`; numpy (mhc_core) has no modules and does not.
"""
from __future__ import annotations

import os

import numpy as np

from backends import package
from cases import CASE_BY_ID, TOLERANCES, Case, inputs, round_all, round_to, weights
from checks import oracle_step
from compare import Result, compare

# one mhc and one hc case, each around the other layer kind; and the residual baseline
INTERCHANGE_CASES = tuple(CASE_BY_ID[i] for i in (
    "mhc-n4-C64-b2x3-mlp", "hc-n4-C64-b5-linear", "residual-n1-C7-b5-linear"))


def has_state_io(adapter) -> bool:
    pkg = package(adapter)
    return all(hasattr(pkg, f) for f in ("save_state", "load_state", "module_state"))


def interchange(a, b, case: Case, dtype: str, directory: str) -> list[Result]:
    """A saves, B loads; B's output vs A's and vs the oracle, B's state vs A's exactly."""
    pa, pb = package(a), package(b)
    st = round_all(weights(case), dtype)
    x = round_to(inputs(case)["x"], dtype)
    m_a = a.make_mhc(case.n, case.c, case.variant, case.layer, st, dtype, **case.config)
    path = os.path.join(directory, f"{a.name}-{case.id}-{dtype}.safetensors")
    pa.save_state(m_a, path)

    other = round_all(weights(case, salt="other"), dtype)  # B starts from different weights
    m_b = b.make_mhc(case.n, case.c, case.variant, case.layer, other, dtype, **case.config)
    pb.load_state(m_b, path)

    rtol, atol = TOLERANCES[dtype]
    labels = {"backend": b.name, "check": f"interchange.from.{a.name}", "dtype": dtype, "case": case.id}
    out_a = a.to_numpy(a.run(m_a, a.asarray(x, dtype)))
    out_b = b.to_numpy(b.run(m_b, b.asarray(x, dtype)))
    results = [compare(out_b, out_a, rtol=rtol, atol=atol, quantity=f"out.vs.{a.name}", **labels),
               compare(out_b, oracle_step(case, x, st), rtol=rtol, atol=atol, quantity="out.vs.oracle", **labels)]
    state_a, state_b = pa.module_state(m_a), pb.module_state(m_b)
    if set(state_a) != set(state_b):
        return results + [Result(abs=float("inf"), rel=float("inf"), tol=0.0, rtol=0.0, quantity="names",
                                 note=f"{sorted(state_b)} != {sorted(state_a)}", **labels)]
    for name in sorted(state_a):  # the file carries the values bit for bit
        results.append(compare(np.asarray(state_b[name], np.float64), np.asarray(state_a[name], np.float64),
                               rtol=0.0, atol=0.0, quantity=f"state.{name}", **labels))
    return results


def combinations(adapters: list):
    """(a, b, case, dtype): every ordered pair with state I/O, shared dtypes."""
    io = [ad for ad in adapters if has_state_io(ad)]
    for a in io:
        for b in io:
            if a is b:
                continue
            for case in INTERCHANGE_CASES:
                for dtype in a.dtypes:
                    if dtype in b.dtypes:
                        yield a, b, case, dtype
