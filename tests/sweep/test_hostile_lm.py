"""The depth sweep's tiny LMs and their data attacked: gradient norms of large but finite
gradients (against float64 autograd), numpy-integer seeds and sizes (against Python ints),
and analyze_model on a run whose every number is NaN."""
import json
import os
import re
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
def test_tiny_gradients_keep_their_norms(lm):
    """Layer gradients near 1e-22 are normal float32 numbers, but their squares underflow:
    the per-layer norms must still be the float64 autograd ones (not 0)."""
    cfg = LMConfig(vocab=11, dim=8, n_layers=2, n_heads=2, seq_len=4, variant="residual", norm="none", arch="mlp")
    params = init_lm_params(cfg)
    params["embed.weight"] = params["embed.weight"] * np.float32(1e-20)
    params["pos_embed.weight"] = params["pos_embed.weight"] * np.float32(1e-20)
    batch = TaskStream("incrementing", vocab=11, seq_len=4, batch_size=2, seed=0).batch(0)
    total, layers = _float64_grad_norms(cfg, params, batch)
    assert 0 < max(layers) < 1e-19  # each square underflows float32
    out = lm.Trainer(cfg, params).step(*batch, lr=1e-3)
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


NUMPY_INTS = [np.int64, np.int32, np.uint16]


@pytest.mark.parametrize("kind", NUMPY_INTS, ids=lambda k: k.__name__)
def test_numpy_integer_settings_give_the_python_int_model(kind):
    """Seeds and sizes drawn from numpy (e.g. np.arange) build the model a Python int
    builds: the same weights (np.int32 seed * 100_003 used to wrap around) and a config
    that writes to JSON (config.json of a run)."""
    sizes = dict(vocab=5, dim=4, n_layers=2, n_heads=2, mlp_ratio=2, seq_len=3, n=2, history=2, iters=3)
    want = LMConfig(seed=30000, **sizes)
    got = LMConfig(seed=kind(30000), **{k: kind(v) for k, v in sizes.items()})
    assert got == want and json.loads(got.to_json()) == json.loads(want.to_json())
    a, b = init_lm_params(got), init_lm_params(want)
    assert a.keys() == b.keys() and all(np.array_equal(a[k], b[k]) for k in a)
    floats = dict(init_std=0.1, norm_eps=1e-5, alpha_init=0.02, phi_std=0.01, res_logit_gap=3.0, rms_eps=1e-5)
    assert LMConfig(**{k: np.float32(v) for k, v in floats.items()}).to_json() == \
        LMConfig(**{k: float(np.float32(v)) for k, v in floats.items()}).to_json()


@pytest.mark.parametrize("task", ["incrementing", "copy", "text"])
def test_numpy_integer_seeds_and_sizes_give_the_same_stream(task):
    from mhc_core.experiments.data import make_stream

    kw = dict(vocab=7, seq_len=4, batch_size=3, seed=2, eval_size=5)
    want = make_stream(task, **kw)
    got = make_stream(task, **{k: np.int64(v) for k, v in kw.items()})
    for a, b in zip(want.batch(3) + want.eval_set(), got.batch(3) + got.eval_set()):
        np.testing.assert_array_equal(a, b)
    assert json.dumps(got.state()) == json.dumps(want.state())


@pytest.mark.parametrize("field, value", [("seed", -1), ("seed", 1.0), ("seed", True), ("init_std", float("nan")),
                                          ("init_std", -0.1), ("phi_std", float("inf")), ("scale_out_init", "no")])
def test_bad_lm_settings_are_named(field, value):
    with pytest.raises((ValueError, TypeError), match=rf"LMConfig\.{field} must be"):
        LMConfig(**{field: value})


