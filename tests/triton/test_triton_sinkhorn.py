"""The on-chip Sinkhorn (kernels/sinkhorn.py) vs mhc_core.sinkhorn: forward vs the numpy
float64 oracle, backward vs float64 autograd through mhc_core, gradcheck in float64."""
import numpy as np
import pytest
import torch

import mhc_core
from mhc_core_torch.kernels import ops

CASES = [  # (n, iters, eps): eps = 0 is the log-domain path
    (1, 3, 1e-6), (2, 1, 1e-6), (3, 3, 1e-6), (4, 20, 1e-6), (5, 4, 0.0), (4, 3, 0.0), (16, 2, 1e-6),
]


def _id(c):
    return f"n{c[0]}-it{c[1]}-eps{c[2]:g}"


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_sinkhorn_forward_and_grad(case, dtype, device, assert_close, rounded, oracle_grads):
    if dtype == torch.float64 and device != "cpu":
        pytest.skip("float64 kernels run only in the interpreter (float64 is the reference path on GPU)")
    n, iters, eps = case
    rng = np.random.default_rng(n * 100 + iters)
    logits = rng.normal(0.0, 3.0, (5, n, n))  # T = 5: a partial token block
    cot = rng.normal(0.0, 1.0, (5, n, n))
    L = rounded(logits, dtype, requires_grad=True)
    out = ops.sinkhorn(L, iters=iters, eps=eps)
    cid = f"sinkhorn-{_id(case)}-{dtype}"
    want = mhc_core.sinkhorn(L.detach().double().cpu().numpy(), iters=iters, eps=eps)
    assert_close(out, want, 1e-5 if dtype == torch.float32 else 1e-12, cid + "-fwd")
    (g,) = torch.autograd.grad((out * rounded(cot, dtype)).sum(), L)
    _, (g_ref,) = oracle_grads(lambda a: mhc_core.sinkhorn(a, iters=iters, eps=eps), [L], [rounded(cot, dtype)])
    assert_close(g, g_ref, 1e-5 if dtype == torch.float32 else 1e-12, cid + "-grad")


@pytest.mark.parametrize("eps", [1e-6, 0.0], ids=["eps1e-6", "eps0"])
def test_sinkhorn_gradcheck_float64(eps, device):
    """The interpreter computes in float64, so the Function's backward is checked exactly."""
    if device != "cpu":
        pytest.skip("float64 kernels run only in the interpreter (float64 is the reference path on GPU)")
    L = torch.randn(2, 3, 3, dtype=torch.float64) * 2
    assert torch.autograd.gradcheck(lambda a: ops.sinkhorn(a, iters=4, eps=eps), (L.requires_grad_(),),
                                    eps=1e-6, atol=1e-8, rtol=1e-6)


def test_sinkhorn_extreme_logits_stay_finite(assert_close, rounded):
    """Finite logits give finite, doubly-stochastic output even where exp underflows."""
    logits = np.array([[[300.0, -300.0, 0.0], [-1e4, 1e4, 5.0], [0.0, 0.0, -800.0]]])
    for eps in (1e-6, 0.0):
        out = ops.sinkhorn(rounded(logits, torch.float32), iters=20, eps=eps)
        want = mhc_core.sinkhorn(logits, iters=20, eps=eps)
        assert_close(out, want, 1e-5, f"extreme-eps{eps:g}")
        assert_close(out.sum(-2), np.ones((1, 3)), 1e-5, f"extreme-colsum-eps{eps:g}")
