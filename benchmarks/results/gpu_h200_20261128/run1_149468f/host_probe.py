"""Host overhead per call at tiny T (CPU-bound): wall us per call, synchronize at the end."""
import time, torch
from torch import nn
from mhc_core_torch import MHC
from mhc_core_torch.kernels import ops
from mhc_core_torch.kernels.coefficients import coefficients_fwd, _fwd_op
import mhc_core

import os; dev = os.environ.get("DEV", "cuda")
n, C, T = 4, 1024, 8
p = mhc_core.init_params(n, C, phi_std=0.02, seed=0)
phi, bias, alpha = (torch.from_numpy(p[k]).to(dev) for k in ("phi", "bias", "alpha"))
x = torch.randn(T, n, C, device=dev, dtype=torch.bfloat16)
pre = torch.rand(T, n, device=dev); y = torch.randn(T, C, device=dev, dtype=torch.bfloat16)
res = torch.softmax(torch.randn(T, n, n, device=dev), -1)

def per_call(fn, reps=int(os.environ.get("REPS", 300))):
    for _ in range(min(20, reps)): fn()
    (torch.cuda.synchronize() if dev == "cuda" else None); t0 = time.perf_counter()
    for _ in range(reps): fn()
    (torch.cuda.synchronize() if dev == "cuda" else None); return (time.perf_counter() - t0) / reps * 1e6

cfg = (False, 20, 1e-6, 1e-6, 1e-6, 2.0)
rows = {
 "torch.add (baseline launch)": lambda: x.add(x),
 "coefficients_fwd (raw launcher)": lambda: coefficients_fwd(x, phi, bias, alpha, *cfg),
 "torch.library coefficients_fwd op": lambda: _fwd_op(x, phi, bias, alpha, *cfg),
 "ops.coefficients (checks+Function)": lambda: ops.coefficients(x, phi, bias, alpha),
 "ops.pre_aggregate": lambda: ops.pre_aggregate(x, pre),
 "ops.post_residual": lambda: ops.post_residual(x, y, pre, res),
}
m = MHC(nn.Identity(), n, C, impl="triton").to(dev)
mr = MHC(nn.Identity(), n, C, impl="reference").to(dev)
xg = x.clone().requires_grad_(True)
rows["MHC(triton) fwd"] = lambda: m(x)
rows["MHC(reference) fwd"] = lambda: mr(x)
def fb(mod):
    def f():
        out = mod(xg); out.sum().backward()
    return f
rows["MHC(triton) fwd+bwd"] = fb(m)
rows["MHC(reference) fwd+bwd"] = fb(mr)
for k, f in rows.items():
    try:
        print(f"{k:40s} {per_call(f):9.1f} us/call", flush=True)
    except Exception as e:
        print(f"{k:40s} ERROR {type(e).__name__}: {e}", flush=True)
