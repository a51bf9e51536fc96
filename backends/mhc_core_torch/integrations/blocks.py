"""Turn existing residual blocks into mHC blocks, in place.

Why in place (a class swap) rather than a wrapper module: the block keeps its identity,
its class ancestry and its children, so
- the original weights keep their state-dict keys (`model.layers.0.self_attn.q_proj.weight`);
  the mHC parameters are added beside them (`model.layers.0.attn_mhc.phi`, `.bias`, `.alpha`),
- transformers' machinery keyed on the block still works: `isinstance` output recorders
  (`output_hidden_states`: a converted layer's output is the streams [B, T, n, C] except
  the last layer's [B, T, C], as DeepSeek-V4 reports them), gradient checkpointing (`GradientCheckpointingLayer` wraps the
  new forward too), tensor-parallel plans written against module paths,
- the model's own forward (masks, rotary embeddings, KV cache, generate) is untouched.

The swapped class is `MHC<Original>`, a subclass of the original with one new forward:

    x = hidden_states                                  [B, T, C] (first block) or [B, T, n, C]
    first block: x = expand_streams(x, n)              [B, T, n, C]
    for each branch (attn, mlp):  x = <branch>_mhc(x, **kwargs)      (one MHC step; its
        f calls the block's own norm + attention / MLP on h = sum_i pre_i x_i)
        post-LN recipes: x = LayerNorm(x) on every stream
    last block: x = mean over streams (or StreamHead)  [B, T, C]

Each MHC's `layer` is a `BranchLayer` that owns no parameters: it calls the block's
modules, which stay registered where they were, so nothing is stored twice.
"""
from __future__ import annotations

import inspect

import torch
from torch import nn

import mhc_core

from ..modules import MHC, StreamHead
from .recipes import RECIPES, Branch, Recipe, resolve

REDUCTIONS = ("mean", "head")


class BranchLayer(nn.Module):
    """The sub-layer f of one residual branch of `block`, as an MHC's `layer`: h [..., C] -> [..., C].

    The block is held without registering it (it is this module's grandparent), so its
    parameters appear once in the state dict, under their original names.
    """

    def __init__(self, block: nn.Module, branch: Branch):
        super().__init__()
        object.__setattr__(self, "_block", block)
        object.__setattr__(self, "_branch", branch)

    def forward(self, h: torch.Tensor, **kwargs) -> torch.Tensor:
        return self._branch.call(self._block, h, kwargs)

    def __getstate__(self):
        # Branch.call may be a lambda, which pickle cannot write: store the branch's name and
        # take the Branch from the converted block's recipe again when unpickling
        state = super().__getstate__()
        state["_branch"] = self._branch.name
        return state

    def __setstate__(self, state):
        name = state["_branch"]
        if isinstance(name, str):
            branches = type(state["_block"])._mhc_recipe.branches
            state = {**state, "_branch": next(b for b in branches if b.name == name)}
        super().__setstate__(state)

    def extra_repr(self) -> str:
        return self._branch.describe


