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
