"""The depth sweep's tiny models on PyTorch (token LM, ViT, deep MLP), and their training step.

Model and parameter names: `mhc_core.experiments.lm_config` (shared with `mhc_core_mlx.lm`, so one
`init_lm_params(cfg)` dict loads into both and gives the same logits). Every attention
and MLP sub-layer is wrapped by `mhc_core_torch.MHC` of the config's variant.

`Trainer.step` is the contract `scripts/depth_sweep.py` drives on both backends:
forward + backward on one batch, the gradient norms, a non-finite check (a NaN / Inf loss
or gradient skips the update and is reported, never raised), then one Adam step.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

import mhc_core
from mhc_core.experiments.lm_config import (LMConfig, check_ids, check_input_shape, check_mask, grad_norms,
                                            init_lm_params, layer_names, mixing_matrices, squared_norms)

from .history import HistorySkip
from .modules import MHC
from .state import load_state, module_state
from .training.recompute import run_layers


def _pre_norm(cfg: LMConfig) -> nn.Module:
    """The sub-layer's input norm: RMSNorm for norm 'pre', else the identity (no weights)."""
    return nn.RMSNorm(cfg.dim, eps=cfg.norm_eps) if cfg.norm == "pre" else nn.Identity()


class Attention(nn.Module):
    """f(h) = proj(multi-head attention(rmsnorm(h))): [B, T, C] -> [B, T, C]; causal for
    tokens, bidirectional for patches; no rmsnorm unless cfg.norm == 'pre'."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.n_heads = cfg.n_heads
        self.causal = cfg.causal
        self.norm = _pre_norm(cfg)
        self.qkv = nn.Linear(cfg.dim, 3 * cfg.dim, bias=False)
        self.proj = nn.Linear(cfg.dim, cfg.dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        b, t, c = h.shape
        d = c // self.n_heads
        q, k, v = self.qkv(self.norm(h)).split(c, dim=-1)  # 3 x [B, T, C]
        q, k, v = (a.reshape(b, t, self.n_heads, d).transpose(1, 2) for a in (q, k, v))
        o = F.scaled_dot_product_attention(q, k, v, is_causal=self.causal, scale=1.0 / math.sqrt(d))
        return self.proj(o.transpose(1, 2).reshape(b, t, c))  # [B, T, C]


class MLP(nn.Module):
    """f(h) = fc2(silu(fc1(rmsnorm(h)))): [B, T, C] -> [B, T, C] (rmsnorm only for norm 'pre')."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm = _pre_norm(cfg)
        self.fc1 = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.fc2 = nn.Linear(cfg.hidden, cfg.dim, bias=False)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.silu(self.fc1(self.norm(h))))


SUBLAYER_MODULES = {"attn": Attention, "mlp": MLP}


class HistoryStep(HistorySkip):
    """A mixing layer of the 'history' variant: f (`self.layer`) and its skip logits.

    forward(x [B, T, 1, C], window) = f(x) + the mix of `window` (states [B, T, 1, C])."""

    def __init__(self, layer: nn.Module, cfg: LMConfig):
        super().__init__(cfg.history, constraint=cfg.history_constraint, gate=cfg.history_gate)
        self.layer = layer

    def forward(self, x: torch.Tensor, window: list[torch.Tensor]) -> torch.Tensor:
        return super().forward(self.layer(x[..., 0, :])[..., None, :], window)


class Block(nn.Module):
    """One mixing layer per sub-layer kind (cfg.sublayers: MHC(attention) then MHC(MLP), or
    MHC(MLP) alone), each [B, T, n, C] -> [B, T, n, C] (HistoryStep for the 'history'
    variant); norm 'post' adds `<kind>_norm`, the RMSNorm applied to every stream after that
    mixing layer."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        kw = dict(variant=cfg.variant, **cfg.mhc_kwargs())
        for kind in cfg.sublayers:
            layer = SUBLAYER_MODULES[kind](cfg)
            setattr(self, kind, HistoryStep(layer, cfg) if cfg.variant == "history"
                    else MHC(layer, cfg.n, cfg.dim, **kw))
            if cfg.norm == "post":
                setattr(self, f"{kind}_norm", nn.RMSNorm(cfg.dim, eps=cfg.norm_eps))


class PostNormed(nn.Module):
    """x -> norm(mix(x)) for x [..., n, C]: a mixing layer followed by its post-norm
    (built per forward; holds the block's own modules, adds no parameters of its own)."""

    def __init__(self, mix: nn.Module, norm: nn.Module):
        super().__init__()
        self.mix, self.norm = mix, norm

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.mix(x))


