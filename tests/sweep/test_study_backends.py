"""Torch and MLX on the depth study's tasks and conditions: from the same weights they give
the same first-step held-out loss (each to the numpy float64 oracle, tests/sweep/sweep_oracle.py,
and to each other; float32 models, rel 1e-5), the same held-out accuracy, and the same first
training step."""
import numpy as np
import pytest

from mhc_core.experiments.data import make_stream
from mhc_core.experiments.lm_config import LMConfig, init_lm_params, lm_param_shapes

import sweep_oracle  # tests/sweep is on pytest's sys.path (rootdir import mode)

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")
pytest.importorskip("sklearn")
tlm = pytest.importorskip("mhc_core_torch.lm")
mlm = pytest.importorskip("mhc_core_mlx.lm")

CASES = [  # (task, arch, norm, variant)
    ("digits", "transformer", "pre", "mhc"), ("digits", "transformer", "post", "hc"),
    ("digits", "mlp", "none", "mhc"), ("text", "transformer", "pre", "hc"), ("text", "transformer", "none", "mhc"),
    ("text", "mlp", "post", "residual"), ("copy", "transformer", "post", "mhc"), ("incrementing", "mlp", "pre", "hc"),
    ("digits", "transformer", "post", "history"), ("text", "mlp", "none", "mhc-lite"),
    ("incrementing", "mlp", "post", "history"),
]


def _setup(task, arch, norm, variant):
    data = make_stream(task, vocab=13, seq_len=8, batch_size=4, seed=1, patch=2 if arch == "transformer" else 8,
                       eval_size=24)
    extra = (dict(inputs="patches", patch_dim=data.patch_dim, seq_len=data.tokens, vocab=10) if task == "digits"
             else dict(seq_len=8, vocab=256 if task == "text" else 13))
    cfg = LMConfig(dim=16, n_layers=2, n_heads=2, variant=variant, n=3, phi_std=0.05, seed=3, arch=arch, norm=norm,
                   **extra)
    return cfg, data


@pytest.mark.parametrize("task, arch, norm, variant", CASES)
def test_first_step_eval_loss_same_on_both_backends_and_the_oracle(task, arch, norm, variant):
    cfg, data = _setup(task, arch, norm, variant)
    params = init_lm_params(cfg)
    eval_set = data.eval_set()
    want = sweep_oracle.eval_loss(cfg, params, *eval_set)
    got = {name: lm.Trainer(cfg, params).evaluate(*eval_set, chunk=10) for name, lm in (("torch", tlm), ("mlx", mlm))}
    case = f"{task}-{arch}-{norm}-{variant}"
    for name, ev in got.items():
        assert abs(ev["eval_loss"] - want) <= 1e-5 * abs(want), f"[{case}] {name} {ev['eval_loss']!r} oracle {want!r}"
    assert abs(got["torch"]["eval_loss"] - got["mlx"]["eval_loss"]) <= 1e-5 * abs(want), case
    # accuracy: argmax of the oracle's logits (float32 ties are not expected at these sizes)
    logits = sweep_oracle.logits(cfg, params, eval_set[0])
    hit = (logits.argmax(-1) == eval_set[1]).astype(float)
    want_acc = hit.mean() if hit.ndim == 1 else (hit * eval_set[2]).sum() / (eval_set[2].sum() * hit.shape[0])
    assert got["torch"]["eval_accuracy"] == pytest.approx(want_acc) and got["mlx"]["eval_accuracy"] == pytest.approx(want_acc)


@pytest.mark.parametrize("task, arch, norm, variant", CASES[:4])
def test_same_parameters_and_first_training_step(task, arch, norm, variant):
    cfg, data = _setup(task, arch, norm, variant)
    params = init_lm_params(cfg)
    assert {k: tuple(v.shape) for k, v in tlm.TinyLM(cfg).state_dict().items()} == lm_param_shapes(cfg)
    assert {k: tuple(v.shape) for k, v in mlm.module_state(mlm.TinyLM(cfg)).items()} == lm_param_shapes(cfg)
    outs = [lm.Trainer(cfg, params).step(*data.batch(0), lr=1e-3, record_rows=1) for lm in (tlm, mlm)]
    assert len(outs[0]["layer_inputs"]) == len(outs[1]["layer_inputs"]) == cfg.n_mixing_layers
    want = float(sweep_oracle.eval_loss(cfg, params, *data.batch(0)))
    for o in outs:
        assert abs(o["loss"] - want) <= 1e-5 * want
    a, b = (np.array(o["layer_grad_norm"] + [o["grad_norm"]]) for o in outs)
    np.testing.assert_allclose(a, b, rtol=1e-4)
