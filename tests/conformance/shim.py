"""The shim check: every function of mhc_core.xp.SUBSET and EXTRAS (plus the Ops dtype
helpers mhc_core relies on) called through `mhc_core.namespace(<backend arrays>)` and
compared with the same call on numpy float64 (the inputs rounded to the dtype first).

CALLS maps each function name to `call(ops, a)` where `a` holds the inputs below already
converted to the backend's arrays; `test_every_shim_function_is_checked` keeps CALLS in
step with SUBSET + EXTRAS.
"""
from __future__ import annotations

import numpy as np

import mhc_core
from mhc_core.xp import EXTRAS, SUBSET

from cases import TOLERANCES, round_to
from compare import Result, compare

_rng = np.random.default_rng(1234)
INPUTS = {
    "a": _rng.normal(0.0, 1.0, (3, 4)),
    "b": _rng.normal(0.0, 1.0, (3, 4)),
    "pos": _rng.uniform(0.1, 3.0, (3, 4)),
    "t": _rng.normal(0.0, 1.0, (2, 3, 4)),
    "t2": _rng.normal(0.0, 1.0, (2, 4, 3)),
    "m": _rng.normal(0.0, 1.0, (4, 2)),
    "row": _rng.normal(0.0, 1.0, (4,)),
    "col": _rng.normal(0.0, 1.0, (3, 1)),
    # large magnitudes: the overflow-safe extras must stay finite and exact-ish
    "big": np.array([[-1e4, 0.0, 1e4, 3.0], [-50.0, 50.0, 0.5, -0.5], [1.0, 2.0, 3.0, 4.0]]),
    "inf": np.array([[np.inf, -np.inf, np.nan, 1.0], [0.0, -2.0, 3.0, 1e4], [1.0, 1.0, 1.0, 1.0]]),
    "neginf": np.array([[-np.inf, -np.inf, -np.inf], [-np.inf, 0.0, 1.0]]),
}

def _normalized_iterates(o, a):
    """Two Sinkhorn-style normalisations (columns, then rows) of |t| written the way
    mhc_core.sinkhorn does: into `iterates`' buffer where the library has one, else stacked."""
    m = o.abs(a["t"])  # [2, 3, 4]
    buffer = o.iterates(2, m)
    ms = []
    for j, axis in enumerate((0, 1)):
        m = o.normalize(m, axis, 1e-6, out=None if buffer is None else buffer[j])
        ms.append(m)
    return o.stack(ms) if buffer is None else buffer


def _in_place_normalize_backward(o, a):
    """normalize_backward written into its own h (what sinkhorn_backward does), on a copy."""
    h = a["t"] - 0.5  # a new array: the inputs stay untouched
    return o.normalize_backward(h, o.abs(o.matrix_transpose(a["t2"])), 1, out=h)


def _matmul_concat_backward(o, a):
    """The gradients of t @ concat([t2[:, :3], t2[:, 3:]]) for an output gradient [2, 3, 3],
    flattened into one array: d_part0 [2, 3, 3], d_part1 [2, 1, 3], d_a [2, 3, 4]."""
    dout = o.matmul(a["t"], a["t2"]) - 0.25
    d_parts, d_a = o.matmul_concat_backward(a["t"], [a["t2"][:, :3], a["t2"][:, 3:]], dout)
    return o.concat([o.reshape(d, (-1,)) for d in (*d_parts, d_a)], axis=0)


