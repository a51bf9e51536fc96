"""Convert an mlx-lm decoder (Llama, Qwen2, Qwen3, ...: blocks with input_layernorm ->
self_attn -> + residual -> post_attention_layernorm -> mlp -> + residual) to mHC, in place.

The same design as `mhc_core_torch.convert` (see backends/mhc_core_torch/integrations/blocks.py):
each block's class is swapped for `MHC<Block>`, whose call runs its attention and MLP
residuals as `mhc_core_mlx.MHC` steps; the first block expands the embedding into n streams,
the last reduces them (mean) before the model's final norm; the warm start is exact.
Blocks whose __call__ does more than the two plain residual adds are refused by name
(mhc_core.forward_check); Granite's `x + r * residual_multiplier` scales each branch.

Parameter names match the torch side (`model.layers.0.attn_mhc.phi`, ...; mlx-lm keeps
Hugging Face's names for the rest), so the weights of a Llama converted and trained with
`mhc_core_torch.convert` load into an mlx-lm Llama converted here
(`model.load_weights(path_to_model_safetensors)`) and give the same logits.

The MHC's `layer` is a plain Python object (not an nn.Module), so the block's modules
are not listed twice in `parameters()`; the block hands it the attention mask and KV
cache of the current call.
"""
from __future__ import annotations

import inspect
import warnings

import mlx.core as mx
import mlx.nn as nn

import mhc_core
from mhc_core import checks
from mhc_core.forward_check import read_forward

from ..modules import MHC

_CHILDREN = {"input_layernorm", "self_attn", "post_attention_layernorm", "mlp"}


class _Branch:
    """f of one residual branch: h [..., C] -> [..., C], calling the block's own modules."""

    def __init__(self, block, kind: str):
        self.block, self.kind, self.mask, self.cache = block, kind, None, None

    def __call__(self, h: mx.array) -> mx.array:
        b = self.block
        if self.kind == "attn":
            y = b.self_attn(b.input_layernorm(h), self.mask, self.cache)
        else:
            y = b.mlp(b.post_attention_layernorm(h))
        scale = getattr(b, "mhc_branch_scale", None)  # Granite's residual_multiplier
        return y if scale is None else y * scale


class MHCBlockMixin:
    def __call__(self, x: mx.array, mask=None, cache=None) -> mx.array:
        n, c = self.mhc_n, self.mhc_dim
        if self.mhc_expand:
            x = mhc_core.expand_streams(x, n)  # [B, T, n, C]
        elif x.ndim < 2 or tuple(x.shape[-2:]) != (n, c):
            raise ValueError(f"converted block {self.mhc_index} expects streams [..., n={n}, C={c}], got {x.shape}")
        branch = self.attn_mhc.layer
        branch.mask, branch.cache = mask, cache
        try:
            x = self.attn_mhc(x)  # [B, T, n, C]
        finally:
            branch.mask = branch.cache = None
        x = self.mlp_mhc(x)
        return mhc_core.reduce_streams(x) if self.mhc_reduce else x


_CLASSES: dict[type, type] = {}


def _layers(model) -> list:
    inner = getattr(model, "model", model)
    layers = getattr(inner, "layers", None)
    if not isinstance(layers, list) or not layers:
        raise ValueError(f"convert: {type(model).__name__} has no list of decoder layers at .model.layers")
    return layers


def _call_parameters(cls: type) -> list[str]:
    """The names of cls.__call__'s parameters after self (*args / **kwargs as '*name' / '**name')."""
    marks = {inspect.Parameter.VAR_POSITIONAL: "*", inspect.Parameter.VAR_KEYWORD: "**"}
    params = list(inspect.signature(cls.__call__).parameters.values())[1:]
    return [marks.get(p.kind, "") + p.name for p in params]


