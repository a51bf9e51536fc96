"""The depth study's real data (mhc_core.experiments.data) and its model conditions, by hand:
patches against a naive loop, the fixed splits, batches as pure functions of (seed, index),
the missing-package error, and bad input named in the error."""
import sys

import numpy as np
import pytest

from mhc_core.experiments import data as D
from mhc_core.experiments.lm_config import LMConfig, init_lm_params, lm_param_shapes, layer_names
from mhc_core.sinkhorn import sinkhorn

pytest.importorskip("sklearn")


def test_patchify_matches_a_naive_loop():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 8, 8))
    for patch in (1, 2, 4, 8):
        got = D.patchify(images, patch)
        g = 8 // patch
        want = np.zeros((3, g * g, patch * patch))
        for n in range(3):
            for i in range(g):
                for j in range(g):
                    want[n, i * g + j] = images[n, i * patch:(i + 1) * patch, j * patch:(j + 1) * patch].reshape(-1)
        np.testing.assert_array_equal(got, want)
    with pytest.raises(ValueError, match="patch must be >= 1 and divide the image side 8, got 3"):
        D.patchify(images, 3)


def test_digits_split_is_fixed_disjoint_and_batches_are_pure():
    from sklearn.datasets import load_digits

    a = D.DataStream("digits", batch_size=5, seed=3, patch=4)
    b = D.DataStream("digits", batch_size=5, seed=3, patch=4)
    info = a.describe()
    assert (info["images"], info["train"], info["heldout"], info["eval_examples"]) == (1797, 1347, 450, 450)
    assert (a.vocab, a.tokens, a.patch_dim) == (10, 4, 16)
    x_tr, y_tr, x_te, y_te = (a._arrays[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    # held-out images are not training images (the digits set has no exact duplicates across this split)
    train_keys = {row.tobytes() for row in x_tr.reshape(len(x_tr), -1)}
    assert not any(row.tobytes() in train_keys for row in x_te.reshape(len(x_te), -1))
    # every example is a real digits image with its own label (patches back to the image)
    d = load_digits()
    img = x_te[0].reshape(2, 2, 4, 4).transpose(0, 2, 1, 3).reshape(8, 8) * 16
    k = int(np.flatnonzero((d.images == img).all(axis=(1, 2)))[0])
    assert d.target[k] == y_te[0]
    for i in (0, 7):  # a batch is a function of (seed, index) only
        for u, v in zip(a.batch(i), b.batch(i)):
            np.testing.assert_array_equal(u, v)
    assert not np.array_equal(a.batch(0)[0], a.batch(1)[0])
    x, y, _ = a.next()
    assert x.shape == (5, 4, 16) and x.dtype == np.float32 and y.shape == (5,) and a.position == 1
    assert 0.0 <= x.min() and x.max() <= 1.0
    np.testing.assert_array_equal(a.eval_set()[1], y_te)
    assert len(D.DataStream("digits", eval_size=100).eval_set()[1]) == 100


def test_text_split_windows_and_description():
    s = D.DataStream("text", seq_len=12, batch_size=4, seed=1, eval_size=10)
    info = s.describe()
    assert info["bytes"] == info["train_bytes"] + info["heldout_bytes"] and info["bytes"] > 100_000
    assert info["files"] and len(info["sha256"]) == 64 and info["eval_examples"] == 10
    corpus, _ = D.text_corpus()
    x, y, mask = s.batch(0)
    assert x.shape == y.shape == (4, 12) and mask.shape == (12,) and (mask == 1).all()
    np.testing.assert_array_equal(x[:, 1:], y[:, :-1])  # targets are the next bytes
    cut = info["train_bytes"]
    for row in x:  # training windows come from the first 90%
        assert bytes(row.astype(np.uint8)) in corpus[:cut]
    ex, ey, _ = s.eval_set()
    for row_x, row_y in zip(ex, ey):  # held-out windows from the last 10%
        window = bytes(row_x.astype(np.uint8)) + bytes(row_y[-1:].astype(np.uint8))
        assert window in corpus[cut:]
    assert s.vocab == 256 and s.tokens == 12


def test_synthetic_eval_set_is_held_out_seed():
    s = D.make_stream("incrementing", vocab=9, seq_len=6, batch_size=3, seed=1, eval_size=5)
    x, y, m = s.eval_set()
    assert x.shape == (5, 6) and ((x[:, 1:] - x[:, :-1]) % 9 == 1).all()
    assert s.describe()["eval_examples"] == 5


def test_missing_scikit_learn_names_the_package(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match="pip install scikit-learn"):
        D.load_digits_arrays()
    with pytest.raises(ImportError, match="scikit-learn"):
        D.DataStream("digits")


@pytest.mark.parametrize("kwargs, match", [
    (dict(task="mnist"), r"DataStream task must be one of \('digits', 'text'\), got 'mnist'"),
    (dict(task="text", batch_size=0), "DataStream.batch_size must be an integer >= 1, got 0"),
    (dict(task="text", eval_size=-1), "DataStream.eval_size must be an integer >= 0, got -1"),
    (dict(task="text", seq_len=10 ** 7), "longer than the held-out text"),
])
def test_bad_data_arguments_are_named(kwargs, match):
    with pytest.raises(ValueError, match=match):
        D.DataStream(**kwargs)


def test_make_stream_and_task_kind_refuse_unknown_tasks():
    with pytest.raises(ValueError, match="task must be one of .*'digits', 'text'.*got 'imagenet'"):
        D.make_stream("imagenet", vocab=4, seq_len=4, batch_size=2, seed=0)
    with pytest.raises(ValueError, match="task must be one of"):
        D.task_kind("imagenet")
    assert D.task_kind("digits") == "patches" and D.task_kind("text") == "tokens"


@pytest.mark.parametrize("field, value, match", [
    ("arch", "cnn", r"LMConfig.arch must be one of \('transformer', 'mlp'\), got 'cnn'"),
    ("norm", "layer", r"LMConfig.norm must be one of \('pre', 'post', 'none'\), got 'layer'"),
    ("inputs", "pixels", r"LMConfig.inputs must be one of \('tokens', 'patches'\), got 'pixels'"),
    ("res_init", "eye", r"LMConfig.res_init must be one of \('identity', 'seed002'\), got 'eye'"),
])
def test_bad_model_conditions_are_named(field, value, match):
    with pytest.raises(ValueError, match=match):
        LMConfig(**{field: value})
    with pytest.raises(ValueError, match="patch_dim must be an integer >= 1 for inputs 'patches', got 0"):
        LMConfig(inputs="patches")


def test_conditions_change_only_the_parameters_they_name():
    base = dict(vocab=10, dim=8, n_layers=3, n_heads=2, seq_len=4, variant="mhc", n=2)
    pre = lm_param_shapes(LMConfig(**base))
    post = lm_param_shapes(LMConfig(norm="post", **base))
    none = lm_param_shapes(LMConfig(norm="none", **base))
    norms = {k for k in pre if k.endswith("layer.norm.weight")}
    assert len(norms) == 6 and set(pre) - set(none) == norms | {"head_norm.weight"}
    assert set(post) - set(pre) == {f"{l}_norm.weight" for l in layer_names(LMConfig(**base))}
    mlp = LMConfig(arch="mlp", **base)
    assert layer_names(mlp) == ["blocks.0.mlp", "blocks.1.mlp", "blocks.2.mlp"] and mlp.n_mixing_layers == 3
    vit = lm_param_shapes(LMConfig(inputs="patches", patch_dim=16, **base))
    assert vit["patch_embed.weight"] == (8, 16) and "embed.weight" not in vit and vit["head.weight"] == (10, 8)
    # the default model's draws do not move when the options exist: same weights as before
    old = init_lm_params(LMConfig(**base))
    assert list(old) == list(pre)


def test_seed002_res_init():
    base = dict(vocab=10, dim=8, n_layers=1, n_heads=2, seq_len=4, n=4, res_init="seed002")
    hc = init_lm_params(LMConfig(variant="hc", **base))
    want = np.exp(2 * np.eye(4) - 1)
    np.testing.assert_allclose(hc["blocks.0.attn.bias"][8:].reshape(4, 4), want, rtol=1e-6)
    assert want.sum(1) == pytest.approx(np.e + 3 / np.e)  # 3.82: HC's per-layer growth
    mhc = init_lm_params(LMConfig(variant="mhc", **base))
    logits = mhc["blocks.0.mlp.bias"][8:].reshape(4, 4).astype(np.float64)
    np.testing.assert_allclose(logits - logits[0, 0], 2 * np.eye(4) - 2, atol=1e-6)  # softmax-equivalent to 2I - 1
    m = np.asarray(sinkhorn(logits, iters=20, eps=0.0))
    np.testing.assert_allclose(m.sum(0), 1, atol=1e-6)
    np.testing.assert_allclose(m.sum(1), 1, atol=1e-6)
