"""The torch and MLX TinyLMs against the numpy float64 oracle (tests/sweep/sweep_oracle.py) and
against each other, on one set of weights from mhc_core.experiments.lm_config.init_lm_params.

Tolerances (float32 models vs float64 oracle): logits agree to ~1e-5 relative to their
scale. Training curves: the backends' Adam runs differ only by float32 rounding, but Adam
divides each gradient by its own running RMS, so a gradient entry that is ~0 (rounding-
sized) is pushed by up to lr in either direction; that and the rounding of the loss itself
keep the first few losses within ~1e-5 relative (measured 1e-6 at these sizes), growing
slowly with steps, so the check stops after 5 steps.
"""
import numpy as np
import pytest

from mhc_core.experiments.lm_config import LMConfig, init_lm_params, lm_param_shapes
from mhc_core.experiments.tasks import TaskStream

import sweep_oracle  # tests/sweep is on pytest's sys.path (rootdir import mode)

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")
tlm = pytest.importorskip("mhc_core_torch.lm")
mlm = pytest.importorskip("mhc_core_mlx.lm")

VARIANTS = ("residual", "hc", "mhc", "mhc-lite", "history")


def _cfg(variant, **kw):
    base = dict(vocab=13, dim=16, n_layers=2, n_heads=2, seq_len=8, variant=variant, n=3,
                phi_std=0.05, seed=3)  # phi != 0 so the coefficients differ per token
    base.update(kw)
    return LMConfig(**base)


def _tokens(cfg, batch=3):
    return TaskStream("copy", vocab=cfg.vocab, seq_len=cfg.seq_len, batch_size=batch, seed=5).batch(0)[0]


def _close(got, want, rtol, case):
    err = np.abs(got - want) / (np.abs(want).max() + 1e-30)
    i = np.unravel_index(np.argmax(err), err.shape)
    assert err[i] < rtol, f"[{case}] worst element {i}: got {got[i]!r}, want {want[i]!r} (rel err {err[i]:.2e})"


@pytest.mark.parametrize("variant", VARIANTS)
def test_same_parameter_names_and_shapes(variant):
    cfg = _cfg(variant)
    want = lm_param_shapes(cfg)
    got_t = {k: tuple(v.shape) for k, v in tlm.TinyLM(cfg).state_dict().items()}
    got_m = {k: tuple(v.shape) for k, v in mlm.module_state(mlm.TinyLM(cfg)).items()}
    assert got_t == want, sorted(set(got_t) ^ set(want))
    assert got_m == want, sorted(set(got_m) ^ set(want))


@pytest.mark.parametrize("variant", VARIANTS)
def test_logits_match_numpy_oracle_on_both_backends(variant):
    cfg = _cfg(variant)
    params = init_lm_params(cfg)
    x = _tokens(cfg)
    want = sweep_oracle.logits(cfg, params, x)
    got_t = tlm.TinyLM(cfg, params)(torch.as_tensor(x, dtype=torch.long)).detach().numpy()
    got_m = np.array(mlm.TinyLM(cfg, params)(mx.array(x)))
    _close(got_t.astype(np.float64), want, 1e-5, f"torch-{variant}")
    _close(got_m.astype(np.float64), want, 1e-5, f"mlx-{variant}")
    _close(got_t, got_m, 1e-5, f"torch-vs-mlx-{variant}")


@pytest.mark.parametrize("variant", VARIANTS)
def test_res_matrices_agree_across_backends(variant):
    if variant == "history":
        pytest.skip("the history variant has no res matrices (test_history_lm_* below)")
    cfg = _cfg(variant)
    params = init_lm_params(cfg)
    x = _tokens(cfg)
    rt = tlm.TinyLM(cfg, params).res_matrices(x, rows=2)
    rm = mlm.TinyLM(cfg, params).res_matrices(x, rows=2)
    assert len(rt) == len(rm) == 2 * cfg.n_layers
    for l, (a, b) in enumerate(zip(rt, rm)):
        assert a.shape == (2, cfg.seq_len, cfg.n, cfg.n)
        _close(a, b, 1e-5, f"{variant}-layer{l}")
    if variant == "residual":
        assert all(np.all(r == 1.0) for r in rt)


