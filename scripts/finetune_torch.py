"""The torch side of scripts/finetune.py and scripts/compare_generation.py: load / convert a
transformers model, one AdamW step with separate learning rates for the mixing parameters
(phi, bias, alpha) and the rest, the mixing drift on a batch, checkpoints, save."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

import mhc_core_torch
from mhc_core.experiments.drift import step_drift
from mhc_core_torch.integrations.analysis import steps_of
from mhc_core_torch.modules import MHC, StreamHead
from mhc_core_torch.training import checkpoint
from mhc_core_torch.training.precision import cast_except_mixing

from finetune_data import converted_config, copy_tokenizer, unsupported_family


def load_original(model_dir: str):
    """The unconverted model of a save_pretrained directory (float32, eval)."""
    from transformers import AutoModelForCausalLM

    try:
        return AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    except (ValueError, KeyError) as err:
        raise unsupported_family(model_dir, err) from None


def load_mhc(model_dir: str | None = None, convert_from: str | None = None, n: int = 4):
    """A converted checkpoint, or the Hugging Face model at `convert_from` converted now."""
    if convert_from is not None:
        model = load_original(convert_from)
        try:
            return mhc_core_torch.convert(model, n=n)
        except ValueError as err:
            raise unsupported_family(convert_from, err) from None
    converted_config(model_dir)
    return mhc_core_torch.load_converted(model_dir, dtype=torch.float32).eval()


def mixing_names(model) -> set[str]:
    """Names of phi / bias / alpha of every MHC and StreamHead in `model`."""
    out = set()
    for prefix, m in model.named_modules():
        if isinstance(m, (MHC, StreamHead)):
            out.update(f"{prefix}.{k}" for k, _ in m.named_parameters(recurse=False))
    return out


@torch.no_grad()
def logits(model, ids: np.ndarray) -> np.ndarray:
    """ids [B, T] -> logits [B, T, V] as float32 numpy."""
    return model(input_ids=torch.as_tensor(ids, dtype=torch.long)).logits.float().numpy()


class Engine:
    """Fine-tuning state of one torch model."""

    backend = "torch"

    def __init__(self, model, *, lr: float, mixing_lr: float, weight_decay: float = 0.0,
                 bf16: bool = False, grad_checkpointing: bool = False):
        self.model = model
        if bf16:
            cast_except_mixing(model, torch.bfloat16)
        if grad_checkpointing:
            if hasattr(model, "activation_checkpointing_enable"):  # transformers >= 5.2x
                model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model.train()
        mixing = mixing_names(model)
        if not mixing:
            raise ValueError("the model has no mHC mixing parameters (phi / bias / alpha): is it converted?")
        named = [(k, p) for k, p in model.named_parameters() if p.requires_grad]
        self.mixing = [k for k, _ in named if k in mixing]
        self.opt = torch.optim.AdamW([
            {"params": [p for k, p in named if k in mixing], "lr": mixing_lr, "weight_decay": 0.0},
            {"params": [p for k, p in named if k not in mixing], "lr": lr, "weight_decay": weight_decay},
        ])

    def step(self, batch: np.ndarray) -> float:
        """One update on batch [B, T + 1] (next-token loss); returns the loss."""
        ids = torch.as_tensor(batch, dtype=torch.long)
        self.opt.zero_grad(set_to_none=True)
        out = self.model(input_ids=ids[:, :-1]).logits
        loss = F.cross_entropy(out.float().reshape(-1, out.shape[-1]), ids[:, 1:].reshape(-1))
        loss.backward()
        self.opt.step()
        return float(loss.item())

    @torch.no_grad()
    def drift(self, batch: np.ndarray) -> list[dict]:
        """Per mHC step (execution order): mhc_core.experiments.drift.step_drift on `batch`."""
        records = []
        hooks = [m.register_forward_hook(lambda mod, a, out, name=name: records.append((name, mod, a[0], out)))
                 for name, m in steps_of(self.model)]
        was = self.model.training
        self.model.eval()
        try:
            self.model(input_ids=torch.as_tensor(batch[:, :-1], dtype=torch.long))
        finally:
            self.model.train(was)
            for h in hooks:
                h.remove()
        return [{"layer": name, **step_drift(x.float().numpy(), out.float().numpy(), mod.phi.detach().numpy(),
                                             mod.bias.detach().numpy(), mod.alpha.detach().numpy(),
                                             variant=mod.variant, **mod._cfg)}
                for name, mod, x, out in records]

    def steps(self) -> list[tuple[str, int, dict]]:
        """(name, n, MHCConfig dict) of every mHC step."""
        return [(name, m.n, dict(m._cfg)) for name, m in steps_of(self.model)]

    def mixing_state(self) -> dict[str, np.ndarray]:
        params = dict(self.model.named_parameters())
        return {k: params[k].detach().float().numpy().copy() for k in self.mixing}

    @torch.no_grad()
    def add_to_mixing(self, deltas: dict[str, np.ndarray]) -> None:
        """Add numpy `deltas` (name -> array) to mixing parameters."""
        params = dict(self.model.named_parameters())
        for k, d in deltas.items():
            params[k].add_(torch.as_tensor(d, dtype=params[k].dtype))

    def capture(self, meta: dict):
        return checkpoint.capture(self.model, self.opt, meta)

    def restore(self, tensors: dict, meta: dict) -> None:
        checkpoint.restore(self.model, self.opt, tensors, meta)

    def save(self, out_dir: str, source_dir: str) -> None:
        """save_pretrained into `out_dir` (config.json keeps the 'mhc' entry), with the
        source's tokenizer files."""
        self.model.save_pretrained(out_dir)
        copy_tokenizer(source_dir, out_dir)