class MHCBlockMixin:
    """Forward of a converted block (see the module docstring). Instance attributes set by
    `convert_block`: mhc_n, mhc_dim, mhc_expand, mhc_reduce, mhc_position."""

    _mhc_recipe: Recipe
    _mhc_signature: inspect.Signature

    def _mhc_kwargs(self, args: tuple, kwargs: dict) -> dict:
        """Positional arguments after hidden_states -> keywords, by the original forward's signature
        (BertEncoder passes attention_mask positionally; Llama passes keywords)."""
        if not args:
            return kwargs
        bound = self._mhc_signature.bind_partial(self, None, *args, **kwargs).arguments
        out = {}
        for i, (name, value) in enumerate(bound.items()):
            if i < 2:  # self, hidden_states
                continue
            if self._mhc_signature.parameters[name].kind is inspect.Parameter.VAR_KEYWORD:
                out.update(value)
            else:
                out[name] = value
        return out

    def __reduce_ex__(self, protocol):
        # MHC<cls> is made at run time, so pickle (torch.save(model), multiprocessing) cannot
        # find it by name: rebuild it from the original class and the recipe's name
        return _new_converted_block, (self._mhc_base, self._mhc_recipe.name), self.__getstate__()

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        recipe, n, c = self._mhc_recipe, self.mhc_n, self.mhc_dim
        kwargs = recipe.prepare(self._mhc_kwargs(args, kwargs))
        x = hidden_states
        if self.mhc_expand:
            if x.shape[-1] != c:
                raise ValueError(f"{type(self).__name__} ({self.mhc_position}) expands streams: expected "
                                 f"[..., C={c}], got shape {list(x.shape)}")
            x = mhc_core.expand_streams(x, n).contiguous()  # [..., n, C]
        elif x.dim() < 2 or tuple(x.shape[-2:]) != (n, c):
            raise ValueError(f"{type(self).__name__} ({self.mhc_position}) expects the streams of the previous "
                             f"mHC block [..., n={n}, C={c}], got shape {list(x.shape)}")
        for branch in recipe.branches:
            step = getattr(self, f"{branch.name}_mhc")
            x = step(x, **kwargs) if branch.uses_kwargs else step(x)  # [..., n, C]
            if branch.post_norm is not None:
                x = resolve(self, branch.post_norm)(x)  # LayerNorm over C, each stream on its own
        if self.mhc_reduce:
            head = getattr(self, "mhc_head", None)
            x = head(x) if head is not None else mhc_core.reduce_streams(x)  # [..., C]
        return x


_CLASSES: dict[tuple[type, str], type] = {}


def mhc_class(cls: type, recipe: Recipe) -> type:
    """`MHC<cls>`: cls with the mHC forward (one class per original class and recipe)."""
    key = (cls, recipe.name)
    if key not in _CLASSES:
        _CLASSES[key] = type(f"MHC{cls.__name__}", (MHCBlockMixin, cls), {
            "_mhc_recipe": recipe,
            "_mhc_base": cls,
            "_mhc_signature": inspect.signature(cls.forward),
            "__module__": __name__,
        })
    return _CLASSES[key]


def _new_converted_block(cls: type, recipe_name: str) -> nn.Module:
    """An empty MHC<cls> instance (its state is set by pickle afterwards)."""
    swapped = mhc_class(cls, RECIPES[recipe_name])
    return swapped.__new__(swapped)


def is_converted(block: nn.Module) -> bool:
    return isinstance(block, MHCBlockMixin)


def convert_block(block: nn.Module, recipe: Recipe, *, n: int, expand: bool, reduce: str | None,
                  position: str, variant: str = "mhc", init: dict | None = None, impl: str = "auto",
                  branch_scale: float | None = None, **cfg) -> nn.Module:
    """Swap `block`'s class to MHC<class> and add one MHC per branch (+ a StreamHead when
    this block reduces with reduce='head'). branch_scale: a factor on every branch output
    f(h) (the block's own residual multiplier), None for none. cfg: MHCConfig fields.
    Returns the block."""
    if is_converted(block):
        raise ValueError(f"{position} ({type(block).__name__}) is already converted to mHC")
    if reduce not in (None, *REDUCTIONS):
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    c = recipe.dim(block)
    ref = next(block.parameters(), None)
    device = ref.device if ref is not None else torch.device("cpu")
    for branch in recipe.branches:
        # MHC keeps phi / bias / alpha in float32 whatever the block's dtype (DeepSeek-V4 does too).
        mhc = MHC(BranchLayer(block, branch), n, c, variant=variant, init=init, impl=impl, **cfg)
        block.add_module(f"{branch.name}_mhc", mhc.to(device))
    if reduce == "head":
        block.add_module("mhc_head", StreamHead(n, c, rms_eps=cfg.get("rms_eps", 1e-6),
                                                eps=cfg.get("pre_eps", 1e-6)).to(device))
    if branch_scale is not None:
        block.mhc_branch_scale = branch_scale
    block.mhc_n, block.mhc_dim = n, c
    block.mhc_expand, block.mhc_reduce, block.mhc_position = expand, reduce is not None, position
    block.__class__ = mhc_class(type(block), recipe)
    return block


def mhc_steps(model: nn.Module) -> list[tuple[str, MHC]]:
    """(name, MHC) of every converted branch in `model`, in module order (attn, mlp, ...)."""
    return [(name, m) for name, m in model.named_modules() if isinstance(m, MHC)]
