#!/usr/bin/env python
"""mHC-lite's res against Sinkhorn's: how doubly stochastic each is in float32, and how long
one `mhc_core.coefficients` call takes (torch, CPU, reference path).

    python scripts/lite_vs_sinkhorn.py            # a few seconds

Logits are drawn uniformly from [-s, s] for s in 1, 1e2, 1e3, 1e4 (64 tokens each). The
test that bounds the lite figure is tests/test_history_core.py
(test_birkhoff_res_doubly_stochastic_in_float32_up_to_1e4: n * float32 eps).
"""
from __future__ import annotations

import math
import os
import time

import numpy as np
import torch

import mhc_core as mc

SCALES = np.array([1.0, 1e2, 1e3, 1e4]).repeat(64)


def sums_error(res: np.ndarray) -> tuple[float, float]:
    return float(np.abs(res.sum(-1) - 1).max()), float(np.abs(res.sum(-2) - 1).max())


def timing(variant: str, n: int, c: int = 64, tokens: int = 4096, reps: int = 20) -> float:
    """Median ms of one coefficients call on [tokens, n, C] float32."""
    p = mc.init_params(n, c, variant=variant, phi_std=0.1, seed=0)
    x = torch.randn(tokens, n, c)
    phi, bias, alpha = (torch.from_numpy(p[k]) for k in ("phi", "bias", "alpha"))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        mc.coefficients(x, phi, bias, alpha, variant=variant)
        times.append(time.perf_counter() - t0)
    return 1e3 * float(np.median(times))


def main() -> None:
    torch.set_num_threads(1)
    rng = np.random.default_rng(0)
    print(f"load average {os.getloadavg()[0]:.1f}; torch {torch.__version__}, 1 thread")
    print("err = max over tokens of |row (col) sum - 1|, float32")
    print("| n | lite row err | lite col err | sinkhorn row err | sinkhorn col err "
          "| coefficients mhc ms | coefficients mhc-lite ms |")
    print("|---|---|---|---|---|---|---|")
    for n in (2, 3, 4, 5, 6):
        lite = rng.uniform(-1, 1, (SCALES.size, math.factorial(n))) * SCALES[:, None]
        sk = rng.uniform(-1, 1, (SCALES.size, n, n)) * SCALES[:, None, None]
        r_lite = mc.birkhoff_res(torch.from_numpy(lite.astype(np.float32)), n).numpy()
        r_sk = mc.sinkhorn(torch.from_numpy(sk.astype(np.float32))).numpy()
        (lr, lc), (sr, sc) = sums_error(r_lite), sums_error(r_sk)
        print(f"| {n} | {lr:.1e} | {lc:.1e} | {sr:.1e} | {sc:.1e} | {timing('mhc', n):.2f} "
              f"| {timing('mhc-lite', n):.2f} |")


if __name__ == "__main__":
    main()
