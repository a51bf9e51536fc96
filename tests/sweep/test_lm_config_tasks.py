"""LMConfig / init_lm_params / grad_norms and the synthetic tasks, checked by hand."""
from types import SimpleNamespace

import numpy as np
import pytest

from mhc_core.experiments.lm_config import LMConfig, grad_norms, init_lm_params, layer_names, lm_param_shapes, lr_at, mixing_matrices
from mhc_core.experiments.tasks import TaskStream, loss_mask, shard_batch


def test_residual_forces_one_stream_and_bad_sizes_are_named():
    assert LMConfig(variant="residual", n=4).n == 1
    with pytest.raises(ValueError, match="dim .* divisible by n_heads"):
        LMConfig(dim=10, n_heads=4)
    with pytest.raises(ValueError, match="LMConfig.n_layers must be an integer >= 1"):
        LMConfig(n_layers=0)
    with pytest.raises(ValueError, match="variant must be one of"):
        LMConfig(variant="mhc2")
    with pytest.raises(ValueError, match=r"unknown LMConfig fields \['depth'\]"):
        LMConfig.from_dict({"depth": 3})
    cfg = LMConfig(n_layers=3, variant="hc")
    assert LMConfig.from_dict(cfg.as_dict()) == cfg


def test_init_shares_layer_weights_across_variants_and_matches_shapes():
    base = dict(vocab=11, dim=8, n_layers=2, n_heads=2, seq_len=5, seed=7)
    res, mhc = init_lm_params(LMConfig(variant="residual", **base)), init_lm_params(LMConfig(variant="mhc", n=3, **base))
    assert set(mhc) - set(res) == {f"{l}.{k}" for l in layer_names(LMConfig(**base)) for k in ("phi", "bias", "alpha")}
    for k in res:  # same seed -> the same embeddings and sub-layer weights whatever the variant
        np.testing.assert_array_equal(res[k], mhc[k], err_msg=k)
    cfg = LMConfig(variant="mhc", n=3, **base)
    assert {k: v.shape for k, v in mhc.items()} == lm_param_shapes(cfg)
    assert mhc["blocks.0.attn.phi"].shape == (3 * 8, 3 * 3 + 2 * 3) and not mhc["blocks.0.attn.phi"].any()
    # GPT-2 scaled output projections: std 0.02 / sqrt(2 * n_layers) = 0.01
    assert mhc["blocks.1.mlp.layer.fc2.weight"].std() == pytest.approx(0.01, rel=0.3)


def test_mixing_matrices_at_init_are_the_bias_matrices():
    """phi = 0: res = sinkhorn(b_res) (mhc) or exactly I (hc) for every token; 1x1 ones (residual)."""
    base = dict(vocab=11, dim=8, n_layers=1, n_heads=2, seq_len=5)
    x = [np.random.default_rng(0).normal(size=(2, 5, 3, 8))] * 2
    hc = mixing_matrices(LMConfig(variant="hc", n=3, **base), x, init_lm_params(LMConfig(variant="hc", n=3, **base)))
    np.testing.assert_array_equal(hc[1], np.broadcast_to(np.eye(3), (2, 5, 3, 3)))
    mhc = mixing_matrices(LMConfig(n=3, **base), x, init_lm_params(LMConfig(n=3, **base)))
    diag = 1.0 / (1.0 + 2.0 * np.exp(-4.0))  # res_logit_gap 4: softmax row of [0, -4, -4]
    np.testing.assert_allclose(np.diagonal(mhc[0], axis1=-2, axis2=-1), diag, atol=1e-5)
    res = mixing_matrices(LMConfig(variant="residual", **base), [a[..., :1, :] for a in x], {})
    assert all(r.shape == (2, 5, 1, 1) and np.all(r == 1.0) for r in res)


def test_grad_norms_assign_each_gradient_to_its_layer():
    layers = ["blocks.0.attn", "blocks.0.mlp"]
    names = ["embed.weight", "blocks.0.attn.layer.qkv.weight", "blocks.0.attn.layer.proj.weight",
             "blocks.0.attn.phi", "blocks.0.mlp.layer.fc1.weight", "blocks.0.mlp.bias", "head.weight"]
    sq = [1.0, 9.0, 16.0, 4.0, 36.0, 0.25, 2.75]
    out = grad_norms(names, sq, layers)
    assert out["layer_grad_norm"] == [5.0, 6.0]  # sqrt(9 + 16), sqrt(36)
    assert out["mixing_grad_norm"] == pytest.approx(np.sqrt(4.25))
    assert out["grad_norm"] == pytest.approx(np.sqrt(69.0)) and out["nonfinite_grad_tensors"] == 0
    assert grad_norms(names, [np.nan, np.inf] + sq[2:], layers)["nonfinite_grad_tensors"] == 2


def test_lr_warmup():
    assert [lr_at(s, 1.0, 4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    assert lr_at(0, 0.1) == 0.1


def test_incrementing_task_by_hand_and_resumable():
    s = TaskStream("incrementing", vocab=5, seq_len=6, batch_size=3, seed=2)
    x, y, m = s.next()
    for row_x, row_y in zip(x, y):
        np.testing.assert_array_equal(row_x, (row_x[0] + np.arange(6)) % 5)
        np.testing.assert_array_equal(row_y, (row_x + 1) % 5)
    assert x.dtype == np.int32 and m.tolist() == [1.0] * 6
    batches = [s.next() for _ in range(3)]
    resumed = TaskStream(**{**s.state(), "position": 2})
    np.testing.assert_array_equal(resumed.next()[0], batches[1][0])
    assert resumed.position == 3


def test_copy_task_repeats_and_masks_the_first_half():
    s = TaskStream("copy", vocab=50, seq_len=7, batch_size=4, seed=0)
    x, y, m = s.batch(0)
    seq = np.concatenate([x, y[:, -1:]], axis=1)  # the length-8 sequence
    np.testing.assert_array_equal(seq[:, :4], seq[:, 4:])
    assert m.tolist() == [0, 0, 0, 1, 1, 1, 1]  # target j = seq[j+1] is a copy from j+1 >= 4
    assert loss_mask("copy", 8).tolist() == [0, 0, 0, 0, 1, 1, 1, 1]  # length 9: copy of 5 starts at 5
    with pytest.raises(ValueError, match="task must be one of"):
        TaskStream("reverse")


def test_shard_batch_slices_tile_the_global_batch_and_refuse_uneven_splits():
    x, y = np.arange(24).reshape(6, 4), np.arange(6)
    parts = [shard_batch((x, y), SimpleNamespace(rank=r, world=3)) for r in range(3)]
    assert [p[0].shape for p in parts] == [(2, 4)] * 3
    np.testing.assert_array_equal(np.concatenate([p[0] for p in parts]), x)
    np.testing.assert_array_equal(np.concatenate([p[1] for p in parts]), y)
    with pytest.raises(ValueError, match="6 rows cannot be split evenly over 4 ranks"):
        shard_batch((x,), SimpleNamespace(rank=0, world=4))