CALLS = {
    "abs": lambda o, a: o.abs(a["a"]),
    "astype": lambda o, a: o.astype(a["a"], o.float32),
    "broadcast_to": lambda o, a: o.broadcast_to(a["row"], (3, 4)),
    "cumulative_sum": lambda o, a: o.cumulative_sum(a["a"], axis=-1),
    "concat": lambda o, a: o.concat([a["a"], a["b"]], axis=-1),
    "exp": lambda o, a: o.exp(a["a"]),
    "expand_dims": lambda o, a: o.expand_dims(a["a"], axis=-2),
    "eye": lambda o, a: o.eye(4, dtype=a["a"].dtype),
    "isfinite": lambda o, a: o.isfinite(a["inf"]),
    "log": lambda o, a: o.log(a["pos"]),
    "logaddexp": lambda o, a: o.logaddexp(a["big"], o.matrix_transpose(o.reshape(a["big"], (4, 3)))),
    "matmul": lambda o, a: o.matmul(a["t"], a["t2"]),
    "matrix_transpose": lambda o, a: o.matrix_transpose(a["t"]),
    "max": lambda o, a: o.max(a["a"], axis=-1, keepdims=True),
    "mean": lambda o, a: o.mean(a["t"], axis=-1, keepdims=True),
    "min": lambda o, a: o.min(a["a"], axis=0),
    "reshape": lambda o, a: o.reshape(a["t"], (6, 4)),
    "sort": lambda o, a: o.sort(a["t"], axis=-1),
    "sqrt": lambda o, a: o.sqrt(a["pos"]),
    "squeeze": lambda o, a: o.squeeze(a["col"], axis=-1),
    "stack": lambda o, a: o.stack([a["a"], a["b"]], axis=-2),
    "sum": lambda o, a: o.sum(a["t"], axis=-2, keepdims=True),
    "tanh": lambda o, a: o.tanh(a["big"]),
    "where": lambda o, a: o.where(a["a"] > 0, a["a"], a["b"]),
    "zeros_like": lambda o, a: o.zeros_like(a["a"]),
    # extras
    "sigmoid": lambda o, a: o.sigmoid(a["big"]),
    "rsqrt": lambda o, a: o.rsqrt(a["pos"]),
    "logsumexp": lambda o, a: o.logsumexp(a["big"], axis=-1),
    "softmax": lambda o, a: o.softmax(a["big"], axis=-1),
    "normalize": lambda o, a: o.normalize(o.abs(a["t"]), -2, 1e-6),
    "normalize_backward": lambda o, a: o.normalize_backward(a["t"], o.abs(o.matrix_transpose(a["t2"])), -2),
    "normalize_backward(out=h)": lambda o, a: _in_place_normalize_backward(o, a),
    "iterates": _normalized_iterates,
    "equal_all": lambda o, a: np.array([float(o.equal_all(a["a"], a["a"])), float(o.equal_all(a["a"], a["b"])),
                                        float(o.equal_all(a["inf"], a["inf"]))]),  # [1, 0, 0]: NaN != NaN
    "batched_outer": lambda o, a: o.batched_outer(a["a"], a["big"]),
    "batched_outer(broadcast leading axes)": lambda o, a: o.batched_outer(a["t"], a["row"][:3]),
    "matmul_concat": lambda o, a: o.matmul_concat(a["t"], [a["t2"][:, :3], a["t2"][:, 3:]]),
    "matmul_concat_t": lambda o, a: o.matmul_concat_t(a["t"], [a["t"][:, 1:], o.abs(a["t"][:, :1])]),
    "matmul_concat_backward": lambda o, a: _matmul_concat_backward(o, a),
    "stop_gradient": lambda o, a: o.stop_gradient(a["inf"]),  # the value itself, inf and NaN included
    # more call patterns mhc_core uses
    "logsumexp(keepdims, -inf rows)": lambda o, a: o.logsumexp(a["neginf"], axis=-1, keepdims=True),
    "softmax(axis=-2)": lambda o, a: o.softmax(a["t"], axis=-2),
    "matmul(2d)": lambda o, a: o.matmul(a["a"], a["m"]),
    # dtype helpers
    "eye_like": lambda o, a: o.eye_like(a["a"], 3),
    "constant_like": lambda o, a: o.constant_like(a["a"], np.arange(6.0).reshape(2, 3)),
    "is_floating": lambda o, a: np.array(float(o.is_floating(a["a"]))),
    "is_real_number(float, bool)": lambda o, a: np.array([float(o.is_real_number(a["a"])),
                                                          float(o.is_real_number(o.isfinite(a["a"])))]),
    "compute_dtype": lambda o, a: o.zeros_like(o.astype(a["a"], o.compute_dtype(a["a"]))) + 1.0,
}


def _dtype_name(arr) -> str:
    return str(arr.dtype).rsplit(".", 1)[-1]


def shim(adapter, dtype: str) -> list[Result]:
    """One Result per shim function for `adapter` in `dtype` (+ result-dtype checks)."""
    rtol, atol = TOLERANCES[dtype]
    rounded = {k: round_to(v, dtype) for k, v in INPUTS.items()}
    mine = {k: adapter.asarray(v, dtype) for k, v in rounded.items()}
    ops = mhc_core.namespace(mine["a"])
    ref_ops = mhc_core.namespace(rounded["a"])
    out = []
    for name, call in CALLS.items():
        labels = {"backend": adapter.name, "check": "shim", "quantity": name, "dtype": dtype, "case": "shim"}
        try:
            with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # numpy backend: log(0)
                got = call(ops, mine)
            val = got if isinstance(got, np.ndarray) else adapter.to_numpy(got)
        except Exception as err:  # noqa: BLE001 - a missing binding is a failed check
            out.append(Result(abs=float("inf"), rel=float("inf"), tol=0.0, rtol=rtol,
                              note=f"raised {type(err).__name__}: {err}", **labels))
            continue
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):  # log(0) = -inf is intended
            want = call(ref_ops, rounded)
        # float32 results (astype) are compared at float32 tolerance, whatever the input
        tol_dtype = "float32" if name == "astype" and dtype == "float64" else dtype
        r_, a_ = TOLERANCES[tol_dtype]
        res = compare(val, np.asarray(want, dtype=np.float64), rtol=r_, atol=a_, **labels)
        expected_dtype = {"astype": "float32", "compute_dtype": "float64" if dtype == "float64" else "float32",
                          "isfinite": "bool"}.get(name, None if name in ("is_floating", "is_real_number(float, bool)", "equal_all") else dtype)
        if expected_dtype and _dtype_name(got) != expected_dtype:
            res.abs, res.note = float("inf"), f"result dtype {got.dtype}, expected {expected_dtype}"
        out.append(res)
    return out
