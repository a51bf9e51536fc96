"""`patch_deepseek_v4(model)`: run transformers' DeepSeek-V4 mHC through mhc_core_torch.

DeepSeek-V4 already is an mHC model; transformers implements its hyper-connections in
eager torch. The patch swaps, in place (class swaps, like blocks.py):
- each `DeepseekV4HyperConnection` (attn_hc, ffn_hc) -> `MHCDeepseekV4HyperConnection`,
- each `DeepseekV4DecoderLayer` -> `MHCDeepseekV4DecoderLayer`, whose forward runs every
  residual as one `dispatch.mhc_step` (the Triton kernels on CUDA, mhc_core elsewhere),
- `DeepseekV4HyperHead` -> `MHCDeepseekV4HyperHead` (mhc_core.head).

Weights: the checkpoint's tensors stay where they are, under their names and dtype
(`attn_hc.fn`, `.base`, `.scale`, `hc_head.hc_fn`, ...); ours are views of them:

    ours            DeepSeek-V4                          shape
    phi             fn.T                                 [n*C, n*n + 2n]   (columns pre | post | res)
    bias            base                                 [n*n + 2n]
    alpha           scale                                [3]
    res[i, o]       comb[i, o]  (out = comb^T @ x)       [..., n, n]
    head phi/bias/alpha = hc_fn.T / hc_base / hc_scale
    iters = hc_sinkhorn_iters, pre_eps = sinkhorn_eps = hc_eps, rms_eps = rms_norm_eps, post_scale = 2

so state dicts, save_pretrained and `_keep_in_fp32_modules_strict` are unchanged.
Numerics: identical math; the one difference is that DeepSeek-V4's eager code mixes
`post * y + comb^T x` in the activation dtype (bf16 in practice) while mhc_core mixes in
float32 and casts once, so in bf16 the two differ by bf16 rounding (in float32 they agree
to ~1e-6).
"""
from __future__ import annotations

import torch
from torch import nn

import mhc_core

from .. import dispatch
from .recipes import first


def _hc_cfg(hc: nn.Module) -> dict:
    return {"iters": int(hc.hc_sinkhorn_iters), "rms_eps": float(hc.input_norm.eps), "pre_eps": float(hc.hc_eps),
            "sinkhorn_eps": float(hc.hc_eps), "post_scale": 2.0}


class MHCHyperConnectionMixin:
    """DeepseekV4HyperConnection on mhc_core: views phi = fn.T, bias = base, alpha = scale."""

    mhc_impl = "auto"

    def mhc_params(self):
        return self.fn.t(), self.base, self.scale  # phi [n*C, n*n+2n], bias, alpha [3]

    def mhc_coefficients(self, x: torch.Tensor):
        """(pre [..., n], post [..., n], res [..., n, n]) for the streams x [..., n, C]."""
        return mhc_core.coefficients(x, *self.mhc_params(), variant="mhc", **_hc_cfg(self))

    def forward(self, hidden_streams: torch.Tensor):
        """The original contract: (post, comb, collapsed) for hidden_streams [B, S, n, C]."""
        pre, post, comb = self.mhc_coefficients(hidden_streams)
        return post, comb, mhc_core.pre_aggregate(hidden_streams, pre)

    def step(self, x: torch.Tensor, layer, **layer_kwargs) -> torch.Tensor:
        """One whole residual step x [..., n, C] -> [..., n, C] around `layer` (dispatch.mhc_step)."""
        phi, bias, alpha = self.mhc_params()
        return dispatch.mhc_step(x, layer, phi, bias, alpha, variant="mhc", cfg=_hc_cfg(self),
                                 impl=self.mhc_impl, layer_kwargs=layer_kwargs)


class MHCHyperHeadMixin:
    """DeepseekV4HyperHead on mhc_core.head: phi = hc_fn.T, bias = hc_base, alpha = hc_scale."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return mhc_core.head(x, self.hc_fn.t(), self.hc_base, self.hc_scale, rms_eps=float(self.input_norm.eps),
                             eps=float(self.eps))


class MHCDecoderLayerMixin:
    """DeepseekV4DecoderLayer whose two residuals are mhc_core_torch steps."""

    def _attn_branch(self, h, **kwargs):
        return first(self.self_attn(self.input_layernorm(h), **kwargs))

    def _mlp_branch(self, h, input_ids=None):
        return self.mlp(self.post_attention_layernorm(h), input_ids=input_ids)

    def forward(self, hidden_states: torch.Tensor, input_ids: torch.Tensor | None = None, **kwargs) -> torch.Tensor:
        x = self.attn_hc.step(hidden_states, self._attn_branch, **kwargs)  # [B, S, n, C]
        return self.ffn_hc.step(x, self._mlp_branch, input_ids=input_ids)


_CLASSES: dict[type, type] = {}


def _swapped_class(cls: type, mixin: type) -> type:
    if cls not in _CLASSES:
        _CLASSES[cls] = type(f"MHC{cls.__name__}", (mixin, cls), {"__module__": __name__,
                                                                   "__reduce_ex__": _reduce_swapped,
                                                                   "_mhc_swap": (cls, mixin)})
    return _CLASSES[cls]


def _reduce_swapped(self, protocol):
    # MHC<cls> is made at run time, so pickle (torch.save(model)) cannot find it by name:
    # rebuild it from the mixin and the original class
    return _new_swapped, type(self)._mhc_swap, self.__getstate__()


def _new_swapped(cls: type, mixin: type) -> nn.Module:
    """An empty MHC<cls> instance (its state is set by pickle afterwards)."""
    swapped = _swapped_class(cls, mixin)
    return swapped.__new__(swapped)


def _swap(module: nn.Module, mixin: type) -> None:
    module.__class__ = _swapped_class(type(module), mixin)


def patch_deepseek_v4(model: nn.Module, *, impl: str = "auto") -> nn.Module:
    """Swap DeepSeek-V4's hyper-connections, decoder mixing and hyper-head for mhc_core_torch's,
    in place, keeping every weight tensor; returns `model`. impl: 'auto' | 'reference' | 'triton'."""
    from transformers.models.deepseek_v4 import modeling_deepseek_v4 as ds

    dispatch.check_impl(impl)
    counts = {"hyper_connections": 0, "decoder_layers": 0, "heads": 0}
    for module in model.modules():
        if isinstance(module, (MHCHyperConnectionMixin, MHCHyperHeadMixin, MHCDecoderLayerMixin)):
            raise ValueError("patch_deepseek_v4: this model is already patched")
        if isinstance(module, ds.DeepseekV4HyperConnection):
            _swap(module, MHCHyperConnectionMixin)
            module.mhc_impl = impl
            counts["hyper_connections"] += 1
        elif isinstance(module, ds.DeepseekV4DecoderLayer):
            _swap(module, MHCDecoderLayerMixin)
            counts["decoder_layers"] += 1
        elif isinstance(module, ds.DeepseekV4HyperHead):
            _swap(module, MHCHyperHeadMixin)
            counts["heads"] += 1
    if counts["hyper_connections"] == 0:
        raise ValueError(f"patch_deepseek_v4: {type(model).__name__} has no DeepseekV4HyperConnection")
    model.mhc_patched = counts
    return model
