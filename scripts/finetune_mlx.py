"""The MLX side of scripts/finetune.py and scripts/compare_generation.py: an mlx-lm model
converted by `mhc_core_mlx.convert` (or a converted checkpoint loaded with
`mhc_core_mlx.load_converted`), AdamW with separate learning rates for the mixing
parameters and the rest (`mlx.optimizers.MultiOptimizer`), the mixing drift on a batch,
checkpoints, and a save that both backends' `load_converted` read."""
from __future__ import annotations

import json
import os
from pathlib import Path

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten, tree_unflatten

import mhc_core_mlx
from mhc_core.experiments.drift import step_drift
from mhc_core_mlx.modules import MHC, StreamHead
from mhc_core_mlx.training import checkpoint
from mhc_core_mlx.training.precision import cast_except_mixing

from finetune_data import converted_config, copy_tokenizer, read_config, unsupported_family


def load_original(model_dir: str):
    """The unconverted mlx-lm model of a Hugging Face directory."""
    from mlx_lm.utils import load_model

    try:
        model, _ = load_model(Path(model_dir))
    except (ValueError, KeyError, TypeError, ImportError, AttributeError) as err:
        raise unsupported_family(model_dir, err) from None
    return model


def load_mhc(model_dir: str | None = None, convert_from: str | None = None, n: int = 4):
    """A converted checkpoint, or the Hugging Face model at `convert_from` converted now."""
    if convert_from is not None:
        model = load_original(convert_from)
        try:
            return mhc_core_mlx.convert(model, n=n)
        except ValueError as err:
            raise unsupported_family(convert_from, err) from None
    converted_config(model_dir)
    return mhc_core_mlx.load_converted(model_dir)


def logits(model, ids: np.ndarray) -> np.ndarray:
    """ids [B, T] -> logits [B, T, V] as float32 numpy."""
    out = model(mx.array(np.asarray(ids, dtype=np.int32)))
    return np.array(out.astype(mx.float32))


def mixing_names(model) -> set[str]:
    out = set()
    for prefix, m in model.named_modules():
        if isinstance(m, (MHC, StreamHead)):
            out.update(f"{prefix}.{k}" for k in ("phi", "bias", "alpha") if k in m)
    return out


def _checkpointed(block):
    """Give `block` (one decoder layer) a class whose call runs under mx.checkpoint."""
    cls = type(block)
    call = cls.__call__

    def __call__(self, x, *args, **kwargs):
        def inner(params, x):
            self.update(params)
            return call(self, x, *args, **kwargs)

        return mx.checkpoint(inner)(self.trainable_parameters(), x)

    block.__class__ = type(cls.__name__, (cls,), {"__call__": __call__, "__module__": cls.__module__})


class _Recording(MHC):
    """MHC that keeps its last (input, output) in `sink[id(self)]` (drift measurement only)."""

    sink: dict = {}

    def __call__(self, x):
        out = MHC.__call__(self, x)
        _Recording.sink[id(self)] = (x, out)
        return out


class Engine:
    """Fine-tuning state of one mlx-lm model."""

    backend = "mlx"

    def __init__(self, model, *, lr: float, mixing_lr: float, weight_decay: float = 0.0,
                 bf16: bool = False, grad_checkpointing: bool = False):
        self.model = model
        if bf16:
            cast_except_mixing(model, mx.bfloat16)
        if grad_checkpointing:
            for block in model.layers:
                _checkpointed(block)
        model.train()
        self.mixing = sorted(mixing_names(model))
        if not self.mixing:
            raise ValueError("the model has no mHC mixing parameters (phi / bias / alpha): is it converted?")
        mixing = set(self.mixing)
        self.opt = optim.MultiOptimizer(
            [optim.AdamW(learning_rate=mixing_lr, weight_decay=0.0, bias_correction=True),
             optim.AdamW(learning_rate=lr, weight_decay=weight_decay, bias_correction=True)],
            [lambda path, _: path in mixing])

        def loss_fn(model, ids):
            out = model(ids[:, :-1])
            return nn.losses.cross_entropy(out.astype(mx.float32), ids[:, 1:], reduction="mean")

        self._value_and_grad = nn.value_and_grad(model, loss_fn)

    def step(self, batch: np.ndarray) -> float:
        loss, grads = self._value_and_grad(self.model, mx.array(batch.astype(np.int32)))
        self.opt.update(self.model, grads)
        mx.eval(loss, self.model.parameters(), self.opt.state)
        return float(loss.item())

    def drift(self, batch: np.ndarray) -> list[dict]:
        steps = mhc_core_mlx.integrations.mhc_steps(self.model)
        classes = [type(m) for _, m in steps]
        _Recording.sink.clear()
        for _, m in steps:
            m.__class__ = _Recording
        try:
            self.model(mx.array(batch[:, :-1].astype(np.int32)))
        finally:
            for (_, m), cls in zip(steps, classes):
                m.__class__ = cls
        out = []
        for name, m in steps:
            x, y = _Recording.sink.pop(id(m))
            out.append({"layer": name, **step_drift(np.array(x.astype(mx.float32)), np.array(y.astype(mx.float32)),
                                                    np.array(m.phi), np.array(m.bias), np.array(m.alpha),
                                                    variant=m.variant, **m.config.as_dict())})
        return out

    def steps(self) -> list[tuple[str, int, dict]]:
        """(name, n, MHCConfig dict) of every mHC step."""
        return [(name, m.n, m.config.as_dict()) for name, m in mhc_core_mlx.integrations.mhc_steps(self.model)]

    def mixing_state(self) -> dict[str, np.ndarray]:
        params = dict(tree_flatten(self.model.parameters()))
        return {k: np.array(params[k].astype(mx.float32)) for k in self.mixing}

    def add_to_mixing(self, deltas: dict[str, np.ndarray]) -> None:
        """Add numpy `deltas` (name -> array) to mixing parameters."""
        params = dict(tree_flatten(self.model.parameters()))
        self.model.update(tree_unflatten([(k, params[k] + mx.array(d).astype(params[k].dtype))
                                          for k, d in deltas.items()]))
        mx.eval(self.model.parameters())

    def capture(self, meta: dict):
        return checkpoint.capture(self.model, self.opt, meta)

    def restore(self, tensors: dict, meta: dict) -> None:
        checkpoint.restore(self.model, self.opt, tensors, meta)

    def save(self, out_dir: str, source_dir: str) -> None:
        """config.json (the source's, with the 'mhc' entry torch's save_pretrained writes)
        and model.safetensors (Hugging Face names, mHC ones as on torch)."""
        os.makedirs(out_dir, exist_ok=True)
        config = read_config(source_dir)
        if not config.get("mhc"):
            settings = dict(self.model.mhc)
            settings["segments"] = [{"recipe": "pre_norm_decoder",
                                     "blocks": [f"model.layers.{i}" for i in range(len(self.model.layers))]}]
            config["mhc"] = settings
        with open(os.path.join(out_dir, "config.json"), "w") as f:
            json.dump(config, f, indent=2)
        mx.save_safetensors(os.path.join(out_dir, "model.safetensors"), dict(tree_flatten(self.model.parameters())),
                            metadata={"format": "mlx"})
        copy_tokenizer(source_dir, out_dir)
