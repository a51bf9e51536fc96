"""The conformance case list (one list for every backend), tolerances and test data.

A case fixes variant, n, C, leading batch shape, the wrapped layer and (rarely) a
non-default config; the dtype comes from each backend's `Adapter.dtypes`. Ids read like
flash-linear-attention's: `mhc-n4-C64-b2x3-mlp` (+ `-float32` where a dtype applies).

Covering set, not the cartesian product (5 n x 5 C x 3 batch x 2 layers x 2 variants
would be 300 cases per dtype and backend). Every value of every axis appears at least
twice, with each n paired with several C, every variant with every layer and batch
shape, and the odd C (1, 7, 33, 257) paired with n > 1:

    axis        values
    variant     mhc (8 cases), hc (5), mhc-lite (2; n = 4, 3), residual (2; n = 1, the step only)
    n           1, 2, 3, 4, 8
    C           1, 7, 33, 64, 257
    batch       () 'bnone', (5,) 'b5', (2, 3) 'b2x3'
    layer       linear, mlp
    config      default (DeepSeek-V4's); two mhc cases with iters=5 / sinkhorn_eps=0
                (log-domain Sinkhorn) and pre_eps=0 / post_scale=1

Data (inputs and weights) are generated in float64 from a seed derived from the case id,
then rounded to the dtype under test; the oracle runs on the rounded values, so only
the backend's arithmetic is measured, not the rounding of its inputs.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

import mhc_core
from backend_registry.numpy_adapter import layer_shapes

# ---------------------------------------------------------------------------------------
# Tolerances: (rtol, atol). A tensor passes when max|got - want| <= atol + rtol * max|want|
# (the error is measured against the oracle's magnitude, so tiny elements of a large
# tensor do not demand impossible relative accuracy). Gradient checks use the same
# tuples; float64 gradients are checked by finite differences with their own tolerance.
# ---------------------------------------------------------------------------------------
TOLERANCES: dict[str, tuple[float, float]] = {
    "float64": (1e-10, 1e-12),
    "float32": (1e-5, 1e-7),
    "bfloat16": (2e-2, 1e-3),
}
# Directional derivative <g, d> vs Richardson-extrapolated central differences of the
# float64 oracle; error relative to sum_i |g_i d_i| (the dot product's own scale).
FD_RTOL = 1e-9

DTYPES = ("float64", "float32", "bfloat16")


@dataclass(frozen=True)
class Case:
    variant: str
    n: int
    c: int
    batch: tuple[int, ...]
    layer: str
    cfg: tuple[tuple[str, float], ...] = field(default=())

    @property
    def id(self) -> str:
        b = "x".join(map(str, self.batch)) if self.batch else "none"
        tag = "".join(f"-{_SHORT[k]}{v:g}" for k, v in self.cfg)
        return f"{self.variant}-n{self.n}-C{self.c}-b{b}-{self.layer}{tag}"

    @property
    def config(self) -> dict:
        """Keyword config for mhc_core.step / make_mhc (MHCConfig defaults elsewhere)."""
        out = {k: (int(v) if k == "iters" else float(v)) for k, v in self.cfg}
        return {**mhc_core.MHCConfig().as_dict(), **out}


_SHORT = {"iters": "it", "sinkhorn_eps": "skeps", "pre_eps": "preeps", "post_scale": "ps"}

CASES: tuple[Case, ...] = (
    Case("mhc", 4, 64, (2, 3), "mlp"),
    Case("mhc", 4, 33, (5,), "linear"),
    Case("mhc", 1, 7, (), "linear"),
    Case("mhc", 2, 257, (5,), "mlp"),
    Case("mhc", 3, 1, (2, 3), "linear"),
    Case("mhc", 8, 33, (), "mlp"),
    Case("mhc", 8, 7, (2, 3), "linear", (("iters", 5), ("sinkhorn_eps", 0.0))),
    Case("mhc", 2, 64, (), "linear", (("pre_eps", 0.0), ("post_scale", 1.0))),
    Case("hc", 4, 64, (5,), "linear"),
    Case("hc", 2, 7, (2, 3), "mlp"),
    Case("hc", 3, 257, (), "linear"),
    Case("hc", 1, 33, (5,), "mlp"),
    Case("hc", 8, 1, (5,), "mlp"),
    Case("mhc-lite", 4, 7, (2, 3), "linear"),
    Case("mhc-lite", 3, 33, (5,), "mlp"),
    Case("residual", 1, 64, (2, 3), "mlp"),
    Case("residual", 1, 7, (5,), "linear"),
)
CASE_BY_ID = {c.id: c for c in CASES}
assert len(CASE_BY_ID) == len(CASES), "case ids must be unique"


# ---------------------------------------------------------------------------------------
# Rounding to a dtype, in numpy (bf16 by round-to-nearest-even on float32 bits, so the
# case data does not need any framework).
# ---------------------------------------------------------------------------------------
def round_to(a, dtype: str) -> np.ndarray:
    """float64 array holding the values of `a` rounded to `dtype`."""
    a = np.asarray(a, dtype=np.float64)
    if dtype == "float64":
        return a.copy()
    f32 = a.astype(np.float32)
    if dtype == "float32":
        return f32.astype(np.float64)
    if dtype == "bfloat16":
        bits = f32.view(np.uint32).astype(np.uint64)
        bits = (bits + 0x7FFF + ((bits >> 16) & 1)) & 0xFFFF0000  # nearest, ties to even
        return bits.astype(np.uint32).view(np.float32).astype(np.float64)
    raise ValueError(f"dtype must be one of {DTYPES}, got {dtype!r}")


def round_all(d: dict, dtype: str) -> dict:
    return {k: round_to(v, dtype) for k, v in d.items()}


# ---------------------------------------------------------------------------------------
# Case data
# ---------------------------------------------------------------------------------------
def rng_for(case: Case, salt: str = "") -> np.random.Generator:
    return np.random.default_rng(zlib.crc32((case.id + salt).encode()))


def weights(case: Case, salt: str = "") -> dict[str, np.ndarray]:
    """float64 state of one MHC module: mixing params + layer weights, named as in
    `module_state`. Gates are made non-trivial: phi ~ N(0, 1/(nC)) so z = O(1), bias
    and alpha randomised around the warm-start init (mhc_core.init_params)."""
    rng = rng_for(case, "weights" + salt)
    n, c = case.n, case.c
    state: dict[str, np.ndarray] = {}
    if case.variant != "residual":
        p = mhc_core.init_params(n, c, variant=case.variant, phi_std=1.0 / np.sqrt(n * c),
                                 seed=int(rng.integers(2**31)), dtype=np.float64)
        state["phi"] = p["phi"]
        state["bias"] = p["bias"] + rng.normal(0.0, 0.5, p["bias"].shape)
        state["alpha"] = rng.uniform(0.5, 1.5, 3)
    for name, shape in layer_shapes(case.layer, c).items():
        fan_in = shape[-1]
        std = 1.0 / np.sqrt(fan_in) if name.endswith("weight") else 0.1
        state[name] = rng.normal(0.0, std, shape)
    return state


def inputs(case: Case) -> dict[str, np.ndarray]:
    """float64 arrays for the forward checks: the step input x [*b, n, C], the step's
    cotangent, and inputs of the components: logits [*b, n, n] (scale 3, so Sinkhorn has
    work to do), pre/post [*b, n], res [*b, n, n], y [*b, C]."""
    rng = rng_for(case, "inputs")
    b, n, c = case.batch, case.n, case.c
    return {
        "x": rng.normal(0.0, 1.0, b + (n, c)),
        "cotangent": rng.normal(0.0, 1.0, b + (n, c)),
        "logits": rng.normal(0.0, 3.0, b + (n, n)),
        "pre": rng.uniform(0.0, 1.0, b + (n,)),
        "post": rng.uniform(0.0, 2.0, b + (n,)),
        "res": rng.uniform(0.0, 1.0, b + (n, n)),
        "y": rng.normal(0.0, 1.0, b + (c,)),
    }
