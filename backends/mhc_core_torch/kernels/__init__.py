"""Fused Triton kernels for mHC, each forward and backward, tested against mhc_core:

    coefficients.py   projection + RMS + gating + Sinkhorn in one pass over x (Eq. 7-8, 14-15)
    pre_aggregate.py  h = sum_i pre[i] x[i]
    post_residual.py  out[o] = sum_i res[i, o] x[i] + post[o] y
    sinkhorn.py       the on-chip Sinkhorn (also a standalone op)
    ops.py            the four as mhc_core-compatible functions, plus `step`

Importing this package imports Triton. Whether the kernels can run here, and on what
input, is `mhc_core_torch.triton_gate`'s answer; `mhc_core_torch.dispatch` imports them
where they can, for MHC(impl='triton' | 'auto').
"""