@pytest.mark.parametrize("variant", VARIANTS)
def test_training_loss_curves_match_across_backends(variant):
    cfg = _cfg(variant)
    params = init_lm_params(cfg)
    curves, grads = [], []
    for lm in (tlm, mlm):
        trainer = lm.Trainer(cfg, params)
        data = TaskStream("incrementing", vocab=cfg.vocab, seq_len=cfg.seq_len, batch_size=4, seed=1)
        outs = [trainer.step(*data.next(), lr=3e-3, record_rows=0) for _ in range(5)]
        curves.append(np.array([o["loss"] for o in outs]))
        grads.append(np.array(outs[0]["layer_grad_norm"] + [outs[0]["grad_norm"], outs[0]["mixing_grad_norm"]]))
    _close(curves[0], curves[1], 1e-5, f"loss-{variant}")
    _close(grads[0], grads[1], 1e-5, f"step0-grad-norms-{variant}")
    assert curves[0][-1] < curves[0][0]  # it trains


def _history_params(cfg, seed=0):
    """init_lm_params with the skip logits (and gates) moved off the identity init."""
    rng = np.random.default_rng(seed)
    params = init_lm_params(cfg)
    for k in params:
        if k.endswith((".logits", ".gate")):
            params[k] = (params[k] + rng.normal(0.0, 2.0, params[k].shape)).astype(np.float32)
    return params


@pytest.mark.parametrize("gate", [False, True], ids=["nogate", "gate"])
@pytest.mark.parametrize("history", [1, 3])
def test_history_lm_matches_oracle_with_mixed_skips(history, gate):
    cfg = _cfg("history", n_layers=3, history=history, history_gate=gate)
    params = _history_params(cfg)
    x = _tokens(cfg)
    want = sweep_oracle.logits(cfg, params, x)
    got_t = tlm.TinyLM(cfg, params)(torch.as_tensor(x, dtype=torch.long)).detach().numpy()
    got_m = np.array(mlm.TinyLM(cfg, params)(mx.array(x)))
    _close(got_t.astype(np.float64), want, 1e-5, f"torch-history-K{history}")
    _close(got_m.astype(np.float64), want, 1e-5, f"mlx-history-K{history}")


def test_history_detach_cuts_the_skip_gradient_on_both_backends():
    """detach_history: the first block's gradient no longer gets the skip path; both
    backends give the same first-step gradient norms."""
    norms = {}
    for detach in (False, True):
        cfg = _cfg("history", n_layers=4, history=2, detach_history=detach)
        params = init_lm_params(cfg)
        per_backend = []
        for lm in (tlm, mlm):
            data = TaskStream("incrementing", vocab=cfg.vocab, seq_len=cfg.seq_len, batch_size=4, seed=1)
            out = lm.Trainer(cfg, params).step(*data.next(), lr=1e-3)
            per_backend.append(np.array(out["layer_grad_norm"]))
        _close(per_backend[0], per_backend[1], 1e-4, f"grad-norms-detach{detach}")
        norms[detach] = per_backend[0]
    ratio = lambda g: g[0] / g[-1]  # noqa: E731
    assert ratio(norms[True]) < 0.5 * ratio(norms[False])
    np.testing.assert_allclose(norms[True][-1], norms[False][-1], rtol=1e-4)  # the last layer is unaffected


def test_history_report_is_the_composite_of_the_skip_weights():
    from mhc_core.experiments.lm_config import history_report, history_weights_of
    import mhc_core

    cfg = _cfg("history", n_layers=3, history=2, history_gate=True)
    params = _history_params(cfg, seed=4)
    weights = history_weights_of(cfg, params)
    report = history_report(cfg, params)
    c = [1.0]
    for w in weights:  # x_{l+1} = sum_j w_j x_j over the last k states, f = 0
        c.append(sum(wj * cj for wj, cj in zip(w, c[-len(w):])))
    got = [r["composite_forward_gain"]["max"] for r in report]
    np.testing.assert_allclose(got, np.abs(c[1:]), rtol=1e-12)
    assert all(r["forward_gain"]["max"] == pytest.approx(float(np.abs(w).sum())) for r, w in zip(report, weights))
    assert mhc_core.history_composite(weights, cfg.history)[-1] == pytest.approx(got[-1])
