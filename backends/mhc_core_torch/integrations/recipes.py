"""Recipes: how a known residual block splits into the sub-layers mHC wraps.

A block computes `x -> x + f_attn(x) -> ... + f_mlp(...)` (pre-LN) or
`x -> LN(x + f(x))` (post-LN). A recipe names each residual branch and says how to call
its f on a single C-vector stream `h [..., C]`, using the block's own modules (norm,
attention, MLP, dropout), so the weights stay where they are and keep their names.

    recipe            blocks (matched by structure)           branches
    pre_norm_decoder  Llama, Qwen2, Qwen3, Mistral, Qwen3-MoE attn: self_attn(input_layernorm(h))
                      (children exactly input_layernorm,      mlp:  mlp(post_attention_layernorm(h))
                      self_attn, post_attention_layernorm, mlp)
    vit               transformers ViTLayer                   attn: dropout(attention(layernorm_before(h)))
                                                              mlp:  dropout(mlp(layernorm_after(h)))
    bert_post_norm    transformers BertLayer (post-LN)        attn: drop(dense(self(h))), then LayerNorm per stream
                                                              mlp:  drop(dense(intermediate(h))), then LayerNorm per stream

Post-LN (BERT): the original computes `LN(x + f(x))`, the residual add sits inside
`BertSelfOutput` / `BertOutput`. The mHC version is
`x' = LN(res^T x + post * f(pre x))` with the same LN applied to each stream. With equal
streams and the warm-start coefficients this is the original block exactly; after
training the streams are normalised one by one (the original normalises its single
residual), which is the natural post-LN reading of mHC, not something the paper tests.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from mhc_core.forward_check import ForwardReading, read_forward


def first(out):
    """Attention modules return (output, weights); MoE blocks may return (output, logits)."""
    return out[0] if isinstance(out, (tuple, list)) else out


def resolve(module: nn.Module, path: str) -> nn.Module:
    """module.a.b for path 'a.b'."""
    for part in path.split("."):
        module = getattr(module, part)
    return module


@dataclass(frozen=True)
class Branch:
    """One residual branch of a block.

    name: 'attn' or 'mlp'; its MHC is registered on the block as `<name>_mhc`.
    call(block, h, kwargs) -> y: the sub-layer f on one stream, h and y [..., C].
    uses_kwargs: whether f receives the block's forward kwargs (masks, positions, cache).
    post_norm: dotted path of a norm applied to each stream after the step (post-LN), or None.
    describe: one line for the module repr.
    """

    name: str
    call: Callable[[nn.Module, torch.Tensor, dict], torch.Tensor]
    uses_kwargs: bool
    post_norm: str | None
    describe: str


@dataclass(frozen=True)
class Recipe:
    """name; branches in forward order; matches(block) -> bool; dim(block) -> C;
    tested: class names our tests check against transformers; prepare(kwargs) -> kwargs
    for the branches that take them (raises on inputs the recipe cannot handle);
    read_forward(cls) -> ForwardReading, or None: what a matched class's forward does
    beyond the recipe (mhc_core.forward_check), read before converting."""

    name: str
    branches: tuple[Branch, ...]
    matches: Callable[[nn.Module], bool]
    dim: Callable[[nn.Module], int]
    tested: tuple[str, ...]
    prepare: Callable[[dict], dict] = lambda kwargs: kwargs
    read_forward: Callable[[type], ForwardReading] | None = None


def scaled(block: nn.Module, y: torch.Tensor) -> torch.Tensor:
    """y times the block's branch scale (`mhc_branch_scale`, set by convert_block for
    layers that add `residual + h * residual_multiplier`, e.g. Granite), or y as is."""
    scale = getattr(block, "mhc_branch_scale", None)
    return y if scale is None else y * scale


def _children(block: nn.Module) -> set[str]:
    return {name for name, _ in block.named_children()}


def _norm_dim(norm: nn.Module) -> int:
    """C of a norm layer: its weight's last axis, or its normalized_shape for a norm without
    weights (OLMo's LayerNorm), or its hidden_size / dim attribute."""
    weight = getattr(norm, "weight", None)
    if isinstance(weight, torch.Tensor):
        return int(weight.shape[-1])
    for attr in ("normalized_shape", "hidden_size", "dim"):
        value = getattr(norm, attr, None)
        if isinstance(value, (tuple, list, torch.Size)) and len(value) > 0:
            return int(value[-1])
        if isinstance(value, int):
            return value
    raise ValueError(f"cannot tell the hidden size C from {type(norm).__name__}: it has no weight, "
                     "normalized_shape, hidden_size or dim")


# --- pre-LN decoder layers (Llama family) ------------------------------------------------
_DECODER_CHILDREN = {"input_layernorm", "self_attn", "post_attention_layernorm", "mlp"}

PRE_NORM_DECODER = Recipe(
    name="pre_norm_decoder",
    branches=(
        Branch("attn", lambda b, h, kw: scaled(b, first(b.self_attn(b.input_layernorm(h), **kw))), True, None,
               "self_attn(input_layernorm(h))"),
        Branch("mlp", lambda b, h, kw: scaled(b, first(b.mlp(b.post_attention_layernorm(h)))), False, None,
               "mlp(post_attention_layernorm(h))"),
    ),
    # Exactly these children: Gemma's sandwich norms, Phi-3's residual dropouts or
    # Cohere's parallel block have more (or fewer) and a different forward. Layers with
    # these children whose forward still differs (MiniMax, Molmo2, ...) are refused by
    # read_forward; Granite's residual_multiplier becomes the branch scale.
    matches=lambda b: _children(b) == _DECODER_CHILDREN,
    dim=lambda b: _norm_dim(b.input_layernorm),
    tested=("LlamaDecoderLayer", "Qwen2DecoderLayer", "Qwen3DecoderLayer", "MistralDecoderLayer",
            "Qwen3MoeDecoderLayer", "GraniteDecoderLayer", "OlmoDecoderLayer"),
    read_forward=read_forward,
)


# --- ViT (pre-LN encoder) ------------------------------------------------------------------
VIT = Recipe(
    name="vit",
    branches=(
        Branch("attn", lambda b, h, kw: b.dropout(first(b.attention(b.layernorm_before(h), **kw))), True, None,
               "dropout(attention(layernorm_before(h)))"),
        Branch("mlp", lambda b, h, kw: b.dropout(b.mlp(b.layernorm_after(h))), False, None,
               "dropout(mlp(layernorm_after(h)))"),
    ),
    matches=lambda b: _children(b) == {"attention", "layernorm_before", "layernorm_after", "mlp", "dropout"},
    dim=lambda b: _norm_dim(b.layernorm_before),
    tested=("ViTLayer",),
)


# --- BERT (post-LN encoder) ----------------------------------------------------------------
def _bert_attn(b, h, kw):
    out = b.attention.output
    return out.dropout(out.dense(first(b.attention.self(h, **kw))))


def _bert_mlp(b, h, kw):
    return b.output.dropout(b.output.dense(b.intermediate(h)))


def _bert_prepare(kwargs: dict) -> dict:
    if kwargs.get("encoder_hidden_states") is not None:
        raise NotImplementedError("inject: BERT cross-attention (encoder_hidden_states) is not supported")
    return {k: v for k, v in kwargs.items() if k not in ("encoder_hidden_states", "encoder_attention_mask")}


def _bert_matches(b: nn.Module) -> bool:
    kids = _children(b)
    if not {"attention", "intermediate", "output"} <= kids or "crossattention" in kids:
        return False
    parts = (getattr(b.attention, "output", None), b.output)  # MPNet's attention has no .output
    if not all(m is not None and hasattr(m, a) for m in parts for a in ("dense", "dropout", "LayerNorm")):
        return False
    # torch's LayerNorm: DeBERTa's own DebertaLayerNorm comes with a different attention call
    return all(isinstance(m.LayerNorm, nn.LayerNorm) for m in parts)


BERT_POST_NORM = Recipe(
    name="bert_post_norm",
    branches=(
        Branch("attn", _bert_attn, True, "attention.output.LayerNorm",
               "attention.output.dropout(dense(attention.self(h))) -> LayerNorm per stream"),
        Branch("mlp", _bert_mlp, False, "output.LayerNorm",
               "output.dropout(dense(intermediate(h))) -> LayerNorm per stream"),
    ),
    matches=_bert_matches,
    dim=lambda b: _norm_dim(b.output.LayerNorm),
    tested=("BertLayer",),
    prepare=_bert_prepare,
)

RECIPES: dict[str, Recipe] = {r.name: r for r in (PRE_NORM_DECODER, VIT, BERT_POST_NORM)}


def recipe_for(block: nn.Module) -> Recipe:
    """The recipe whose structure `block` has; ValueError listing them when none fits."""
    for recipe in RECIPES.values():
        if recipe.matches(block):
            return recipe
    raise ValueError(
        f"no mHC recipe fits {type(block).__name__} (children {sorted(_children(block))}); known recipes: "
        + "; ".join(f"{r.name} (e.g. {', '.join(r.tested)})" for r in RECIPES.values())
        + ". For your own stack of f: [..., C] -> [..., C] layers use MHCSequential."
    )
