"""One rank of the MLX distributed test (launched by `mlx.launch -n 2 --backend ring`).

Same model, data and schedule as dist_worker_torch.py, on the MLX TinyLM: each rank takes
its half of every global batch, gradients are averaged with `mlx.nn.average_gradients`
(mhc_core_mlx.training.distributed.average), then SGD or Adam steps. Rank 0 writes the
first step's averaged gradients, the final parameters and the global-mean losses to OUT.
With mode 'single' (plain python) it is the one-process reference.
"""
from __future__ import annotations

import sys

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

from mhc_core.experiments.lm_config import LMConfig
from mhc_core.experiments.tasks import TaskStream
from mhc_core_mlx.lm import TinyLM, masked_cross_entropy
from mhc_core_mlx.training import distributed as D

CFG = LMConfig(vocab=16, dim=16, n_layers=2, n_heads=2, seq_len=8, variant="mhc", n=4, phi_std=0.02, seed=3)
STEPS, BATCH, LR, SGD_LR = 3, 4, 1e-2, 0.5


def train(info: D.DistInfo, optimizer: str):
    """(model, global-mean losses, {name: first-step averaged gradient})."""
    model = TinyLM(CFG)
    opt = optim.SGD(learning_rate=SGD_LR) if optimizer == "sgd" else optim.Adam(learning_rate=LR, bias_correction=True)
    data = TaskStream("incrementing", vocab=CFG.vocab, seq_len=CFG.seq_len, batch_size=BATCH, seed=11)

    def loss_fn(x, y, m):
        return masked_cross_entropy(model(x), y, m)

    value_and_grad = nn.value_and_grad(model, loss_fn)
    losses, first = [], {}
    for step in range(STEPS):
        inputs, targets, mask = data.next()
        x, y = D.shard_batch((mx.array(inputs), mx.array(targets)), info)
        loss, grads = value_and_grad(x, y, mx.array(mask))
        grads = D.average(grads, info)
        if step == 0:
            first = {k: np.array(v) for k, v in tree_flatten(grads)}
        opt.update(model, grads)
        mx.eval(model.parameters(), opt.state)
        losses.append(D.mean_over_ranks(loss.item(), info))
    return model, losses, first


def run(info: D.DistInfo) -> dict[str, np.ndarray]:
    out = {"__world__": np.array(info.world)}
    for optimizer in ("sgd", "adam"):
        model, losses, grads = train(info, optimizer)
        out[f"{optimizer}/__losses__"] = np.array(losses)
        out.update({f"{optimizer}/grad/{k}": v for k, v in grads.items()})
        out.update({f"{optimizer}/param/{k}": np.array(v) for k, v in tree_flatten(model.parameters())})
    return out


def main(out_path: str) -> None:
    info = D.init_from_env()
    result = run(info)
    if info.is_main:
        np.savez(out_path, **result)


if __name__ == "__main__":
    main(sys.argv[1])