def test_analyze_model_reads_a_run_whose_numbers_are_all_nan(tmp_path, monkeypatch):
    """A sweep run that was NaN from its first step (metrics.jsonl writes NaN as 'nan'):
    analyze_model tabulates it, NaN where the log has NaN, instead of a format error."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    monkeypatch.syspath_prepend(os.path.join(root, "scripts"))
    import analyze_model
    import depth_sweep
    from nan_runs import poison_hc_embedding

    poison_hc_embedding(monkeypatch, depth_sweep)
    out = tmp_path / "sweep"
    assert depth_sweep.main(["--backend", "torch", "--variants", "hc", "--depths", "1", "--steps", "2", "--dim", "8",
                             "--heads", "2", "--seq-len", "4", "--batch", "2", "--vocab", "5", "--n", "2",
                             "--log-every", "1", "--no-progress", "--no-plots", "--out", str(out)]) == 0
    run = out / "hc-L1"
    last = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()][-1]
    assert last["per_layer"]["forward_gain_max"] == ["nan", "nan"]  # what the sweep logged
    assert analyze_model.main([str(run)]) == 0
    text = (run / "analysis" / "analysis.txt").read_text()
    rows = [line.split() for line in text.splitlines() if line.split()[:1] in (["0"], ["1"])]
    assert [r[:1] + r[1:] for r in rows] == [[str(l)] + ["nan"] * 5 for l in (0, 1)]


def test_ascii_heatmap_shows_nan_and_inf_cells():
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    sys.path.insert(0, os.path.join(root, "scripts"))
    from analysis_plots import ascii_heatmap

    h = np.array([[np.nan, 0.25], [np.inf, 1.0]])
    rows = ascii_heatmap(h).splitlines()
    for row, values in zip(rows, h):
        cells = row.split(":", 1)[1].split()
        assert [float(c.rstrip(" .:-=+*#%@?")) for c in cells] == pytest.approx(list(values), nan_ok=True)


@pytest.mark.parametrize("lm", [tlm, mlm], ids=["torch", "mlx"])
@pytest.mark.parametrize("bad", [5, -1, 1000])
def test_ids_outside_the_vocabulary_are_refused(lm, bad):
    """torch's embedding and cross-entropy raise on an id outside [0, vocab) (except the
    target -100, which it ignores); MLX gathers some row and trains on it. Both backends
    refuse such token ids and targets, naming the range."""
    cfg = LMConfig(vocab=5, dim=4, n_layers=1, n_heads=1, seq_len=3, variant="mhc", n=2)
    good, mask = np.array([[0, 1, 4]]), np.ones(3, np.float32)
    bad_ids = np.array([[0, bad, 1]])
    trainer = lm.Trainer(cfg)
    for inputs, targets, what in ((bad_ids, good, "token ids"), (good, bad_ids, "targets")):
        with pytest.raises(ValueError, match=rf"{what} must be in \[0, 5\) \(vocab 5\), got {bad}"):
            trainer.step(inputs, targets, mask, lr=1e-3)
        with pytest.raises(ValueError, match=rf"{what} must be in \[0, 5\) \(vocab 5\), got {bad}"):
            trainer.evaluate(inputs, targets, mask)
    with pytest.raises(ValueError, match=rf"token ids must be in \[0, 5\) \(vocab 5\), got {bad}"):
        trainer.model.res_matrices(bad_ids)
    assert np.isfinite(trainer.step(good, good, mask, lr=1e-3)["loss"])


def test_mlx_model_called_on_an_out_of_vocabulary_id_raises_like_torch():
    cfg = LMConfig(vocab=5, dim=4, n_layers=1, n_heads=1, seq_len=3, variant="mhc", n=2)
    with pytest.raises(IndexError):
        tlm.TinyLM(cfg)(torch.tensor([[0, 5, 1]]))
    with pytest.raises(ValueError, match=r"token ids must be in \[0, 5\) \(vocab 5\), got 5"):
        mlm.TinyLM(cfg)(mx.array([[0, 5, 1]]))


def test_sweep_stats_counts_numpy_numbers_like_python_numbers():
    """Rows whose metrics are numpy scalars (np.float32 losses, np.int64 counts) used to be
    dropped from the mean as if they were NaN. Reference: numpy on the Python floats."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    sys.path.insert(0, os.path.join(root, "scripts"))
    import sweep_stats

    values = [np.float32(1.5), np.float64(2.25), np.int64(3), float("nan"), None]
    got = sweep_stats.spread(values)
    plain = [1.5, 2.25, 3.0]
    assert got["n"] == 3 and got["mean"] == pytest.approx(np.mean(plain)) and got["std"] == pytest.approx(np.std(plain, ddof=1))
    assert json.loads(json.dumps(got["values"][:3])) == plain  # summary.json can hold them
    rows = [{"variant": "mhc", "depth": 1, "lr": 1e-3, "seed": s, "diverged": False, "eval_loss_final": np.float32(v)}
            for s, v in enumerate((0.5, 0.75))]
    (group,) = sweep_stats.aggregate(rows)
    assert group["eval_loss_final"]["mean"] == pytest.approx(0.625) and group["eval_loss_final"]["n"] == 2


