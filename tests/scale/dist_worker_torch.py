"""One rank of the distributed test (launched by torchrun from test_distributed_torch.py).

Trains the tiny LM on the same global batches as the single-process reference in the
test, with this rank's half of each batch, under DDP or FSDP2: once with SGD and once with
Adam (STEPS steps each), then rank 0 writes to OUT (.npz) the first step's full gradients
and the final full parameters of both runs, and the global-mean losses.

    python -m torch.distributed.run --standalone --nproc_per_node 2 dist_worker_torch.py ddp OUT
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

from mhc_core.experiments.lm_config import LMConfig
from mhc_core.experiments.tasks import TaskStream
from mhc_core_torch.lm import TinyLM, masked_cross_entropy
from mhc_core_torch.training import distributed as D

CFG = LMConfig(vocab=16, dim=16, n_layers=2, n_heads=2, seq_len=8, variant="mhc", n=4, phi_std=0.02, seed=3)
STEPS, BATCH, LR, SGD_LR = 3, 4, 1e-2, 0.5


def batches():
    data = TaskStream("incrementing", vocab=CFG.vocab, seq_len=CFG.seq_len, batch_size=BATCH, seed=11)
    return [data.next() for _ in range(STEPS)]


def _full(t: torch.Tensor) -> np.ndarray:
    return (t.full_tensor() if hasattr(t, "full_tensor") else t).detach().cpu().numpy().copy()


def train(model: torch.nn.Module, forward, info: D.DistInfo, optimizer: str):
    """STEPS steps of `optimizer` ('sgd' | 'adam'); forward(tokens) -> logits.

    Returns (global-mean loss per step, {name: full gradient of the first step})."""
    inner = model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
    opt = (torch.optim.SGD(model.parameters(), lr=SGD_LR) if optimizer == "sgd"
           else torch.optim.Adam(model.parameters(), lr=LR))
    losses, first_grads = [], {}
    for step, (inputs, targets, mask) in enumerate(batches()):
        x, y = D.shard_batch((torch.as_tensor(inputs, dtype=torch.long), torch.as_tensor(targets, dtype=torch.long)), info)
        opt.zero_grad(set_to_none=True)
        loss = masked_cross_entropy(forward(x), y, torch.as_tensor(mask))
        loss.backward()
        if step == 0:
            first_grads = {k: _full(p.grad) for k, p in inner.named_parameters()}
        opt.step()
        losses.append(D.mean_over_ranks(loss.item(), info))
    return losses, first_grads


def build(mode: str, info: D.DistInfo):
    """(model, forward) for 'ddp' / 'fsdp' (or 'single': the plain model)."""
    model = TinyLM(CFG)
    if mode == "ddp":
        wrapped = D.wrap_ddp(model, info)
        return wrapped, wrapped
    if mode == "fsdp":
        D.apply_fsdp(model, info)
    elif mode != "single":
        raise SystemExit(f"mode must be ddp, fsdp or single, got {mode!r}")
    return model, model


def main(mode: str, out: str) -> None:
    torch.set_num_threads(1)
    info = D.init_from_env()
    result = {"__world__": np.array(info.world)}
    for optimizer in ("sgd", "adam"):
        model, forward = build(mode, info)
        losses, grads = train(model, forward, info, optimizer)
        result[f"{optimizer}/__losses__"] = np.array(losses)
        result.update({f"{optimizer}/grad/{k}": v for k, v in grads.items()})
        result.update({f"{optimizer}/param/{k}": v.numpy() for k, v in D.full_state(model).items()})
    if info.is_main:
        np.savez(out, **result)
    D.shutdown()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
    # Everything is written and the group destroyed; skip the interpreter's teardown, where
    # torch's gloo threads can still abort a rank ("terminate called without an active
    # exception", about 1 run in 10 under FSDP here) after the work has succeeded.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
