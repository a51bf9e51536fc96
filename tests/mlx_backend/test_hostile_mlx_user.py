"""The MLX backend used as a user would: defects found by a hostile review, each checked
against the numpy float64 oracle or the torch backend."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
pytest.importorskip("safetensors.numpy")

import mhc_core_mlx  # noqa: E402
from backend_registry.mlx_adapter import MLP  # noqa: E402
from mhc_core_mlx.training import checkpoint  # noqa: E402
from mlx_cases import TOL, assert_close, make_state, oracle_step  # noqa: E402


def _float64_mhc(state=None):
    with mx.stream(mx.cpu):
        module = mhc_core_mlx.MHC(MLP(4), 3, 4)
        module.set_dtype(mx.float64)
        if state is not None:
            mhc_core_mlx.load_state(module, state)
    return module


def test_float64_checkpoint_restores_float64_values(tmp_path):
    """A float64 model written by training.checkpoint and restored keeps float64 precision
    (not values rounded through float32 on the way in)."""
    state = make_state("mhc", "mlp", 3, 4, seed=5)
    src = _float64_mhc(state)
    tensors, meta = checkpoint.capture(src)
    store = checkpoint.CheckpointStore(str(tmp_path))
    store.save(1, tensors, meta)
    loaded = store.load_latest()
    dst = _float64_mhc()
    with mx.stream(mx.cpu):
        checkpoint.restore(dst, None, loaded.tensors, loaded.meta)
        restored = mhc_core_mlx.module_state(dst)
        for name, value in mhc_core_mlx.module_state(src).items():
            assert restored[name].dtype == np.float64, name
            np.testing.assert_array_equal(restored[name], value, err_msg=name)
        x = np.random.default_rng(2).normal(size=(2, 3, 4))
        out = np.array(dst(mx.array(x, dtype=mx.float64)))
    assert_close(out, oracle_step("mhc", "mlp", state, x), TOL["float64"], "float64 checkpoint")


def test_checkpoint_restore_refuses_a_model_of_other_shapes():
    """restore into a model whose parameters have the same names but other shapes raises
    and names them (as torch's load_state_dict does), instead of swapping the model's
    arrays for ones of the wrong shape and failing later in a forward."""
    src = mhc_core_mlx.MHC(MLP(4), 3, 4)
    dst = mhc_core_mlx.MHC(MLP(5), 3, 5)
    before = mhc_core_mlx.module_state(dst)
    tensors, meta = checkpoint.capture(src)
    with pytest.raises(ValueError, match="phi"):
        checkpoint.restore(dst, None, tensors, meta)
    after = mhc_core_mlx.module_state(dst)
    for name, value in before.items():
        np.testing.assert_array_equal(after[name], value, err_msg=name)


def test_seeded_stochastic_history_under_mx_compile_draws_fresh_noise():
    """HistorySequential(stochastic=True, seed=s) compiled with MLX's state pattern gives the
    eager model's sequence of Gumbel samples: the split keys live in model.state (they were
    Python state, and every compiled call replayed the first call's noise)."""
    def build():
        layers = [nn.Linear(4, 4) for _ in range(2)]
        model = mhc_core_mlx.HistorySequential(layers, history=2, stochastic=True, seed=0, init="uniform")
        mhc_core_mlx.load_state(model, {k: np.full(v.shape, 0.1, v.dtype)
                                        for k, v in mhc_core_mlx.module_state(model).items()})
        return model.train()

    x = mx.array(np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32))
    eager = build()
    want = [np.array(eager(x)) for _ in range(3)]
    assert not np.allclose(want[0], want[1])  # the eager model draws fresh noise per call
    model = build()
    state = [model.state, mx.random.state]
    forward = mx.compile(lambda a: model(a), inputs=state, outputs=state)
    got = [np.array(forward(x)) for _ in range(3)]
    for i in range(3):
        assert_close(got[i], want[i], TOL["float32"], "seeded stochastic history compiled", f"call {i}")
    # the key is state, not a parameter: no gradient, not in the saved weights
    from mlx.utils import tree_flatten
    assert not any("key" in name for name, _ in tree_flatten(model.parameters()))
    assert set(mhc_core_mlx.module_state(model)) == set(mhc_core_mlx.module_state(eager))
    assert any("_gumbel_key" in name for name, _ in tree_flatten(model.state))


def test_unseeded_stochastic_history_under_mx_compile_draws_fresh_noise():
    """The README's way under mx.compile: seed=None and mx.random.state among the compiled
    function's inputs and outputs. The compiled calls then give the eager model's sequence
    of Gumbel samples from the same global seed."""
    def build():
        layers = [nn.Linear(4, 4) for _ in range(2)]
        model = mhc_core_mlx.HistorySequential(layers, history=2, stochastic=True, seed=None, init="uniform")
        mhc_core_mlx.load_state(model, {k: np.full(v.shape, 0.1, v.dtype)
                                        for k, v in mhc_core_mlx.module_state(model).items()})
        return model.train()

    x = mx.array(np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32))
    eager = build()
    mx.random.seed(7)
    want = [np.array(eager(x)) for _ in range(3)]
    assert not np.allclose(want[0], want[1])  # fresh noise per call
    model = build()
    state = [model.state, mx.random.state]
    forward = mx.compile(lambda a: model(a), inputs=state, outputs=state)
    mx.random.seed(7)
    got = [np.array(forward(x)) for _ in range(3)]
    for i in range(3):
        assert_close(got[i], want[i], TOL["float32"], "unseeded stochastic history compiled", f"call {i}")