class TinyLM(nn.Module):
    """tokens [B, T] int -> logits [B, T, V], or (inputs 'patches') patches [B, T, P] float
    -> class logits [B, V]; see mhc_core.experiments.lm_config for the layout.

    `params`: a dict from `init_lm_params` / `module_state` to load (default: a fresh
    `init_lm_params(cfg)`).
    """

    def __init__(self, cfg: LMConfig, params: dict | None = None):
        super().__init__()
        self.cfg = cfg
        if cfg.inputs == "tokens":
            self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        else:
            self.patch_embed = nn.Linear(cfg.patch_dim, cfg.dim, bias=False)
        self.pos_embed = nn.Embedding(cfg.seq_len, cfg.dim)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layers))
        self.head_norm = nn.RMSNorm(cfg.dim, eps=cfg.norm_eps) if cfg.norm != "none" else nn.Identity()
        self.head = nn.Linear(cfg.dim, cfg.vocab, bias=False)
        self.recompute = 0  # mixing layers per recomputed block (paper 4.3); 0 = keep all activations
        load_state(self, init_lm_params(cfg) if params is None else params)

    def mixing_layers(self) -> list[MHC]:
        return [getattr(b, kind) for b in self.blocks for kind in self.cfg.sublayers]

    def stages(self) -> list[nn.Module]:
        """What runs in order on the streams: the mixing layers, each followed by its
        post-norm when cfg.norm == 'post'."""
        if self.cfg.norm != "post":
            return self.mixing_layers()
        return [PostNormed(getattr(b, kind), getattr(b, f"{kind}_norm")) for b in self.blocks for kind in self.cfg.sublayers]

    def forward_recording(self, tokens: torch.Tensor, rows: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(logits, inputs): logits [B, T, V] (tokens) or [B, V] (patches); inputs[l] is
        the stream state entering mixing layer l for the first `rows` batch rows,
        [rows, T, n, C] (empty list when rows = 0)."""
        check_input_shape(self.cfg, tokens.shape)
        t = tokens.shape[1]
        embed = self.embed if self.cfg.inputs == "tokens" else self.patch_embed
        h = embed(tokens) + self.pos_embed.weight[:t]  # [B, T, C]
        x = mhc_core.expand_streams(h, self.cfg.n)  # [B, T, n, C]
        if self.cfg.variant == "history":
            x, inputs = self._run_history(x, rows)
        else:  # block recompute (training.recompute) when self.recompute > 0; same inputs recorded
            x, inputs = run_layers(self.stages(), x, block=self.recompute, record_rows=rows)
        h = mhc_core.reduce_streams(x)  # [B, T, C]
        if self.cfg.inputs == "patches":
            h = h.mean(dim=1)  # [B, C]: mean pooling over the patch tokens
        return self.head(self.head_norm(h)), inputs

    def _run_history(self, x: torch.Tensor, rows: int) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """The 'history' variant's layers over x [B, T, 1, C], keeping the last K states
        (each after its post-norm when cfg.norm == 'post')."""
        if self.recompute:
            raise ValueError("block recompute is not implemented for the 'history' variant")
        keep = (lambda s: s.detach()) if self.cfg.detach_history else (lambda s: s)
        post = self.cfg.norm == "post"
        norms = [getattr(b, f"{kind}_norm") if post else None for b in self.blocks for kind in self.cfg.sublayers]
        window, inputs = [keep(x)], []
        for layer, norm in zip(self.mixing_layers(), norms):
            if rows:
                inputs.append(x[:rows].detach())
            x = layer(x, window)
            if norm is not None:
                x = norm(x)
            window = (window + [keep(x)])[-self.cfg.history:]
        return x, inputs

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.forward_recording(tokens)[0]

    @torch.no_grad()
    def res_matrices(self, tokens, rows: int | None = None) -> list[np.ndarray]:
        """Each mixing layer's res [rows, T, n, n] (numpy float64) for `tokens`, computed
        by mhc_core.coefficients from the recorded layer inputs (one implementation for
        both backends; 'residual' gives the 1x1 identity)."""
        tokens = _inputs(self.cfg, tokens)
        _, inputs = self.forward_recording(tokens, rows or tokens.shape[0])
        return mixing_matrices(self.cfg, [x.numpy() for x in inputs], mixing_state(self))


MIXING_NAMES = ("phi", "bias", "alpha", "logits", "gate")


def mixing_state(model: TinyLM) -> dict[str, np.ndarray]:
    """The mixing parameters (phi, bias, alpha, or history logits / gate, of every layer) as numpy copies."""
    return {k: v.detach().numpy().copy() for k, v in model.named_parameters()
            if k.rsplit(".", 1)[-1] in MIXING_NAMES and ".layer." not in k}


def _inputs(cfg: LMConfig, x) -> torch.Tensor:
    """numpy inputs as the model's tensor: token ids (long, each in [0, vocab)) or patches (float32)."""
    x = np.asarray(x)
    if cfg.inputs == "tokens":
        check_ids(x, cfg.vocab)
    return torch.as_tensor(x, dtype=torch.long if cfg.inputs == "tokens" else torch.float32)


def _targets(cfg: LMConfig, y) -> torch.Tensor:
    """numpy targets (next tokens or class labels, each in [0, vocab)) as a long tensor."""
    y = np.asarray(y)
    check_ids(y, cfg.vocab, "targets")
    return torch.as_tensor(y, dtype=torch.long)


@torch.no_grad()
def _rescaled(g: torch.Tensor) -> tuple[float, float, bool]:
    """(max |g|, sum (g / max |g|)^2, all finite) of one gradient: `squared_norms`' second pass."""
    g = g.float()
    amax = float(g.abs().amax()) if g.numel() else 0.0
    return amax, float((g / amax).pow(2).sum()) if amax > 0 else 0.0, bool(torch.isfinite(g).all())


def masked_cross_entropy(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean over batch rows and masked positions: logits [B, T, V], targets [B, T], mask [T];
    class logits [B, V] with targets [B]: the plain mean (mask unused)."""
    if logits.dim() == 2:
        return F.cross_entropy(logits, targets)
    ce = F.cross_entropy(logits.transpose(1, 2), targets, reduction="none")  # [B, T]
    return (ce * mask).sum() / (ce.shape[0] * mask.sum())


def correct_and_weight(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> tuple[float, float]:
    """(mask-weighted count of argmax hits, mask-weighted count of targets); the hits are NaN
    when any logit is NaN/Inf (argmax would pick an arbitrary class, as the loss is NaN)."""
    hit = (logits.argmax(-1) == targets).float()
    if not bool(torch.isfinite(logits).all()):
        hit = torch.full_like(hit, float("nan"))
    if logits.dim() == 2:
        return float(hit.sum()), float(hit.numel())
    return float((hit * mask).sum()), float(mask.sum() * hit.shape[0])


class Trainer:
    """torch.optim.Adam on a TinyLM built from `params` (same update as mhc_core_mlx.lm.Trainer).

    grad_clip > 0 clips the total gradient norm to it (0: off, the default, so the
    sweep sees the raw dynamics).
    """

    def __init__(self, cfg: LMConfig, params: dict | None = None, *, lr: float = 1e-3,
                 betas=(0.9, 0.999), eps: float = 1e-8, grad_clip: float = 0.0):
        self.cfg = cfg
        self.model = TinyLM(cfg, params)
        self.params = list(self.model.named_parameters())
        self.opt = torch.optim.Adam([p for _, p in self.params], lr=lr, betas=tuple(betas), eps=eps)
        self.grad_clip = mhc_core.checks.non_negative(grad_clip, "grad_clip")  # nan would switch clipping off
        self.names = layer_names(cfg)
        self.forward = self.model.forward_recording  # training.distributed routes this through DDP

    def state(self) -> dict[str, np.ndarray]:
        return module_state(self.model)

    def step(self, inputs, targets, mask, *, lr: float, record_rows: int = 0) -> dict:
        """One training step on numpy `inputs`/`targets [B, T]`, `mask [T]`.

        Returns loss, grad_norm (total L2), layer_grad_norm (per mixing layer: L2 norm of
        the wrapped sub-layer's weight gradients, `blocks.i.{attn,mlp}.layer.*`),
        mixing_grad_norm (phi/bias/alpha), nonfinite_loss, nonfinite_grad_tensors,
        skipped; with record_rows > 0 also layer_inputs (numpy) and mixing_state, both
        as they were for this forward (before the update).
        """
        x = _inputs(self.cfg, inputs)
        y = _targets(self.cfg, targets)
        m = torch.as_tensor(check_mask(mask, targets))
        self.opt.zero_grad(set_to_none=True)
        logits, recorded = self.forward(x, record_rows)
        loss = masked_cross_entropy(logits, y, m)
        loss.backward()
        grads = [(k, p.grad if p.grad is not None else torch.zeros_like(p)) for k, p in self.params]
        sq = squared_norms(torch.stack([g.float().pow(2).sum() for _, g in grads]).numpy(),
                           lambda k: _rescaled(grads[k][1]))
        out = grad_norms([k for k, _ in grads], sq, self.names)
        out["loss"] = float(loss.item())
        out["nonfinite_loss"] = not math.isfinite(out["loss"])
        out["skipped"] = out["nonfinite_loss"] or out["nonfinite_grad_tensors"] > 0
        if record_rows:
            out["layer_inputs"] = [a.float().numpy() for a in recorded]  # bf16 runs: exact upcast
            out["mixing_state"] = mixing_state(self.model)
        if not out["skipped"]:
            if self.grad_clip > 0 and out["grad_norm"] > self.grad_clip:
                for _, p in self.params:
                    p.grad.mul_(self.grad_clip / out["grad_norm"])
            for group in self.opt.param_groups:
                group["lr"] = lr
            self.opt.step()
        return out

    @torch.no_grad()
    def evaluate(self, inputs, targets, mask, *, chunk: int = 256) -> dict:
        """Held-out eval_loss (the training loss's mean over every row) and eval_accuracy
        (argmax hits / targets, masked positions only) on numpy arrays, `chunk` rows at a time."""
        m = torch.as_tensor(check_mask(mask, targets))
        loss_sum = hits = total = 0.0
        rows = len(targets)
        for s in range(0, rows, chunk):
            x, y = _inputs(self.cfg, inputs[s:s + chunk]), _targets(self.cfg, targets[s:s + chunk])
            logits = self.model.forward_recording(x, 0)[0].float()
            loss_sum += float(masked_cross_entropy(logits, y, m)) * len(y)
            h, w = correct_and_weight(logits, y, m)
            hits, total = hits + h, total + w
        return {"eval_loss": loss_sum / rows, "eval_accuracy": hits / total}
