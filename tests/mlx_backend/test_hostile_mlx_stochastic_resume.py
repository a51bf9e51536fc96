"""A seeded stochastic MLX HistorySequential trained, checkpointed (mhc_core_mlx.training.
checkpoint capture / restore) and resumed in a fresh process-like rebuild: the resumed
steps must be the uninterrupted run's, bit for bit (the Gumbel key lives in model.state,
not among the parameters)."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
optim = pytest.importorskip("mlx.optimizers")

import mhc_core_mlx  # noqa: E402
from mhc_core_mlx.training import checkpoint  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402


def _build():
    mx.random.seed(3)
    layers = [nn.Linear(4, 4) for _ in range(3)]
    model = mhc_core_mlx.HistorySequential(layers, history=2, stochastic=True, seed=11, init="uniform")
    return model.train(), optim.SGD(learning_rate=0.1)


def _step(model, opt, x):
    loss_grad = nn.value_and_grad(model, lambda m, a: (m(a) ** 2).mean())
    loss, grads = loss_grad(model, x)
    opt.update(model, grads)
    mx.eval(model.state, opt.state)
    return np.array(loss)


def test_resumed_stochastic_history_run_is_the_uninterrupted_one():
    x = mx.array(np.random.default_rng(0).normal(size=(2, 4)).astype(np.float32))
    model, opt = _build()
    want = [_step(model, opt, x) for _ in range(4)]

    model, opt = _build()
    first = [_step(model, opt, x) for _ in range(2)]
    tensors, meta = checkpoint.capture(model, opt)
    model, opt = _build()
    checkpoint.restore(model, opt, tensors, meta)
    got = first + [_step(model, opt, x) for _ in range(2)]
    np.testing.assert_array_equal(np.array(got), np.array(want))
    # the key stays out of the gradients and the optimizer's update
    assert not any("_gumbel_key" in k for k, _ in tree_flatten(model.trainable_parameters()))
