"""Our kernels vs liger-kernel's mHC ops (a real, independent implementation), where both
define the same function: skipped when liger-kernel is not installed (it is not a project
dependency; `pip install --no-deps liger-kernel`). On the test device: CUDA when present,
else the CPU in the Triton interpreter (both libraries' kernels run there).

Same math, one convention difference: liger's post_res mixes with h_res[o, i] (the paper's
H_res), ours with res[i, o] (DeepSeek-V4's comb), and both compute the same Sinkhorn matrix,
so `liger_post_res(x, y, post, res^T) == post_residual(x, y, post, res)`. liger needs
power-of-two n and bf16/fp16 x.

Precision: liger's coefficient kernels run `tl.dot` at Triton's default precision, tf32 on a
GPU (10-bit mantissa: ~2^-11 relative per product), ours tf32x3 (~float32). In the
interpreter both are exact float32 and agree to 1e-5; on a GPU the two libraries can only
agree to tf32's accuracy, so there the comparison allows 2e-3 and, separately, ours is held
to 1e-5 against the float64 oracle (mhc_core on numpy).
"""
import numpy as np
import pytest
import torch

import mhc_core
from mhc_core_torch.kernels import ops

liger = pytest.importorskip("liger_kernel.transformers.functional")


@pytest.mark.parametrize("n,c", [(2, 33), (4, 40)])
def test_coefficients_match_liger(n, c, device, assert_close):
    torch.manual_seed(n)
    t = 5
    p = mhc_core.init_params(n, c, phi_std=1.0 / np.sqrt(n * c), seed=n)
    x = torch.randn(t, n, c).bfloat16().to(device)
    phi = torch.from_numpy(p["phi"]).to(device)
    bias = (torch.from_numpy(p["bias"]) + 0.5 * torch.randn(n * n + 2 * n)).to(device)
    alpha = torch.tensor([0.7, 1.3, 0.9], device=device)
    ours_in = [a.clone().requires_grad_() for a in (x, phi, bias, alpha)]
    lig_in = [a.clone().requires_grad_() for a in (x, phi, bias, alpha[0], alpha[1], alpha[2])]
    ours = ops.coefficients(*ours_in, iters=5)
    theirs = liger.liger_mhc_coeffs(*lig_in, tmax=5, pre_eps=1e-6)
    cots = [torch.randn_like(o) for o in ours]
    exact = device == "cpu"  # interpreter: both float32-exact; GPU: liger's dots are tf32
    tol, gtol = (1e-5, 1e-4) if exact else (2e-3, 2e-3)
    oracle = mhc_core.coefficients(*(a.detach().double().cpu().numpy() for a in (x, phi, bias, alpha)), iters=5,
                                   pre_eps=1e-6)
    for name, a, b, want in zip(("pre", "post", "res"), ours, theirs, oracle):
        assert_close(a, want, 1e-5, f"ours-vs-oracle-n{n}-C{c}-{name}")
        assert_close(a, b, tol, f"liger-n{n}-C{c}-{name}")
    g_ours = torch.autograd.grad(sum((o * g).sum() for o, g in zip(ours, cots)), ours_in)
    g_lig = torch.autograd.grad(sum((o * g).sum() for o, g in zip(theirs, cots)), lig_in)
    assert_close(g_ours[0], g_lig[0], 2e-2, f"liger-n{n}-C{c}-grad-x")  # both rounded to bf16
    assert_close(g_ours[1], g_lig[1], gtol, f"liger-n{n}-C{c}-grad-phi")
    assert_close(g_ours[2], g_lig[2], gtol, f"liger-n{n}-C{c}-grad-bias")
    assert_close(g_ours[3], torch.stack(g_lig[3:]), gtol, f"liger-n{n}-C{c}-grad-alpha")


def test_streams_match_liger(device, assert_close):
    torch.manual_seed(0)
    t, n, c = 3, 4, 40
    x, y = torch.randn(t, n, c).bfloat16().to(device), torch.randn(t, c).bfloat16().to(device)
    pre, post = torch.rand(t, n, device=device), 2 * torch.rand(t, n, device=device)
    res = torch.softmax(torch.randn(t, n, n, device=device), -1)
    assert_close(ops.pre_aggregate(x, pre), liger.liger_mhc_pre(x, pre), 1e-2, "liger-pre")  # bf16 outputs
    assert_close(ops.post_residual(x, y, post, res),
                 liger.liger_mhc_post_res(x, y, post, res.transpose(-1, -2).contiguous()), 1e-2, "liger-post")
