"""A minimal resumable training loop (the depth sweep's Trainer and data, our checkpoints),
run as a subprocess by test_resume.py and killed with SIGKILL at random points.

    python resume_worker.py --backend torch --out DIR --steps 24 --every 4

Re-running the same command resumes from the newest valid checkpoint in DIR/checkpoints
and appends to DIR/metrics.jsonl (cut back to that checkpoint first). At the end it
writes DIR/final.npz (parameters) and DIR/done.json.
"""
from __future__ import annotations

import argparse
import json
import os

import numpy as np

import backend_registry as registry
from mhc_core.experiments.checkpoints import RunCheckpointer
from mhc_core.experiments.lm_config import LMConfig, init_lm_params
from mhc_core.experiments.tasks import TaskStream

CFG = LMConfig(vocab=16, dim=16, n_layers=2, n_heads=2, seq_len=8, variant="mhc", n=4, phi_std=0.02, seed=5)
BATCH, LR = 4, 3e-3


def backend(name: str):
    """(lm module, checkpoint module, params-as-numpy function)."""
    if name == "torch":
        import torch

        torch.set_num_threads(1)
        from mhc_core_torch import lm
        from mhc_core_torch.training import checkpoint

        return lm, checkpoint, lambda m: {k: v.detach().numpy().copy() for k, v in m.named_parameters()}
    from mlx.utils import tree_flatten

    from mhc_core_mlx import lm
    from mhc_core_mlx.training import checkpoint

    return lm, checkpoint, lambda m: {k: np.array(v) for k, v in tree_flatten(m.parameters())}


def main(argv=None) -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--backend", choices=registry.training_names(), default="torch")
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, default=24)
    p.add_argument("--every", type=int, default=4)
    args = p.parse_args(argv)
    lm, ckpt_mod, params_of = backend(args.backend)
    os.makedirs(args.out, exist_ok=True)

    trainer = lm.Trainer(CFG, init_lm_params(CFG), lr=LR)
    data = TaskStream("incrementing", vocab=CFG.vocab, seq_len=CFG.seq_len, batch_size=BATCH, seed=9)
    ckpt = RunCheckpointer(args.out, every=args.every)
    loaded = ckpt.resume()
    if loaded.found:
        ckpt_mod.restore(trainer.model, trainer.opt, loaded.tensors, loaded.meta)
        data.position = loaded.meta["data_position"]
        print(f"resumed at step {loaded.step}", flush=True)

    def capture():
        return ckpt_mod.capture(trainer.model, trainer.opt, meta={"data_position": data.position})

    with ckpt.open_log() as log:
        for step in range(loaded.step, args.steps):
            inputs, targets, mask = data.next()
            out = trainer.step(inputs, targets, mask, lr=LR)
            log.write(json.dumps({"step": step, "loss": out["loss"], "grad_norm": out["grad_norm"]}) + "\n")
            log.flush()
            ckpt.step_done(step + 1, capture, final=step + 1 == args.steps)
    np.savez(os.path.join(args.out, "final.npz"), **params_of(trainer.model))
    with open(os.path.join(args.out, "done.json"), "w") as f:
        json.dump({"steps": args.steps, "resumed_from": loaded.step}, f)


if __name__ == "__main__":
    main()
