"""torch.compile (inductor) with one stream, n = 1: every Sinkhorn normalisation then
sums over an axis of one entry, which inductor turns into pointwise expressions and
inlines into one chain; each normalisation reads its input twice, and lowering that chain
took time exponential in its length (no compile finished at the default 20 iterations).
The shim makes such a reduction's input a buffer of its own (`mhc_core::own_buffer`).
Compiled results are checked against the numpy float64 oracle and eager torch; a compile
that does not finish in COMPILE_LIMIT_S fails instead of hanging the suite."""
from __future__ import annotations

import contextlib
import signal

import numpy as np
import pytest
import torch
from torch import nn

import mhc_core
import mhc_core_torch  # noqa: F401 - builds the torch namespace eagerly (registers the op)
from mhc_core import xp

COMPILE_LIMIT_S = 300  # ~10-30 s each here


@contextlib.contextmanager
def _time_limit(seconds: int):
    def stop(signum, frame):
        raise TimeoutError(f"torch.compile did not finish in {seconds} s")
    old = signal.signal(signal.SIGALRM, stop)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.mark.parametrize("eps", [1e-6, 0.0])
def test_sinkhorn_of_one_entry_compiles_and_matches_the_oracle(eps):
    torch._dynamo.reset()
    logits = torch.tensor([[[0.3]], [[-2.0]], [[40.0]], [[float("inf")]]], dtype=torch.float64, requires_grad=True)
    fn = torch.compile(lambda t: mhc_core.sinkhorn(t, eps=eps), fullgraph=True, dynamic=True)
    with _time_limit(COMPILE_LIMIT_S):
        got = fn(logits)
        (grad,) = torch.autograd.grad(got.sum(), logits)
    want = mhc_core.sinkhorn(logits.detach().numpy(), eps=eps)  # inf -> nan, as the oracle gives
    np.testing.assert_allclose(got.detach().numpy(), want, rtol=1e-12, atol=1e-12, equal_nan=True)
    (want_grad,) = torch.autograd.grad(mhc_core.sinkhorn(logits, eps=eps).sum(), logits)  # eager torch
    np.testing.assert_allclose(grad.numpy(), want_grad.numpy(), rtol=1e-12, atol=1e-12, equal_nan=True)


def test_mhc_with_one_stream_compiles_and_matches_eager():
    torch._dynamo.reset()
    torch.manual_seed(0)
    module = mhc_core_torch.MHC(nn.Linear(8, 8, dtype=torch.float64), 1, 8, seed=1).double()
    x = torch.randn(2, 3, 1, 8, dtype=torch.float64, requires_grad=True)
    with _time_limit(COMPILE_LIMIT_S):
        out = torch.compile(module, fullgraph=True)(x)
        grads = torch.autograd.grad(out.square().sum(), [x, *module.parameters()])
    want = module(x)
    want_grads = torch.autograd.grad(want.square().sum(), [x, *module.parameters()])
    torch.testing.assert_close(out, want, rtol=1e-12, atol=1e-12)
    for g, w in zip(grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-10, atol=1e-12)


def test_own_buffer_is_a_copy_with_the_identity_gradient():
    op = xp._OWN_BUFFER[0]
    x = torch.randn(3, 1, 4, dtype=torch.float64, requires_grad=True)
    y = op(x)
    assert y.data_ptr() != x.data_ptr()
    torch.testing.assert_close(y, x, rtol=0, atol=0)
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    torch.testing.assert_close(gx, g, rtol=0, atol=0)
