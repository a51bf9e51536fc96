"""The fused coefficients kernel (kernels/coefficients.py) vs mhc_core.coefficients.

Forward vs the numpy float64 oracle on the same (rounded) inputs; every gradient (x, phi,
bias, alpha) vs float64 autograd through mhc_core; gradcheck of the autograd.Function in
float64 (interpreter). Shapes cover: every n in 1..4 and n = 16, C not a multiple of the
K block, T not a multiple of the token blocks, T > 16 (two token blocks and two dphi splits
in the backward) and T > 64 (two forward blocks), mhc / hc, log-domain Sinkhorn
(eps = 0), non-default config.
"""
import numpy as np
import pytest
import torch

import mhc_core
from mhc_core_torch.kernels import ops

# (variant, T, n, C, config)
CASES = [
    ("mhc", 5, 1, 7, {}),
    ("mhc", 3, 2, 40, {"iters": 3}),
    ("mhc", 18, 3, 33, {"iters": 20}),  # T > 16: two backward token blocks, two dphi splits
    ("mhc", 70, 2, 9, {"iters": 2}),     # T > 64: two forward token blocks
    ("mhc", 4, 4, 17, {"iters": 5, "sinkhorn_eps": 0.0}),
    ("mhc", 2, 4, 40, {"iters": 3, "pre_eps": 0.0, "post_scale": 1.0, "rms_eps": 1e-3}),
    ("mhc", 2, 16, 3, {"iters": 2}),
    ("hc", 5, 2, 9, {}),
    ("hc", 18, 4, 20, {}),
]


def _id(case):
    v, t, n, c, cfg = case
    return f"{v}-T{t}-n{n}-C{c}" + "".join(f"-{k}{val:g}" for k, val in cfg.items())


def _inputs(case, dtype, rounded, mixing_params):
    v, t, n, c, _ = case
    rng = np.random.default_rng(t * 1000 + n * 10 + c)
    p = mixing_params(n, c, v, seed=n + c)
    x = rounded(rng.normal(0.0, 1.0, (t, n, c)), dtype, True)
    # mixing parameters stay float32 for bf16 activations (as in the modules)
    pdt = torch.float32 if dtype in (torch.bfloat16, torch.float16) else dtype
    return [x] + [rounded(p[k], pdt, True) for k in ("phi", "bias", "alpha")], rng


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
@pytest.mark.parametrize("case", CASES, ids=_id)
def test_coefficients_forward_and_grads(case, dtype, assert_close, rounded, mixing_params, oracle_grads):
    variant, t, n, c, cfg = case
    cfg = {"variant": variant, **cfg}
    ins, rng = _inputs(case, dtype, rounded, mixing_params)
    cid = f"{_id(case)}-{dtype}"
    outs = ops.coefficients(*ins, **cfg)
    assert all(o.dtype == torch.float32 for o in outs), "coefficients are float32 whatever x's dtype"
    cots = [rounded(rng.normal(0.0, 1.0, o.shape), torch.float32) for o in outs]
    want, grads_ref = oracle_grads(lambda *a: mhc_core.coefficients(*a, **cfg), ins, cots)
    # outputs: float32 math on exactly the oracle's inputs, whatever the input dtype
    for name, o, w in zip(("pre", "post", "res"), outs, want):
        assert_close(o, w, 1e-5, f"{cid}-{name}")
    grads = torch.autograd.grad(sum((o * g).sum() for o, g in zip(outs, cots)), ins)
    for name, g, gr, a in zip(("x", "phi", "bias", "alpha"), grads, grads_ref, ins):
        assert g.dtype == a.dtype, f"[{cid}] grad {name} dtype {g.dtype} != input dtype {a.dtype}"
        # dx is rounded to x's dtype; the others are float32 sums
        tol = {torch.bfloat16: 2e-2, torch.float16: 2e-3}.get(dtype, 1e-5) if name == "x" else 1e-5
        assert_close(g, gr, tol, f"{cid}-grad-{name}")


def test_coefficients_leading_batch_dims(assert_close, rounded, mixing_params):
    """x [2, 3, n, C] -> pre [2, 3, n], res [2, 3, n, n], same numbers as the flat call."""
    p = mixing_params(3, 5)
    x = np.random.default_rng(0).normal(0.0, 1.0, (2, 3, 3, 5))
    args = [rounded(x, torch.float32)] + [rounded(p[k], torch.float32) for k in ("phi", "bias", "alpha")]
    got = ops.coefficients(*args, iters=4)
    want = mhc_core.coefficients(x.astype(np.float32).astype(np.float64), *(p[k].astype(np.float32).astype(np.float64)
                                                                         for k in ("phi", "bias", "alpha")), iters=4)
    for name, g, w in zip(("pre", "post", "res"), got, want):
        assert tuple(g.shape) == w.shape, f"{name} shape {tuple(g.shape)} != {w.shape}"
        assert_close(g, w, 1e-5, f"batch-{name}")


