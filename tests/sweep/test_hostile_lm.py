"""The depth sweep's tiny LMs and their data attacked: gradient norms of large but finite
gradients (against float64 autograd), numpy-integer seeds and sizes (against Python ints),
and analyze_model on a run whose every number is NaN."""
import json
import os
import sys

import numpy as np
import pytest

from mhc_core.experiments.lm_config import LMConfig, init_lm_params, layer_names
from mhc_core.experiments.tasks import TaskStream

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")
tlm = pytest.importorskip("mhc_core_torch.lm")
mlm = pytest.importorskip("mhc_core_mlx.lm")


def _float64_grad_norms(cfg, params, batch):
    """Total and per-mixing-layer gradient norms of the masked loss by float64 autograd."""
    model = tlm.TinyLM(cfg, params).double()
    inputs, targets, mask = (torch.as_tensor(np.asarray(a)) for a in batch)
    loss = tlm.masked_cross_entropy(model(inputs.long()), targets.long(), mask.double())
    loss.backward()
    grads = {k: p.grad.double() for k, p in model.named_parameters()}
    total = float(torch.sqrt(sum((g * g).sum() for g in grads.values())))
    layers = [float(torch.sqrt(sum((g * g).sum() for k, g in grads.items() if k.startswith(f"{name}.layer."))))
              for name in layer_names(cfg)]
    return total, layers


@pytest.mark.parametrize("lm", [tlm, mlm], ids=["torch", "mlx"])
def test_large_finite_gradients_are_not_reported_as_nonfinite(lm):
    """Gradients near 1e18 are finite in float32, but their squares are not: the step must
    keep them (no NaN/Inf event, update applied) and report the float64 autograd norm."""
    cfg = LMConfig(vocab=11, dim=8, n_layers=1, n_heads=2, seq_len=4, variant="residual", norm="none", arch="mlp")
    params = init_lm_params(cfg)
    params["embed.weight"] = params["embed.weight"] * np.float32(1e21)
    batch = TaskStream("incrementing", vocab=11, seq_len=4, batch_size=2, seed=0).batch(0)
    total, layers = _float64_grad_norms(cfg, params, batch)
    assert np.isfinite(total) and total > 1e19  # the squares overflow float32
    out = lm.Trainer(cfg, params).step(*batch, lr=1e-3)
    assert out["nonfinite_grad_tensors"] == 0 and not out["skipped"]
    assert out["grad_norm"] == pytest.approx(total, rel=1e-4)
    np.testing.assert_allclose(out["layer_grad_norm"], layers, rtol=1e-4)


@pytest.mark.parametrize("lm", [tlm, mlm], ids=["torch", "mlx"])
def test_nan_and_zero_gradients_are_still_told_apart(lm):
    """A NaN gradient is still a non-finite tensor; an all-zero gradient has norm 0."""
    cfg = LMConfig(vocab=7, dim=4, n_layers=1, n_heads=1, seq_len=3, variant="mhc", n=2)
    params = init_lm_params(cfg)
    batch = TaskStream("incrementing", vocab=7, seq_len=3, batch_size=2, seed=0).batch(0)
    total, _ = _float64_grad_norms(cfg, params, batch)
    out = lm.Trainer(cfg, params).step(*batch, lr=1e-3)
    assert out["grad_norm"] == pytest.approx(total, rel=1e-4) and out["nonfinite_grad_tensors"] == 0
    params["head.weight"][0, 0] = np.nan
    out = lm.Trainer(cfg, params).step(*batch, lr=1e-3)
    assert out["skipped"] and out["nonfinite_grad_tensors"] > 0
