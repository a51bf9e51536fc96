"""The coefficient forward's launch shapes and range fallback (kernels/coefficients_fwd.py).

- fast path vs fallback: one token block holding huge (to 3e38), tiny (1e-30, with eps = 0),
  zero and ordinary rows, and rows whose magnitude changes between K splits, next to a block of
  ordinary rows; pre / post / res vs the float64 oracle (mhc_core on numpy), z vs a naive float64
  x @ phi * rsqrt(mean(x^2) + eps), and rs = (rho, 1/m): m a power of two with max|x| < 2m,
  rho/m vs a naive float64 rsqrt(mean(x^2) + eps);
- split-K (workspace + merge kernel) vs one launch, both vs the oracle, for bf16 / fp16 / fp32 x
  and n in {1, 2, 4, 8, 16};
- the launch choice (`fwd_config`) and FwdConfig's input checks.
Tiny K blocks (16) so that the interpreter sweeps several of them per split.
"""
import math

import numpy as np
import pytest
import torch

import mhc_core
from mhc_core_torch.kernels import coefficients_fwd as cf

SINGLE = cf.FwdConfig(block_t=16, block_k=16, num_warps=4, num_stages=2, splits=1)
SPLIT = cf.FwdConfig(block_t=16, block_k=16, num_warps=4, num_stages=2, splits=3)
KW = dict(hc=False, iters=4, pre_eps=1e-6, sk_eps=1e-6, post_scale=2.0)


def _params(n, c, mixing_params, rounded):
    p = mixing_params(n, c, seed=n + c)
    return [rounded(p[k], torch.float32) for k in ("phi", "bias", "alpha")]


def _naive_z(x, phi, eps):
    """z = (v @ phi) * rsqrt(mean(v^2) + eps) in float64, v = x flattened per token."""
    v = x.detach().double().cpu().numpy().reshape(x.shape[0], -1)
    r = 1.0 / np.sqrt(np.mean(v * v, axis=1) + eps)
    return (v @ phi.double().cpu().numpy()) * r[:, None]


def _check(x, params, eps, config, assert_close, tag, tol=1e-5):
    pre, post, res, z, rs = cf.coefficients_fwd(x, *params, rms_eps=eps, config=config, **KW)
    want = mhc_core.coefficients(*(t.detach().double().cpu().numpy() for t in [x] + params), iters=KW["iters"],
                                 rms_eps=eps, pre_eps=KW["pre_eps"], sinkhorn_eps=KW["sk_eps"],
                                 post_scale=KW["post_scale"])
    for name, g, w in zip(("pre", "post", "res"), (pre, post, res), want):
        assert_close(g, torch.from_numpy(w), tol, f"{tag}-{name}")
    assert_close(z, torch.from_numpy(_naive_z(x, params[0], eps)), tol, f"{tag}-z")
    _check_rs(x, rs, eps, tag)
    return z


def _check_rs(x, rs, eps, tag):
    """rs = (rho, 1/m), whichever sweep ran: m a power of two in [m_lo, m_hi] with max|x| < 2m
    (< 4m at the cap m_hi) (the fast sweep takes it from sum(x^2), the fallback from max|x|), and r = rho/m =
    rsqrt(mean(x^2) + eps) to float32 rounding (naive float64)."""
    m_lo, m_hi = cf._scale_bounds(torch.float32, eps)
    inv_m = rs[:, 1].double().cpu().numpy()
    m = 1.0 / inv_m
    assert np.all(np.frexp(m)[0] == 0.5) and np.all((m >= m_lo) & (m <= m_hi)), f"[{tag}] m not a power of two in range: {m}"
    v = x.detach().double().cpu().numpy().reshape(x.shape[0], -1)
    amax = np.abs(v).max(axis=1)
    bound = np.where(m == m_hi, 4 * m, 2 * m)  # at the cap 2^126, |x| < 3.4e38 = 4m
    assert np.all(amax < bound), f"[{tag}] max|x| >= 2m at rows {np.nonzero(amax >= bound)[0]}"
    with np.errstate(divide="ignore"):
        r_ref = 1.0 / np.sqrt(np.mean(v * v, axis=1) + eps)
    ok = np.isfinite(r_ref)
    r = rs[:, 0].double().cpu().numpy() * inv_m
    np.testing.assert_allclose(r[ok], r_ref[ok], rtol=1e-5, atol=0, err_msg=f"[{tag}] rho/m != rsqrt(mean(x^2) + eps)")