def test_mlx_model_compiled_whole_still_runs_and_matches_eager():
    """The id check cannot evaluate inside mx.compile; a compiled TinyLM still gives the eager logits."""
    cfg = LMConfig(vocab=5, dim=4, n_layers=1, n_heads=1, seq_len=3, variant="mhc", n=2, phi_std=0.1)
    model = mlm.TinyLM(cfg)
    tokens = mx.array([[0, 1, 4], [3, 2, 1]])
    compiled = mx.compile(model, inputs=model.state)
    np.testing.assert_allclose(np.array(compiled(tokens)), np.array(model(tokens)), rtol=1e-6, atol=1e-7)


def test_mask_as_a_list_gives_the_numpy_mask_loss_on_both_backends():
    cfg = LMConfig(vocab=7, dim=8, n_layers=1, n_heads=2, seq_len=4, variant="mhc", n=2, phi_std=0.1)
    params = init_lm_params(cfg)
    inputs, targets, mask = TaskStream("copy", vocab=7, seq_len=4, batch_size=3, seed=0).batch(0)
    import sweep_oracle

    want = sweep_oracle.eval_loss(cfg, params, inputs, targets, mask)
    for lm in (tlm, mlm):
        assert lm.Trainer(cfg, params).step(inputs, targets, mask.tolist(), lr=1e-3)["loss"] == pytest.approx(want, rel=1e-5)


@pytest.mark.parametrize("lm", [tlm, mlm], ids=["torch", "mlx"])
def test_a_per_row_mask_is_refused_not_divided_by_the_batch_twice(lm):
    """The mask is one weight per position, [T]; a [B, T] mask broadcast against the loss and
    the mean divided by B * mask.sum(), B times too small."""
    cfg = LMConfig(vocab=7, dim=8, n_layers=1, n_heads=2, seq_len=4, variant="mhc", n=2)
    inputs, targets, mask = TaskStream("copy", vocab=7, seq_len=4, batch_size=3, seed=0).batch(0)
    rows = np.tile(mask, (3, 1))
    trainer = lm.Trainer(cfg)
    with pytest.raises(ValueError, match=r"mask must have shape \[T\] = \[4\] \(one weight per position\), got \[3, 4\]"):
        trainer.step(inputs, targets, rows, lr=1e-3)
    with pytest.raises(ValueError, match=r"mask must have shape \[T\] = \[4\] \(one weight per position\), got \[3, 4\]"):
        trainer.evaluate(inputs, targets, rows)


@pytest.mark.parametrize("lm, array", [(tlm, torch.as_tensor), (mlm, mx.array)], ids=["torch", "mlx"])
def test_patch_inputs_of_the_wrong_shape_are_named(lm, array):
    """An image with no patch tokens used to give NaN class logits (mean pooling over
    nothing); a wrong patch size or a missing axis failed inside a matmul."""
    cfg = LMConfig(vocab=10, dim=4, n_layers=1, n_heads=1, seq_len=4, variant="mhc", n=2, inputs="patches", patch_dim=3)
    model = lm.TinyLM(cfg)
    for shape, match in (((2, 0, 3), r"patches must be \[B, T, 3\] with 1 <= T <= 4, got \[2, 0, 3\]"),
                         ((2, 4, 2), r"patches must be \[B, T, 3\] with 1 <= T <= 4, got \[2, 4, 2\]"),
                         ((2, 5, 3), r"patches must be \[B, T, 3\] with 1 <= T <= 4, got \[2, 5, 3\]"),
                         ((4, 3), r"patches must be \[B, T, 3\] with 1 <= T <= 4, got \[4, 3\]")):
        with pytest.raises(ValueError, match=match):
            model(array(np.zeros(shape, np.float32)))
    logits = model(array(np.ones((2, 4, 3), np.float32)))
    assert np.isfinite(logits.detach().numpy() if hasattr(logits, "detach") else np.array(logits)).all()