@pytest.mark.parametrize("variant", ["mhc", "hc"])
def test_coefficients_online_rescaling_across_k_tiles(variant, assert_close, rounded, mixing_params, oracle_grads):
    """The forward's running max|x| scale (kernels/coefficients.py docstring) when the max
    moves between K tiles: n = 4, C = 40 (K = 160; magnitudes change every 64 columns, on K-tile
    boundaries: the K tile is 32 wide at n <= 4), float32 tokens whose
    tiles grow 1e-20 -> 1 -> 1e30, shrink 1e30 -> 1 -> 1e-20, sit at 3e38 (float32's edge),
    at 1e-30 and all zero. Unscaled, sum(x^2) is inf past 1.8e19 and every output was off.
    Outputs vs the float64 oracle; dx times each token's max|x| (dx ~ 1/|x|) and dphi,
    dbias, dalpha (scale-free) vs float64 autograd, all to 1e-5."""
    n, c = 4, 40
    rng = np.random.default_rng(11)
    mags = np.ones((7, n * c))
    tile = np.arange(n * c) // 64
    mags[0] = np.array([1e-20, 1.0, 1e30])[tile]
    mags[1] = np.array([1e30, 1.0, 1e-20])[tile]
    mags[2], mags[3], mags[4], mags[6] = 1e38, 1e-30, 0.0, 1e20
    mags[5] = 10.0 ** rng.uniform(-30, 30, n * c)       # every element its own magnitude
    x64 = np.clip(rng.normal(0.0, 1.0, (7, n * c)) * mags, -3e38, 3e38).reshape(7, n, c)
    p = mixing_params(n, c, variant, seed=2)
    ins = [rounded(x64, torch.float32, True)] + [rounded(p[k], torch.float32, True) for k in ("phi", "bias", "alpha")]
    outs = ops.coefficients(*ins, variant=variant, iters=5)
    cots = [rounded(rng.normal(0.0, 1.0, o.shape), torch.float32) for o in outs]
    want, grads_ref = oracle_grads(lambda *a: mhc_core.coefficients(*a, variant=variant, iters=5), ins, cots)
    for name, o, w in zip(("pre", "post", "res"), outs, want):
        assert_close(o, w, 1e-5, f"rescale-{variant}-{name}")
    grads = torch.autograd.grad(sum((o * g).sum() for o, g in zip(outs, cots)), ins)
    scale = torch.from_numpy(np.abs(ins[0].detach().double().cpu().numpy()).max(axis=(1, 2), keepdims=True))  # CPU
    scale = torch.where(scale > 0, scale, torch.ones_like(scale))
    assert_close(grads[0].double().cpu() * scale, grads_ref[0] * scale, 1e-5, f"rescale-{variant}-grad-x*max|x|")
    for name, g, gr in zip(("phi", "bias", "alpha"), grads[1:], grads_ref[1:]):
        assert_close(g, gr, 1e-5, f"rescale-{variant}-grad-{name}")


@pytest.mark.parametrize("variant,eps", [("mhc", 1e-6), ("mhc", 0.0), ("hc", 1e-6)], ids=["mhc", "mhc-eps0", "hc"])
def test_coefficients_gradcheck_float64(variant, eps, device, mixing_params):
    """gradcheck of CoefficientsFunction in float64 (the interpreter computes in float64)."""
    if device != "cpu":
        pytest.skip("float64 kernels run only in the interpreter (float64 is the reference path on GPU)")
    n, c = 2, 3
    p = mixing_params(n, c, variant, seed=3)
    args = [torch.randn(2, n, c, dtype=torch.float64)] + [torch.from_numpy(p[k]) for k in ("phi", "bias", "alpha")]
    args = [a.clone().requires_grad_() for a in args]
    fn = lambda *a: ops.coefficients(*a, variant=variant, iters=3, sinkhorn_eps=eps)  # noqa: E731
    assert torch.autograd.gradcheck(fn, args, eps=1e-6, atol=1e-8, rtol=1e-6)


@pytest.mark.gpu
@pytest.mark.parametrize("n,c", [(4, 2560), (4, 4096), (16, 1024)])
def test_coefficients_gpu_realistic_bf16(n, c, assert_close, rounded, mixing_params, oracle_grads):
    """Realistic shapes on CUDA: bf16 x, float32 parameters, vs the float64 oracle."""
    t = 512
    p = mixing_params(n, c, seed=1)
    rng = np.random.default_rng(1)
    ins = [rounded(rng.normal(0.0, 1.0, (t, n, c)), torch.bfloat16, True)] + \
        [rounded(p[k], torch.float32, True) for k in ("phi", "bias", "alpha")]
    outs = ops.coefficients(*ins)
    cots = [rounded(rng.normal(0.0, 1.0, o.shape), torch.float32) for o in outs]
    want, grads_ref = oracle_grads(lambda *a: mhc_core.coefficients(*a), ins, cots)
    for name, o, w in zip(("pre", "post", "res"), outs, want):
        assert_close(o, w, 1e-4, f"gpu-n{n}-C{c}-{name}")  # tf32x3 dots: ~float32
    grads = torch.autograd.grad(sum((o * g).sum() for o, g in zip(outs, cots)), ins)
    for name, g, gr in zip(("x", "phi", "bias", "alpha"), grads, grads_ref):
        assert_close(g, gr, 2e-2, f"gpu-n{n}-C{c}-grad-{name}")


def test_coefficients_bad_input(device):
    x = torch.zeros(2, 3, 4, device=device)
    p = mhc_core.init_params(3, 4)
    phi, bias, alpha = (torch.from_numpy(p[k]).to(device) for k in ("phi", "bias", "alpha"))
    with pytest.raises(ValueError, match="phi must have shape"):
        ops.coefficients(x, phi[:-1], bias, alpha)
    with pytest.raises(TypeError, match="floating"):
        ops.coefficients(x.long(), phi, bias, alpha)
    with pytest.raises(ValueError, match="iters"):
        ops.coefficients(x, phi, bias, alpha, iters=0)
    with pytest.raises(ValueError, match="residual"):
        ops.coefficients(x, phi, bias, alpha, variant="residual")
    big = mhc_core.init_params(17, 2)
    with pytest.raises(ValueError, match="n <= 16"):
        ops.coefficients(torch.zeros(1, 17, 2, device=device),
                         *(torch.from_numpy(big[k]).to(device) for k in ("phi", "bias", "alpha")))
    with pytest.raises(RuntimeError, match="need a CUDA tensor"):
        ops.coefficients(x.to("meta"), phi.to("meta"), bias.to("meta"), alpha.to("meta"))
