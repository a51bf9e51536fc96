"""post_residual backward kernel at launch configurations other than the default: several
C blocks (partial dpost / dres sums added by the launcher), a C tail, several tokens per
program with a token tail, loops over C blocks inside a program, 1..8 warps. Every output vs float64 autograd through mhc_core
(the oracle) on the same rounded inputs; n in 1..5, 8, 16 (n >= 5 is the dot form)."""
import numpy as np
import pytest
import torch

import mhc_core
from mhc_core_torch.kernels import post_residual as pr

TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
# (T, n, C, block_c, num_warps, tokens, steps, stages): C = 40 over 16-column blocks = 3
# blocks with a tail; steps > 1 loops over C blocks inside a program (2 chunks at C = 40)
CASES = [(3, 1, 40, 16, 1, 2, 1, 1), (3, 2, 40, 16, 4, 1, 2, 2), (5, 3, 40, 32, 2, 3, 1, 1),
         (3, 4, 40, 16, 1, 2, 2, 1), (2, 4, 100, 64, 8, 4, 1, 1), (3, 5, 40, 16, 4, 2, 1, 1),
         (2, 8, 33, 16, 2, 1, 2, 2), (3, 16, 20, 16, 4, 2, 3, 2),
         (2, 4, 4096, 512, 2, 1, 4, 3)]  # the default at n = 4, C >= 4096


def _cid(case):
    return "T{}-n{}-C{}-bc{}-w{}-tok{}-steps{}-st{}".format(*case)


@pytest.mark.parametrize("dtype", list(TOL), ids=str)
@pytest.mark.parametrize("case", CASES, ids=_cid)
def test_post_residual_bwd_configs(case, dtype, device, rounded, oracle_grads, assert_close):
    t, n, c, bc, warps, tokens, steps, stages = case
    rng = np.random.default_rng(n + c + t)
    x, y = rounded(rng.normal(size=(t, n, c)), dtype), rounded(rng.normal(size=(t, c)), dtype)
    post, res = rounded(rng.uniform(0, 2, (t, n)), torch.float32), rounded(rng.uniform(size=(t, n, n)), torch.float32)
    dout = rounded(rng.normal(size=(t, n, c)), dtype)
    cfg = pr.BwdConfig(bc, warps, tokens, n > 4, steps, stages)
    got = pr.post_residual_bwd(x, y, post, res, dout, config=cfg)
    _, want = oracle_grads(mhc_core.post_residual, [x, y, post, res], [dout])
    for name, g, w, d in zip(("dx", "dy", "dpost", "dres"), got, want, (dtype, dtype, torch.float32, torch.float32)):
        assert g.dtype == d, f"{name} dtype {g.dtype} != {d}"
        assert_close(g, w, TOL[dtype], f"{_cid(case)}-{dtype}-{name}")


def test_post_residual_bwd_default_config_is_valid():
    for n in (1, 2, 3, 4, 5, 8, 16):
        for c in (1, 100, 1024, 4096, 7168):
            cfg = pr.bwd_config(n, c)
            assert pr.check_bwd_config(cfg, n) is cfg
            assert cfg.dot == (n > 4)


def test_post_residual_bwd_bad_config(device):
    z = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
    args = (z(2, 3, 8), z(2, 8), z(2, 3), z(2, 3, 3), z(2, 3, 8))
    with pytest.raises(ValueError, match="block_c must be a positive power of two"):
        pr.post_residual_bwd(*args, config=pr.BwdConfig(48, 4, 1, False))
    with pytest.raises(ValueError, match="block_c must be >= 16"):
        pr.post_residual_bwd(*args, config=pr.BwdConfig(8, 4, 1, False))
    with pytest.raises(ValueError, match="num_warps must be a positive power of two"):
        pr.post_residual_bwd(*args, config=pr.BwdConfig(16, 3, 1, False))
    with pytest.raises(ValueError, match="tokens"):
        pr.post_residual_bwd(*args, config=pr.BwdConfig(16, 4, 0, False))
    with pytest.raises(ValueError, match="steps must be an int"):
        pr.post_residual_bwd(*args, config=pr.BwdConfig(16, 4, 1, False, 0))
    with pytest.raises(ValueError, match="stages must be an int"):
        pr.post_residual_bwd(*args, config=pr.BwdConfig(16, 4, 1, False, 2, 9))
    with pytest.raises(ValueError, match="dot must be True"):
        pr.post_residual_bwd(z(2, 6, 8), z(2, 8), z(2, 6), z(2, 6, 6), z(2, 6, 8), config=pr.BwdConfig(16, 4, 1, False))
    with pytest.raises(TypeError, match="BwdConfig"):
        pr.post_residual_bwd(*args, config=(16, 4, 1, False))


def test_post_residual_launch_settings_are_ints_within_a_block(device):
    """Launch settings are ints (True == 1 and 4.0 == 4 are wrong types), warps at most 32
    (1024 threads, CUDA's block limit), `dot` a bool."""
    z = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
    args = (z(2, 3, 8), z(2, 8), z(2, 3), z(2, 3, 3))
    for bad, match in ((pr.BwdConfig(16, True, 1, False), "num_warps must be a positive power of two"),
                       (pr.BwdConfig(16, 64, 1, False), "num_warps must be a positive power of two"),
                       (pr.BwdConfig(16, 4.0, 1, False), "num_warps must be a positive power of two"),
                       (pr.BwdConfig(16, 4, True, False), "tokens must be an int"),
                       (pr.BwdConfig(16, 4, 1, False, 2.0), "steps must be an int"),
                       (pr.BwdConfig(16, 4, 1, "no"), "dot must be True or False")):
        with pytest.raises(ValueError, match=match):
            pr.post_residual_bwd(*args, z(2, 3, 8), config=bad)
    for kw in (dict(num_warps=64), dict(num_warps=True), dict(block_c=32.0)):
        with pytest.raises(ValueError, match="must be a power of two"):
            pr.post_residual_fwd(*args, **kw)


def test_post_residual_fwd_bad_launch(device):
    z = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
    args = (z(2, 3, 8), z(2, 8), z(2, 3), z(2, 3, 3))
    with pytest.raises(ValueError, match="block_c must be a power of two"):
        pr.post_residual_fwd(*args, block_c=8)
    with pytest.raises(ValueError, match="num_warps must be a power of two"):
        pr.post_residual_fwd(*args, num_warps=3)


@pytest.mark.parametrize("bc,warps", [(16, 1), (64, 8)])
def test_post_residual_fwd_launch(bc, warps, device, rounded, assert_close):
    rng = np.random.default_rng(3)
    a = [rng.normal(size=(3, 3, 40)), rng.normal(size=(3, 40)), rng.uniform(0, 2, (3, 3)), rng.uniform(size=(3, 3, 3))]
    ins = [rounded(v, torch.float32) for v in a]
    want = mhc_core.post_residual(*[t.double().cpu().numpy() for t in ins])
    assert_close(pr.post_residual_fwd(*ins, block_c=bc, num_warps=warps), want, 1e-5, f"fwd-bc{bc}-w{warps}")
