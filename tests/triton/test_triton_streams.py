"""pre_aggregate and post_residual kernels vs mhc_core: forward vs the numpy float64
oracle on the same rounded inputs, every gradient vs float64 autograd through mhc_core,
gradcheck in float64 (interpreter). n in 1..4, 6 and 16; C = 1, odd, and larger than one
block of C (the backward's loop over C runs several times)."""
import numpy as np
import pytest
import torch

import mhc_core
from mhc_core_torch.kernels import ops

# (T, n, C); n = 6 and 16 take the post_residual backward's dot form (stream tile padded to 16)
SHAPES = [(3, 1, 1), (2, 2, 17), (3, 3, 40), (2, 4, 33), (2, 6, 150), (1, 16, 5), (2, 1, 600)]
DTYPES = [torch.float32, torch.bfloat16, torch.float16]


def _sid(s):
    return "T{}-n{}-C{}".format(*s)


def _check(fn, ref, arrays, dtypes, out_dtype, cid, assert_close, rounded, oracle_grads):
    """fn(*tensors) vs ref on the same rounded inputs; grads of <out, cotangent>."""
    ins = [rounded(a, d, True) for a, d in zip(arrays, dtypes)]
    out = fn(*ins)
    assert out.dtype == out_dtype, f"[{cid}] output dtype {out.dtype} != {out_dtype}"
    cot = rounded(np.random.default_rng(7).normal(0.0, 1.0, out.shape), out.dtype)
    (want,), grads_ref = oracle_grads(ref, ins, [cot])
    tol = {torch.float32: 1e-5, torch.bfloat16: 2e-2, torch.float16: 2e-3}
    assert_close(out, want, tol[out_dtype], cid + "-fwd")
    grads = torch.autograd.grad((out.float() * cot.float()).sum(), ins)
    for k, (g, gr, a) in enumerate(zip(grads, grads_ref, ins)):
        assert g.dtype == a.dtype, f"[{cid}] grad {k} dtype {g.dtype} != input dtype {a.dtype}"
        assert_close(g, gr, tol[a.dtype], f"{cid}-grad{k}")


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_sid)
def test_pre_aggregate(shape, dtype, assert_close, rounded, oracle_grads):
    t, n, c = shape
    rng = np.random.default_rng(t + 10 * n + c)
    arrays = [rng.normal(0.0, 1.0, (t, n, c)), rng.uniform(0.0, 1.0, (t, n))]
    _check(ops.pre_aggregate, mhc_core.pre_aggregate, arrays, [dtype, torch.float32], dtype,
           f"pre-{_sid(shape)}-{dtype}", assert_close, rounded, oracle_grads)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=_sid)
def test_post_residual(shape, dtype, assert_close, rounded, oracle_grads):
    t, n, c = shape
    rng = np.random.default_rng(t + 10 * n + c)
    arrays = [rng.normal(0.0, 1.0, (t, n, c)), rng.normal(0.0, 1.0, (t, c)),
              rng.uniform(0.0, 2.0, (t, n)), rng.uniform(0.0, 1.0, (t, n, n))]
    _check(ops.post_residual, mhc_core.post_residual, arrays, [dtype, dtype, torch.float32, torch.float32], dtype,
           f"post-{_sid(shape)}-{dtype}", assert_close, rounded, oracle_grads)


def test_streams_leading_batch_dims(assert_close, rounded):
    rng = np.random.default_rng(0)
    x, pre, y = rng.normal(size=(2, 3, 2, 5)), rng.uniform(size=(2, 3, 2)), rng.normal(size=(2, 3, 5))
    post, res = rng.uniform(size=(2, 3, 2)), rng.uniform(size=(2, 3, 2, 2))
    f32 = lambda a: rounded(a, torch.float32)  # noqa: E731
    r64 = lambda a: f32(a).double().cpu().numpy()  # noqa: E731
    assert_close(ops.pre_aggregate(f32(x), f32(pre)), mhc_core.pre_aggregate(r64(x), r64(pre)), 1e-5, "batch-pre")
    assert_close(ops.post_residual(f32(x), f32(y), f32(post), f32(res)),
                 mhc_core.post_residual(r64(x), r64(y), r64(post), r64(res)), 1e-5, "batch-post")


def test_streams_gradcheck_float64(device):
    if device != "cpu":
        pytest.skip("float64 kernels run only in the interpreter (float64 is the reference path on GPU)")
    g = lambda *s: torch.randn(*s, dtype=torch.float64, requires_grad=True)  # noqa: E731
    assert torch.autograd.gradcheck(ops.pre_aggregate, (g(2, 2, 3), g(2, 2)), eps=1e-6, atol=1e-8)
    assert torch.autograd.gradcheck(ops.post_residual, (g(1, 3, 4), g(1, 4), g(1, 3), g(1, 3, 3)), eps=1e-6, atol=1e-8)
    # n = 6: the backward's dot form
    assert torch.autograd.gradcheck(ops.post_residual, (g(1, 6, 3), g(1, 3), g(1, 6), g(1, 6, 6)), eps=1e-6, atol=1e-8)


@pytest.mark.gpu
@pytest.mark.parametrize("n,c", [(4, 4096), (16, 1024)])
def test_streams_gpu_realistic_bf16(n, c, assert_close, rounded, oracle_grads):
    t = 1024
    rng = np.random.default_rng(2)
    _check(ops.pre_aggregate, mhc_core.pre_aggregate, [rng.normal(size=(t, n, c)), rng.uniform(size=(t, n))],
           [torch.bfloat16, torch.float32], torch.bfloat16, f"gpu-pre-n{n}-C{c}", assert_close, rounded, oracle_grads)
    arrays = [rng.normal(size=(t, n, c)), rng.normal(size=(t, c)), rng.uniform(0, 2, (t, n)), rng.uniform(size=(t, n, n))]
    _check(ops.post_residual, mhc_core.post_residual, arrays, [torch.bfloat16, torch.bfloat16, torch.float32,
           torch.float32], torch.bfloat16, f"gpu-post-n{n}-C{c}", assert_close, rounded, oracle_grads)


def test_streams_bad_input(device):
    z = lambda *s: torch.zeros(*s, device=device)  # noqa: E731
    x = z(2, 3, 4)
    with pytest.raises(ValueError, match="pre must have shape"):
        ops.pre_aggregate(x, z(2, 4))
    with pytest.raises(ValueError, match="res must have shape"):
        ops.post_residual(x, z(2, 4), z(2, 3), z(2, 3, 2))
    with pytest.raises(TypeError, match="floating"):
        ops.pre_aggregate(x.int(), z(2, 3))