@pytest.mark.parametrize("arch", ["transformer", "mlp"])
@pytest.mark.parametrize("lm, array", [(tlm, torch.as_tensor), (mlm, mx.array)], ids=["torch", "mlx"])
def test_token_ids_of_another_rank_are_named(lm, array, arch):
    """Tokens [T] (one sequence without its batch axis, or the model under mx.vmap), a
    scalar, or [B, T, X]: one ValueError naming [B, T], not an IndexError from the shape
    or (arch 'mlp', no attention to trip on) logits with an extra axis."""
    cfg = LMConfig(vocab=10, dim=4, n_layers=1, n_heads=1, seq_len=4, variant="mhc", n=2, arch=arch)
    model = lm.TinyLM(cfg)
    for shape in ((4,), (), (2, 4, 4)):
        with pytest.raises(ValueError, match=r"token ids must be \[B, T\] with T <= 4, got " + re.escape(str(list(shape)))):
            model(array(np.zeros(shape, np.int32)))


@pytest.mark.parametrize("task", ["digits", "text", "copy"])
def test_analyze_model_runs_a_saved_sweep_model_on_a_batch_of_its_task(task, tmp_path, monkeypatch):
    """A run folder with weights is rebuilt and run on a batch of its own task: digits
    (float patches) and text used to be refused ('task must be one of (incrementing, copy)').
    Reference: the model's res matrices on that batch through mhc_core.gain_report."""
    if task == "digits":
        pytest.importorskip("sklearn")
    from safetensors.numpy import save_file

    import mhc_core
    from mhc_core.experiments.data import make_stream

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    monkeypatch.syspath_prepend(os.path.join(root, "scripts"))
    import analyze_model
    import depth_sweep

    out = tmp_path / "sweep"
    shape = [] if task == "digits" else ["--seq-len", "4"] + (["--vocab", "5"] if task == "copy" else [])
    assert depth_sweep.main(["--backend", "torch", "--task", task, "--variants", "mhc", "--depths", "1", "--steps", "1",
                             "--dim", "8", "--heads", "2", "--batch", "2", "--n", "2", "--eval-size", "3",
                             "--no-progress", "--no-plots", "--out", str(out), *shape]) == 0
    run = out / "mhc-L1"
    config = json.loads((run / "config.json").read_text())
    cfg = LMConfig(**{**config["model"], "phi_std": 0.3})  # coefficients that differ per token
    params = init_lm_params(cfg)
    save_file(params, str(run / "model.safetensors"))
    assert analyze_model.main([str(run), "--batch", "3", "--seed", "4"]) == 0
    steps = json.loads((run / "analysis" / "analysis.json").read_text())["steps"]
    d = config["data"]
    inputs = make_stream(task, vocab=cfg.vocab, seq_len=d["seq_len"], batch_size=3, seed=4,
                         patch=d.get("patch", 2)).batch(0)[0]
    report = mhc_core.gain_report(tlm.TinyLM(cfg, params).res_matrices(inputs))
    assert len(steps) == len(report) == 2
    for s, r in zip(steps, report):
        assert s["forward_gain"] == pytest.approx(r["forward_gain"]["max"], rel=1e-6)
        assert s["composite_backward_gain"] == pytest.approx(r["composite_backward_gain"]["max"], rel=1e-6)
        assert s["identity_distance"] == pytest.approx(r["identity_distance"]["mean"], rel=1e-6)


@pytest.mark.parametrize("task", ["incrementing", "copy"])
def test_a_training_stream_never_draws_the_held_out_rows_of_its_seed(task):
    """Held-out rows of a synthetic task come from SYNTHETIC_EVAL_SEED; a training stream with
    that seed drew exactly those rows as its first batch."""
    from mhc_core.experiments.data import SYNTHETIC_EVAL_SEED, make_stream

    held = make_stream(task, vocab=50, seq_len=8, batch_size=4, seed=0).eval_set()[0]
    clash = TaskStream(task, vocab=50, seq_len=8, batch_size=4, seed=SYNTHETIC_EVAL_SEED).batch(0)[0]
    np.testing.assert_array_equal(clash, held[:4])  # why that seed cannot train
    with pytest.raises(ValueError, match=rf"training seed {SYNTHETIC_EVAL_SEED} is SYNTHETIC_EVAL_SEED"):
        make_stream(task, vocab=50, seq_len=8, batch_size=4, seed=SYNTHETIC_EVAL_SEED)


