"""Mixed precision: bf16 activations, float32 coefficients and Sinkhorn.

- An MHC step on bf16 input matches the float64 oracle to bf16 tolerance, on torch and MLX.
- Its coefficients are float32 and agree with float64 math on the same (bf16-rounded)
  input to float32 precision (1e-5): they are computed in float32, not in bf16 (bf16
  math would be ~1e-2 off).
- torch.autocast(bf16): the layer runs in bf16, the coefficients stay float32 (equal to the
  autocast-free run to 1e-6; autocast alone would have run their matmul in bf16: 3e-3 off).
- Tiny LM training in bf16 (weights and activations bf16, mixing weights float32) stays
  finite wherever the float32 run does, and ends near the float32 loss.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import mhc_core
import mhc_core_torch
from mhc_core.experiments.lm_config import LMConfig, init_lm_params
from mhc_core.experiments.tasks import TaskStream
from scale_helpers import assert_close

N, C = 4, 16
P = {k: v for k, v in mhc_core.init_params(N, C, phi_std=0.3, alpha=1.0, seed=0, dtype=np.float64).items()}
RNG = np.random.default_rng(1)
W = RNG.normal(0, 0.2, (C, C))
X = RNG.normal(size=(2, 3, N, C))


def _bf16_round(a: np.ndarray) -> np.ndarray:
    return torch.tensor(a, dtype=torch.float64).to(torch.bfloat16).double().numpy()


def _oracle(x64: np.ndarray, w64: np.ndarray):
    out = mhc_core.step(x64, lambda h: h @ w64.T, P["phi"], P["bias"], P["alpha"])
    return out, mhc_core.coefficients(x64, P["phi"], P["bias"], P["alpha"])


def test_torch_bf16_step_vs_float64_oracle():
    layer = nn.Linear(C, C, bias=False)
    layer.weight.data = torch.tensor(W, dtype=torch.bfloat16)
    m = mhc_core_torch.MHC(layer, N, C, init={k: v.astype(np.float32) for k, v in P.items()})
    assert all(getattr(m, k).dtype == torch.float32 for k in ("phi", "bias", "alpha"))
    x = torch.tensor(X, dtype=torch.bfloat16)
    want_out, want_coef = _oracle(_bf16_round(X), _bf16_round(W))
    got = m(x)
    assert got.dtype == torch.bfloat16
    assert_close(got.double().detach().numpy(), want_out, rtol=2e-2, atol=2e-2, case="torch bf16 step out")
    for name, g, w in zip(("pre", "post", "res"), m.coefficients(x), want_coef):
        assert g.dtype == torch.float32, f"{name} is {g.dtype}, not float32"
        assert_close(g.detach().numpy(), w, rtol=1e-5, atol=1e-6, case=f"torch bf16-input {name} (float32 math)")


def test_torch_autocast_keeps_mixing_float32():
    """Under autocast the layer runs in bf16 but what MHC feeds it (pre-aggregate from
    float32 coefficients) equals the autocast-free float32 value; without the guard in
    dispatch._reference_step autocast ran the coefficient matmul in bf16 (3e-3 off here)."""
    fed, dtypes = [], []

    def layer(h):
        fed.append(h.detach())
        y = lin(h)
        dtypes.append(y.dtype)
        return y

    lin = nn.Linear(C, C, bias=False)
    m = mhc_core_torch.MHC(layer, N, C, init={k: v.astype(np.float32) for k, v in P.items()})
    x = torch.tensor(X, dtype=torch.float32)
    plain = m(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed = m(x)
    assert dtypes == [torch.float32, torch.bfloat16], f"layer output dtypes {dtypes}: autocast must reach the layer"
    assert fed[1].dtype == torch.float32
    assert_close(fed[1].numpy(), fed[0].numpy(), rtol=1e-6, atol=1e-7, case="autocast: layer input (float32 mixing)")
    # the outputs differ only through the bf16 layer output (|y| ~ 1, bf16 rel 4e-3)
    assert_close(mixed.detach().numpy(), plain.detach().numpy(), rtol=0, atol=3e-2, case="autocast vs float32 output")
    with torch.autocast("cpu", dtype=torch.bfloat16):  # what autocast alone does to this math
        unguarded = mhc_core.coefficients(x, m.phi, m.bias, m.alpha)[0]
    drift = (unguarded - m.coefficients(x)[0]).abs().max().item()
    assert drift > 1e-4, f"autocast no longer lowers mhc_core's matmul ({drift:.1e}): the guard may be moot"


def test_mlx_bf16_step_vs_float64_oracle():
    mx = pytest.importorskip("mlx.core")
    mnn = pytest.importorskip("mlx.nn")
    import mhc_core_mlx

    layer = mnn.Linear(C, C, bias=False)
    layer.weight = mx.array(W.astype(np.float32)).astype(mx.bfloat16)
    m = mhc_core_mlx.MHC(layer, N, C, init={k: v.astype(np.float32) for k, v in P.items()})
    x = mx.array(X.astype(np.float32)).astype(mx.bfloat16)
    want_out, want_coef = _oracle(_bf16_round(X), _bf16_round(W))
    got = m(x)
    assert got.dtype == mx.bfloat16
    assert_close(np.array(got.astype(mx.float32)), want_out, rtol=2e-2, atol=2e-2, case="mlx bf16 step out")
    for name, g, w in zip(("pre", "post", "res"), mhc_core.coefficients(x, m.phi, m.bias, m.alpha), want_coef):
        assert g.dtype == mx.float32, f"{name} is {g.dtype}, not float32"
        assert_close(np.array(g), w, rtol=1e-5, atol=1e-6, case=f"mlx bf16-input {name} (float32 math)")


# --- a short bf16 training run next to the float32 one -----------------------------------

STEPS = 20


def _train(backend: str, variant: str, bf16: bool) -> list[float]:
    cfg = LMConfig(vocab=16, dim=32, n_layers=2, n_heads=2, seq_len=8, variant=variant, n=4, seed=2)
    data = TaskStream("incrementing", vocab=16, seq_len=8, batch_size=8, seed=3)
    if backend == "torch":
        from mhc_core_torch.lm import Trainer
        from mhc_core_torch.training.precision import cast_except_mixing

        torch.manual_seed(0)
        trainer = Trainer(cfg, init_lm_params(cfg), lr=3e-3)
        if bf16:
            cast_except_mixing(trainer.model, torch.bfloat16)
    else:
        mx = pytest.importorskip("mlx.core")
        from mhc_core_mlx.lm import Trainer
        from mhc_core_mlx.training.precision import cast_except_mixing

        trainer = Trainer(cfg, init_lm_params(cfg), lr=3e-3)
        if bf16:
            cast_except_mixing(trainer.model, mx.bfloat16)
    losses = []
    for _ in range(STEPS):
        out = trainer.step(*data.next(), lr=3e-3)
        losses.append(float("nan") if out["skipped"] else out["loss"])
    return losses


@pytest.mark.parametrize("backend,variant", [("torch", "mhc"), ("torch", "hc"), ("mlx", "mhc")])
def test_bf16_training_finite_where_float32_is(backend, variant):
    """Pure bf16 weights (Adam updates rounded to bf16) lag float32 a little as the loss
    falls (measured at 25 steps, depth 4: 0.98 vs 0.89); allowed 15% + 0.1."""
    fp32, bf16 = _train(backend, variant, False), _train(backend, variant, True)
    assert np.isfinite(fp32).all(), f"float32 run itself not finite: {fp32}"
    assert np.isfinite(bf16).all(), f"{backend} {variant} bf16 went non-finite where float32 did not: {bf16}"
    assert bf16[-1] < 0.8 * bf16[0], f"bf16 did not learn: {bf16[0]:.3f} -> {bf16[-1]:.3f}"
    last = lambda v: float(np.mean(v[-5:]))  # noqa: E731
    assert abs(last(bf16) - last(fp32)) < 0.15 * last(fp32) + 0.1, \
        f"{backend} {variant}: bf16 ends at {last(bf16):.4f}, float32 at {last(fp32):.4f}"
