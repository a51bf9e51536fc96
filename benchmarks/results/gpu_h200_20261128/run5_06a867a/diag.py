"""GPU diagnostic: (1) float32-reference error vs float64 at the failing gpu-shape cases, next to ours;
(2) where the host time of pre_aggregate / post_residual fwd+bwd at T = 8 goes (profiler)."""
import sys, time, json
sys.path[:0] = [".", "backends", "tests/triton", "tests"]
import numpy as np, torch
import mhc_core
from mhc_core_torch.kernels import ops
from conftest import _mixing_params
import test_triton_gpu_shapes as g

import os
SMALL = os.environ.get("DIAG_SMALL") == "1"
dev = torch.device("cpu" if SMALL else "cuda")
res = {}
for t, c in (((48, 40),) if SMALL else ((4096, 4096), (65536, 4096))):
    n = 4
    gen = torch.Generator(device=dev).manual_seed(0)
    x = torch.randn(t, n, c, device=dev, generator=gen).bfloat16()
    cot = torch.randn(t, n, c, device=dev, generator=gen).bfloat16()
    w = torch.randn(c, c, device=dev, generator=gen) / c ** 0.5
    p = _mixing_params(n, c, seed=5)
    params = [torch.from_numpy(p[k]).float().to(dev).requires_grad_(True) for k in ("phi", "bias", "alpha")]
    out, grads = g._step_and_grads(ops.step, x, w, params, cot)
    r64 = [q.detach().double().requires_grad_(True) for q in params]
    o64, g64 = g._step_and_grads(lambda x_, f, *q: mhc_core.step(x_.double(), g._bf16_layer(f), *q), x.double(), w, r64, cot)
    r32 = [q.detach().float().requires_grad_(True) for q in params]
    o32, g32 = g._step_and_grads(lambda x_, f, *q: mhc_core.step(x_.float(), g._bf16_layer(f), *q), x.float(), w, r32, cot)
    row = {}
    for name, a, b, ref in zip(("x", "phi", "bias", "alpha"), grads, g32, g64):
        scale = max(1.0, float(ref.abs().max()))
        row[name] = dict(ours=float((a.double() - ref).abs().max()) / scale, ref32=float((b.double() - ref).abs().max()) / scale,
                         maxref=float(ref.abs().max()))
    res[f"T{t}-C{c}"] = row
    print(t, c, json.dumps(row), flush=True)
    del x, cot, out, grads, o64, g64, o32, g32
    torch.cuda.empty_cache() if not SMALL else None

if SMALL: sys.exit(0)
from torch.profiler import profile, ProfilerActivity
x = torch.randn(8, 4, 1024, device=dev, dtype=torch.bfloat16, requires_grad=True)
pre = torch.rand(8, 4, device=dev, requires_grad=True)
for _ in range(20):
    h = ops.pre_aggregate(x, pre); torch.autograd.grad(h.float().sum(), [x, pre])
torch.cuda.synchronize()
with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
    for _ in range(20):
        h = ops.pre_aggregate(x, pre); torch.autograd.grad(h.float().sum(), [x, pre])
    torch.cuda.synchronize()
print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25))
print(prof.key_averages().table(sort_by="cuda_time_total", row_limit=12))