def convert(model, n: int = 4, *, variant: str = "mhc", reduce: str = "mean", init: dict | None = None, **cfg):
    """Convert an mlx-lm decoder model in place; returns it. Settings as mhc_core_torch.convert
    (reduce: only the mean here; sinkhorn_eps defaults to 0 for an exact warm start at any depth)."""
    n = checks.streams(n)
    if checks.variant(variant) == "residual" and n != 1:
        raise ValueError(f"variant 'residual' keeps one stream: n must be 1, got n={n}")
    if reduce not in ("mean", "head"):
        raise ValueError(f"reduce must be one of ('mean', 'head'), got {reduce!r}")
    if reduce != "mean":
        raise ValueError(f"reduce={reduce!r} (a learned StreamHead) is torch only; mlx convert reduces with 'mean'")
    known = sorted(mhc_core.MHCConfig().as_dict())
    unknown = set(cfg) - set(known)
    if unknown:
        raise TypeError(f"unknown mHC settings {sorted(unknown)}; expected some of {known}")
    full = mhc_core.MHCConfig(**{"sinkhorn_eps": 0.0, **cfg}).as_dict()
    layers, readings = _layers(model), []
    for i, block in enumerate(layers):
        if isinstance(block, MHCBlockMixin):
            raise ValueError("convert: this model is already converted to mHC")
        kids = set(block.children())
        if kids != _CHILDREN:
            raise ValueError(f"convert: layer {i} ({type(block).__name__}) has children {sorted(kids)}; "
                             f"expected exactly {sorted(_CHILDREN)} (a pre-LN decoder block)")
        if not callable(block):
            raise ValueError(f"convert: layer {i} ({type(block).__module__}.{type(block).__name__}) has no __call__: "
                             "the model runs its children itself, so a converted block would never run")
        called_with = _call_parameters(type(block))
        if called_with[1:] != ["mask", "cache"][:len(called_with) - 1]:
            raise ValueError(f"convert: layer {i} ({type(block).__module__}.{type(block).__name__}) is called with "
                             f"{called_with}; a converted block takes (x, mask, cache) and returns the hidden state")
        reading = read_forward(type(block), "__call__")
        readings.append(reading)
        if reading.problems:
            raise ValueError(f"convert: layer {i} ({type(block).__module__}.{type(block).__name__}) has the children "
                             "of a pre-LN decoder block, but its __call__ does more than the plain residual adds "
                             f"mHC reproduces: {list(reading.problems)}; converting it would change the logits")
    unread = sorted({type(b).__name__ for b, r in zip(layers, readings) if not r.readable})
    if unread:
        warnings.warn(f"mHC: {unread}: __call__ has no readable source, so these blocks are converted by structure "
                      "only; check the warm start, e.g. compare logits with the original", stacklevel=2)
    for i, (block, reading) in enumerate(zip(layers, readings)):
        if reading.scaled:
            block.mhc_branch_scale = float(block.residual_multiplier)
        c = int(block.input_layernorm.weight.shape[-1])
        block.attn_mhc = MHC(_Branch(block, "attn"), n, c, variant=variant, init=init, **full)
        block.mlp_mhc = MHC(_Branch(block, "mlp"), n, c, variant=variant, init=init, **full)
        block.mhc_n, block.mhc_dim, block.mhc_index = n, c, i
        block.mhc_expand, block.mhc_reduce = i == 0, i == len(layers) - 1
        cls = type(block)
        if cls not in _CLASSES:
            _CLASSES[cls] = type(f"MHC{cls.__name__}", (MHCBlockMixin, cls), {"__module__": __name__})
        block.__class__ = _CLASSES[cls]
    model.mhc = {"format": 1, "n": n, "variant": variant, "reduce": "mean", "config": full}
    return model


def mhc_steps(model) -> list[tuple[str, MHC]]:
    """(name, MHC) of every converted step, e.g. ('model.layers.0.attn_mhc', ...)."""
    prefix = "model.layers" if hasattr(model, "model") else "layers"
    return [(f"{prefix}.{i}.{b}_mhc", getattr(block, f"{b}_mhc"))
            for i, block in enumerate(_layers(model)) for b in ("attn", "mlp")]


def _mlx_lm_settings(raw: dict) -> dict:
    """config.json entries transformers (>= 5) names otherwise than mlx-lm's Llama-family
    ModelArgs, under mlx-lm's names: `rope_parameters` -> `rope_theta` / `rope_scaling`
    (mlx-lm reads only the top-level keys and falls back to its own defaults, e.g. Qwen2's
    1e6) and `num_local_experts` -> `num_experts` (Qwen3-MoE)."""
    out = {}
    rope = raw.get("rope_parameters")
    if isinstance(rope, dict) and "rope_theta" in rope:
        if "rope_theta" not in raw:
            out["rope_theta"] = rope["rope_theta"]
        kind = rope.get("rope_type", rope.get("type", "default"))
        if kind != "default" and raw.get("rope_scaling") is None:
            out["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}
    if "num_local_experts" in raw and "num_experts" not in raw:
        out["num_experts"] = raw["num_local_experts"]
    return out


def load_converted(path):
    """An mlx-lm model from a directory written by `save_pretrained` after
    `mhc_core_torch.convert` (config.json with an "mhc" entry, model*.safetensors): the
    architecture is built by mlx-lm, converted with the recorded settings, and every
    weight (mHC ones included) is loaded strictly."""
    import glob
    import json
    import os
    from pathlib import Path

    from mlx_lm.utils import load_model

    with open(os.path.join(os.fspath(path), "config.json")) as fh:
        raw = json.load(fh)
    settings = raw.get("mhc")
    if not settings:
        raise ValueError(f"load_converted: {path}/config.json has no 'mhc' entry")
    if settings.get("format") != 1 or settings.get("reduce") != "mean":
        raise ValueError(f"load_converted: mlx supports format 1 with reduce='mean', got {settings}")
    model, _ = load_model(Path(os.fspath(path)), model_config=_mlx_lm_settings(raw), strict=False)
    # convert makes one stream segment over all decoder layers (expand at the first, reduce
    # at the last); a file that converted other blocks or several segments mixes differently
    segments = [list(seg.get("blocks", [])) for seg in settings.get("segments", [])]
    every = [f"model.layers.{i}" for i in range(len(_layers(model)))]
    if segments != [every]:
        raise ValueError(f"load_converted: mlx converts one segment of every decoder layer {every}; "
                         f"{path}/config.json records the segments {segments}")
    convert(model, settings["n"], variant=settings["variant"], **settings["config"])
    weights = {}
    for f in sorted(glob.glob(os.path.join(os.fspath(path), "model*.safetensors"))):
        weights.update(mx.load(f))
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    model.load_weights(list(weights.items()), strict=True)
    return model