@pytest.mark.parametrize("seeds", [["--seed", "10006"], ["--seeds", "0", "10006"]])
def test_depth_sweep_seed_whose_data_is_the_held_out_set_is_a_usage_error(seeds, tmp_path, capsys):
    """depth_sweep's training data use --seed + 1: --seed 10006 trained on the held-out rows,
    and within --seeds it would have stopped the sweep after the earlier seeds trained."""
    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    sys.path.insert(0, os.path.join(root, "scripts"))
    import depth_sweep

    out = tmp_path / "never"
    with pytest.raises(SystemExit) as exc:
        depth_sweep.main(["--backend", "torch", "--depths", "1", "--steps", "1", "--dim", "8", "--heads", "2",
                          "--seq-len", "4", "--batch", "2", "--vocab", "5", "--no-progress", "--no-plots",
                          "--out", str(out), *seeds])
    assert exc.value.code == 2
    assert "--seed 10006: training seed 10007 is SYNTHETIC_EVAL_SEED" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("lm", [tlm, mlm], ids=["torch", "mlx"])
def test_an_empty_batch_or_an_all_zero_mask_is_refused_not_a_nan_event(lm):
    """The loss of no rows / no weighted position is 0 / 0: torch logged it as a NaN/Inf
    event (update skipped), MLX failed in logsumexp, evaluate divided by zero."""
    cfg = LMConfig(vocab=5, dim=4, n_layers=1, n_heads=1, seq_len=3, variant="mhc", n=2)
    trainer = lm.Trainer(cfg)
    none, ones, zeros = np.zeros((0, 3), np.int64), np.ones(3, np.float32), np.zeros(3, np.float32)
    for call in (lambda *a: trainer.step(*a, lr=1e-3), trainer.evaluate):
        with pytest.raises(ValueError, match=r"targets must hold at least one row, got shape \[0, 3\]"):
            call(none, none, ones)
        with pytest.raises(ValueError, match=r"mask must weight at least one position, got \[0.0, 0.0, 0.0\]"):
            call(np.zeros((2, 3), np.int64), np.zeros((2, 3), np.int64), zeros)


def test_stream_divergence_of_nan_streams_is_nan_not_identical():
    """divergence = 1 - mean off-diagonal cosine similarity (floored at 1e-16 for the log
    axis); NaN similarities (a NaN forward) read 1e-16, 'identical copies'."""
    from types import SimpleNamespace

    root = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    sys.path.insert(0, os.path.join(root, "scripts"))
    from analysis_plots import divergence

    c = np.array([[1.0, 0.25, 0.5], [0.25, 1.0, 0.75], [0.5, 0.75, 1.0]])
    assert divergence(SimpleNamespace(stream_cos=c.tolist())) == pytest.approx(1 - c[~np.eye(3, dtype=bool)].mean())
    assert divergence(SimpleNamespace(stream_cos=np.ones((3, 3)).tolist())) == 1e-16
    assert np.isnan(divergence(SimpleNamespace(stream_cos=np.full((3, 3), np.nan).tolist())))


@pytest.mark.parametrize("lm", [tlm, mlm], ids=["torch", "mlx"])
@pytest.mark.parametrize("clip", [float("nan"), -1.0, float("inf")])
def test_trainer_refuses_a_grad_clip_that_is_not_a_finite_number_ge_0(lm, clip):
    """grad_clip = nan switched clipping off in silence (nan > 0 is False)."""
    cfg = LMConfig(vocab=7, dim=4, n_layers=1, n_heads=1, seq_len=3)
    with pytest.raises(ValueError, match="grad_clip must be a finite number >= 0"):
        lm.Trainer(cfg, init_lm_params(cfg), grad_clip=clip)
