"""Comparing a backend's numbers with the oracle: one `Result` per compared tensor.

`compare` measures; `assert_results` fails a pytest test with a message naming the case,
the quantity, the worst element (index, both values) and the abs / rel errors.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np


@dataclass
class Result:
    """The worst disagreement of one tensor. rel = abs / scale, scale = max|want|."""

    backend: str
    check: str        # e.g. 'forward.coefficients', 'grad.fd', 'cross.torch'
    quantity: str     # e.g. 'pre', 'phi', 'out'
    dtype: str
    case: str
    abs: float
    rel: float
    tol: float        # the allowed abs error: atol + rtol * scale
    rtol: float
    index: tuple = ()
    got: float = float("nan")
    want: float = float("nan")
    note: str = ""

    @property
    def passed(self) -> bool:
        return bool(np.isfinite(self.abs)) and self.abs <= self.tol

    def message(self) -> str:
        return (f"[{self.case} {self.dtype} {self.backend}] {self.check}/{self.quantity}: "
                f"worst element {list(self.index)} got {self.got!r} want {self.want!r}; "
                f"abs err {self.abs:.3e} rel err {self.rel:.3e} (scale max|want|), allowed abs "
                f"{self.tol:.3e} (rtol {self.rtol:g}){' ' + self.note if self.note else ''}")

    def as_dict(self) -> dict:
        d = asdict(self)
        d["index"] = [int(i) for i in self.index]
        d["passed"] = self.passed
        return d


def compare(got, want, *, rtol: float, atol: float, **labels) -> Result:
    """Elementwise comparison of two arrays of the same shape (converted to float64).

    Non-finite values where the oracle is finite count as infinite error.
    """
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return Result(abs=float("inf"), rel=float("inf"), tol=0.0, rtol=rtol,
                      note=f"shape {list(got.shape)} != expected {list(want.shape)}", **labels)
    if want.size == 0:
        return Result(abs=0.0, rel=0.0, tol=atol, rtol=rtol, **labels)
    with np.errstate(invalid="ignore"):
        diff = np.abs(got - want)
    same = (got == want) | (np.isnan(got) & np.isnan(want))  # equal infinities count as exact
    diff = np.where(same, 0.0, np.where(np.isnan(diff), np.inf, diff))
    flat = int(np.argmax(diff))
    index = np.unravel_index(flat, want.shape) if want.ndim else ()
    finite = np.abs(want[np.isfinite(want)])
    scale = float(np.max(finite)) if finite.size else 0.0
    worst = float(diff.reshape(-1)[flat])
    return Result(abs=worst, rel=worst / scale if scale > 0 else worst, tol=atol + rtol * scale,
                  rtol=rtol, index=tuple(int(i) for i in index),
                  got=float(got.reshape(-1)[flat]), want=float(want.reshape(-1)[flat]), **labels)


def assert_results(results: list[Result]) -> None:
    """Fail with every failing result's message (the worst one first)."""
    assert results, "no comparisons were made"
    bad = sorted((r for r in results if not r.passed), key=lambda r: -r.abs / max(r.tol, 1e-300))
    if bad:
        raise AssertionError("\n".join(r.message() for r in bad))
