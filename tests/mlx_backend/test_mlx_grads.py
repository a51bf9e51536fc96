"""Gradients of the whole MHC step (w.r.t. x, phi, bias, alpha and the layer's weights),
through `Adapter.step_and_grads` (mx.value_and_grad over mhc_core on mlx arrays).

- float64 vs torch float64 autograd through the same mhc_core math (skipped without torch);
- float64 directional derivatives vs central finite differences of the numpy oracle
  (independent of any autodiff; FD truncation + rounding limit this to ~1e-8);
- float32 / bfloat16 vs the (verified) float64 gradients at the dtype's tolerance.
"""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")

from backend_registry.mlx_adapter import Adapter  # noqa: E402
from mlx_cases import TOL, assert_close, make_state, oracle_step  # noqa: E402

ADAPTER = Adapter()
CASES = [  # (variant, layer, n, C, leading shape)
    ("mhc", "mlp", 3, 4, (2,)),
    ("mhc", "linear", 2, 5, (2, 2)),
    ("hc", "linear", 4, 3, (3,)),
    ("hc", "mlp", 2, 3, ()),
    ("residual", "mlp", 1, 4, (2,)),
]


def _id(case):
    v, layer, n, c, lead = case
    return f"{v}-{layer}-n{n}-C{c}-lead{'x'.join(map(str, lead)) or 'none'}"


def _setup(case, dtype="float64", seed=0):
    variant, layer, n, c, lead = case
    state = make_state(variant, layer, n, c, seed=seed)
    rng = np.random.default_rng(seed + 1)
    x, cot = rng.normal(size=lead + (n, c)), rng.normal(size=lead + (n, c))
    module = ADAPTER.make_mhc(n, c, variant, layer, state, dtype, iters=8)
    out, grads = ADAPTER.step_and_grads(module, ADAPTER.asarray(x, dtype), ADAPTER.asarray(cot, dtype))
    return state, x, cot, out, {k: ADAPTER.to_numpy(g) for k, g in grads.items()}


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_float64_grads_match_torch_autograd(case):
    torch = pytest.importorskip("torch")
    import mhc_core

    variant, layer, n, c, lead = case
    state, x, cot, out, grads = _setup(case)
    t = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in state.items()}
    tx = torch.tensor(x, dtype=torch.float64, requires_grad=True)

    def f(h):  # the conformance layer in torch
        if layer == "linear":
            return h @ t["layer.weight"].T + t["layer.bias"]
        u = torch.nn.functional.silu(h @ t["layer.fc1.weight"].T + t["layer.fc1.bias"])
        return u @ t["layer.fc2.weight"].T + t["layer.fc2.bias"]

    tout = mhc_core.step(tx, f, t.get("phi"), t.get("bias"), t.get("alpha"), variant=variant, iters=8)
    names = ["x"] + sorted(t)
    tgrads = torch.autograd.grad((tout * torch.tensor(cot)).sum(), [tx] + [t[k] for k in names[1:]])
    assert set(grads) == set(names), f"grad keys {sorted(grads)} != {sorted(names)}"
    assert_close(ADAPTER.to_numpy(out), tout.detach().numpy(), TOL["float64"], _id(case), "out")
    for name, tg in zip(names, tgrads):
        assert_close(grads[name], tg.numpy(), TOL["float64"], _id(case), f"d/d{name}")


@pytest.mark.parametrize("case", CASES, ids=_id)
def test_float64_directional_derivatives_match_finite_differences(case):
    variant, layer, *_ = case
    state, x, cot, _, grads = _setup(case)
    rng = np.random.default_rng(42)

    def loss(s, xx):
        return float(np.sum(oracle_step(variant, layer, s, xx, iters=8) * cot))

    h = 1e-5
    for trial in range(2):
        d = {k: rng.normal(size=v.shape) for k, v in state.items()}
        dx = rng.normal(size=x.shape)
        plus = loss({k: v + h * d[k] for k, v in state.items()}, x + h * dx)
        minus = loss({k: v - h * d[k] for k, v in state.items()}, x - h * dx)
        fd = (plus - minus) / (2 * h)
        ad = float(np.sum(grads["x"] * dx) + sum(np.sum(grads[k] * d[k]) for k in state))
        # central differences: O(h^2) truncation + O(eps/h) rounding, ~1e-9 relative here
        assert abs(fd - ad) <= 1e-7 * (1 + abs(fd)), (
            f"[{_id(case)} direction {trial}] autodiff {ad!r} vs finite differences {fd!r} "
            f"(diff {abs(fd - ad):.3e})"
        )


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("case", CASES[:3], ids=_id)
def test_low_precision_grads_match_float64(case, dtype):
    _, _, _, _, want = _setup(case, "float64")
    _, _, _, _, got = _setup(case, dtype)
    # x, the cotangent and (bf16) the layer are rounded to dtype first, so this measures
    # the whole low-precision pipeline (measured: float32 <= 4e-7, bf16 <= 1.4e-2).
    for name in want:
        assert_close(got[name], want[name], TOL[dtype], f"{_id(case)}-{dtype}", f"d/d{name}")