def _ranged_rows(n, c, rng):
    """16 rows (one token block): huge, tiny, zero, mixed per element, and rows whose magnitude
    jumps at K/2 (so the K splits of one token see different scales); then 16 ordinary rows."""
    k = n * c
    mags = np.ones((32, k))
    half = np.arange(k) >= k // 2
    mags[0], mags[1], mags[2], mags[3] = 3e38, 1e30, 1e-30, 0.0
    mags[4] = np.where(half, 1e30, 1.0)
    mags[5] = np.where(half, 1.0, 1e-25)
    mags[6] = 10.0 ** rng.uniform(-30, 30, k)
    mags[7] = 1e-12
    x = rng.normal(0.0, 1.0, (32, k)) * mags
    return np.clip(x, -3e38, 3e38).reshape(32, n, c)


@pytest.mark.parametrize("config", [SINGLE, SPLIT], ids=["single", "split"])
@pytest.mark.parametrize("eps", [1e-6, 0.0], ids=["eps1e-6", "eps0"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_fast_path_and_fallback_in_one_block(dtype, eps, config, assert_close, rounded, mixing_params):
    """A block with out-of-range rows falls back whole; the ordinary block next to it keeps the
    fast sweep; every row is float32-accurate either way (bf16 holds float32's range)."""
    n, c = 4, 24
    rng = np.random.default_rng(5)
    x = rounded(_ranged_rows(n, c, rng), dtype)
    if eps == 0.0:
        x = x[torch.arange(32) != 3]  # an all-zero row has r = 1/0 with eps = 0 (NaN in the oracle too)
    _check(x, _params(n, c, mixing_params, rounded), eps, config, assert_close, f"range-{dtype}-{eps}")


@pytest.mark.parametrize("config", [SINGLE, SPLIT], ids=["single", "split"])
def test_float16_tiny_and_large_rows(config, assert_close, rounded, mixing_params):
    """float16 x spans 6e-8 .. 65504: its tiny rows sit above the fast path's 2^-40 bound, so
    even with eps = 0 they run fast; results float32-accurate."""
    n, c = 2, 24
    rng = np.random.default_rng(6)
    mags = np.ones((20, n * c))
    mags[0], mags[1], mags[2] = 6e4 / 4, 1e-6, 10.0 ** rng.uniform(-6, 4, n * c)
    x = rounded(np.clip(rng.normal(0.0, 1.0, (20, n * c)) * mags, -6e4, 6e4).reshape(20, n, c), torch.float16)
    _check(x, _params(n, c, mixing_params, rounded), 0.0, config, assert_close, "fp16-range")


@pytest.mark.parametrize("n", [1, 2, 4, 8, 16])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16], ids=str)
def test_split_k_matches_single_launch_and_oracle(dtype, n, assert_close, rounded, mixing_params):
    """Split-K (3 splits, a ragged last one) and one launch both match the oracle, and each other
    to float32 rounding; T = 20: a full and a partial token block."""
    c = max(3, 56 // n)
    rng = np.random.default_rng(n)
    x = rounded(rng.normal(0.0, 1.0, (20, n, c)), dtype)
    params = _params(n, c, mixing_params, rounded)
    z1 = _check(x, params, 1e-6, SINGLE, assert_close, f"single-{dtype}-n{n}")
    z3 = _check(x, params, 1e-6, SPLIT, assert_close, f"split-{dtype}-n{n}")
    assert_close(z3, z1.double(), 1e-5, f"split-vs-single-{dtype}-n{n}")


@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_phi_parts_sum_to_phi_exactly(n, device, mixing_params):
    """phi_parts: [hi | mid | lo] per row, each in the gate-tile then res-tile layout, bf16, with
    hi + mid + lo == phi bitwise (float64 sum of the parts; padding columns zero)."""
    c = 5
    phi = torch.from_numpy(mixing_params(n, c, seed=1)["phi"]).float().to(device)
    phi[0, 0], phi[1, 1] = 1e-30, -3e38   # a tiny and a huge entry: the split holds across float32's range
    parts = cf.phi_parts(phi, n).double().cpu()
    assert torch.equal(cf.phi_parts(phi.t().contiguous().t(), n).double().cpu(), parts)  # a column-major phi
    R, GP = 4, 16
    np_ = GP + R * R
    assert parts.shape == (n * c, 3 * np_)
    total = parts[:, :np_] + parts[:, np_:2 * np_] + parts[:, 2 * np_:]
    cols = list(range(n)) + list(range(n, 2 * n))          # gate tile: pre in [0, R), post in [R, 2R)
    gate_at = list(range(n)) + list(range(R, R + n))
    res_at = [GP + i * R + o for i in range(n) for o in range(n)]
    want = torch.zeros(n * c, np_, dtype=torch.float64)
    want[:, gate_at] = phi.double().cpu()[:, cols]
    want[:, res_at] = phi.double().cpu()[:, 2 * n:]
    assert torch.equal(total, want)


def test_fast_bounds():
    """S_EPS = (2^-15 * 2^floor(log2 sqrt(eps)))^2 for eps >= 2^-100 (so S_EPS <= 2^-30 eps),
    else never (-1); S_LO = 2^-80."""
    s_eps = (2.0 ** (math.floor(math.log2(1e-3)) - 15)) ** 2
    assert cf._fast_bounds(1e-6) == (2.0 ** -80, s_eps) and s_eps <= 2.0 ** -30 * 1e-6
    assert cf._fast_bounds(0.0) == (2.0 ** -80, -1.0)
    assert cf._fast_bounds(2.0 ** -110)[1] == -1.0


def test_fwd_config_splits_only_small_batches(monkeypatch):
    """One launch when the token blocks cover the SMs; split-K (>= MIN_K_STEPS K blocks per
    split, ~2 programs per SM) below that; never in the interpreter by default (1 SM)."""
    monkeypatch.setattr(cf, "sm_count", lambda device: 132)
    cpu = torch.device("cpu")
    big = cf.fwd_config(16384, 4, 16384, torch.bfloat16, cpu)
    small = cf.fwd_config(4096, 4, 16384, torch.bfloat16, cpu)
    assert big.splits == 1
    # bf16, n <= 4 (phi parts): 64 x 64 blocks on 4 warps on sm_90 (the H200 sweep's best), K block 32 on sm_80
    assert cf.fwd_config(16384, 4, 16384, torch.bfloat16, cpu, cc=90) == cf.FwdConfig(64, 64, 4, 3, 1)
    assert cf.fwd_config(16384, 3, 12288, torch.bfloat16, cpu, cc=80) == cf.FwdConfig(64, 32, 4, 3, 1)
    # float32 x at n = 4 on sm_90: 128-token blocks on 8 warps where they fill >= 90% of the SMs
    f32 = cf.fwd_config(16384, 4, 16384, torch.float32, cpu, cc=90)
    assert (f32.block_t, f32.num_warps, f32.splits) == (128, 8, 1)
    assert cf.fwd_config(16384, 8, 16384, torch.bfloat16, cpu, cc=90).block_t == 16
    blocks = 4096 // small.block_t
    assert small.splits == math.ceil(2 * 132 / blocks) and blocks * small.splits >= 2 * 132
    assert cf.fwd_config(8, 4, 64, torch.bfloat16, cpu).splits == 1  # K too short to split
    monkeypatch.undo()
    assert cf.fwd_config(8, 4, 4096, torch.float32, cpu).splits == 1


def test_fwd_config_bad_input(device):
    """Out-of-range launch settings, and wrong types (True == 1 and 4.0 == 4 are a wrong type,
    not a value), are refused, also when there are no tokens to launch for."""
    p = mhc_core.init_params(2, 8)
    params = [torch.from_numpy(p[k]).to(device) for k in ("phi", "bias", "alpha")]
    for x in (torch.zeros(2, 2, 8, device=device), torch.zeros(0, 2, 8, device=device)):
        for bad, match in ((dict(block_t=24), "block_t must be a power of two"),
                           (dict(block_k=8), "block_k must be a power of two"),
                           (dict(num_warps=3), "num_warps must be one of"),
                           (dict(splits=0), "splits must be an integer >= 1"),
                           (dict(num_stages=0), "num_stages must be an integer >= 1"),
                           (dict(num_warps=4.0), "num_warps must be one of"),
                           (dict(num_warps=True), "num_warps must be one of"),
                           (dict(num_stages=True), "num_stages must be an integer >= 1"),
                           (dict(splits=2.0), "splits must be an integer >= 1"),
                           (dict(block_t=16.0), "block_t must be a power of two")):
            cfg = cf.FwdConfig(**{**dict(block_t=16, block_k=16), **bad})
            with pytest.raises(ValueError, match=match):
                cf.coefficients_fwd(x, *params, rms_eps=1e-6, config=cfg, **KW)
        with pytest.raises(TypeError, match="config must be a FwdConfig"):
            cf.coefficients_fwd(x, *params, rms_eps=1e-6, config=(16, 16), **KW)


@pytest.mark.parametrize("n", [2, 4, 5])
def test_launcher_takes_non_contiguous_inputs(n, assert_close, rounded, mixing_params):
    """coefficients_fwd called directly (as the sweep and step do) with a permuted x and a
    column-major phi: the same numbers as the float64 oracle (the kernels index x densely,
    so a strided view read as dense would be silently wrong). n = 2, 4: bf16 x on phi's
    precomputed parts; n = 5: the in-kernel split."""
    c = 12
    rng = np.random.default_rng(n)
    x = rounded(rng.normal(0.0, 1.0, (c, 6, n)), torch.bfloat16).permute(1, 2, 0)   # [6, n, c], strided
    phi, bias, alpha = _params(n, c, mixing_params, rounded)
    phi = phi.t().contiguous().t()                                                    # column-major
    assert not x.is_contiguous() and not phi.is_contiguous()
    _check(x, [phi, bias, alpha], 1e-6, None, assert_close, f"strided-n{n}")


def test_launcher_bad_shapes(device):
    """coefficients_fwd refuses x that is not [T, n, C] and phi / bias / alpha of the wrong
    shape for it, naming the expected shape (instead of reading past phi's end)."""
    x = torch.zeros(3, 2, 8, device=device)
    p = mhc_core.init_params(2, 8)
    phi, bias, alpha = (torch.from_numpy(p[k]).to(device) for k in ("phi", "bias", "alpha"))
    with pytest.raises(ValueError, match=r"x must be \[T, n, C\], got shape \(6, 8\)"):
        cf.coefficients_fwd(x.reshape(6, 8), phi, bias, alpha, rms_eps=1e-6, **KW)
    with pytest.raises(ValueError, match=r"phi must have shape \(16, 8\) .* got \(8, 8\)"):
        cf.coefficients_fwd(x, phi[:8], bias, alpha, rms_eps=1e-6, **KW)
    with pytest.raises(ValueError, match=r"bias must have shape \(8,\)"):
        cf.coefficients_fwd(x, phi, bias[:6], alpha, rms_eps=1e-6, **KW)
    with pytest.raises(ValueError, match=r"alpha must have shape \(3,\)"):
        cf.coefficients_fwd(x, phi, bias, alpha[:2], rms_eps=1e-6, **KW)
