"""The depth sweep's tiny models on MLX (token LM, ViT, deep MLP), and their training step.

Model and parameter names: `mhc_core.experiments.lm_config` (shared with `mhc_core_torch.lm`, so one
`init_lm_params(cfg)` dict loads into both and gives the same logits). Every attention
and MLP sub-layer is wrapped by `mhc_core_mlx.MHC` of the config's variant.

`Trainer.step` is the contract `scripts/depth_sweep.py` drives on both backends:
forward + backward on one batch, the gradient norms, a non-finite check (a NaN / Inf loss
or gradient skips the update and is reported, never raised), then one Adam step.
"""
from __future__ import annotations

import math

import mlx.core as mx
import mlx.nn as nn
import mlx.optimizers as optim
import numpy as np
from mlx.utils import tree_flatten

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

    def __call__(self, h: mx.array) -> mx.array:
        b, t, c = h.shape
        d = c // self.n_heads
        q, k, v = mx.split(self.qkv(self.norm(h)), 3, axis=-1)  # 3 x [B, T, C]
        q, k, v = (a.reshape(b, t, self.n_heads, d).transpose(0, 2, 1, 3) for a in (q, k, v))
        o = mx.fast.scaled_dot_product_attention(q, k, v, scale=1.0 / math.sqrt(d), mask="causal" if self.causal else None)
        return self.proj(o.transpose(0, 2, 1, 3).reshape(b, t, c))  # [B, T, C]


class MLP(nn.Module):
    """f(h) = fc2(silu(fc1(rmsnorm(h)))): [B, T, C] -> [B, T, C] (rmsnorm only for norm 'pre')."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.norm = _pre_norm(cfg)
        self.fc1 = nn.Linear(cfg.dim, cfg.hidden, bias=False)
        self.fc2 = nn.Linear(cfg.hidden, cfg.dim, bias=False)

    def __call__(self, h: mx.array) -> mx.array:
        return self.fc2(nn.silu(self.fc1(self.norm(h))))


SUBLAYER_MODULES = {"attn": Attention, "mlp": MLP}


class HistoryStep(HistorySkip):
    """A mixing layer of the 'history' variant: f (`self.layer`) and its skip logits.

    __call__(x [B, T, 1, C], window) = f(x) + the mix of `window` (states [B, T, 1, C])."""

    def __init__(self, layer: nn.Module, cfg: LMConfig):
        super().__init__(cfg.history, constraint=cfg.history_constraint, gate=cfg.history_gate)
        self.layer = layer

    def __call__(self, x: mx.array, window: list) -> mx.array:
        return super().__call__(self.layer(x[..., 0, :])[..., None, :], window)


class Block(nn.Module):
    """One mixing layer per sub-layer kind (cfg.sublayers: MHC(attention) then MHC(MLP), or
    MHC(MLP) alone), each [B, T, n, C] -> [B, T, n, C] (HistoryStep for the 'history'
    variant); norm 'post' adds `<kind>_norm`, the RMSNorm applied to every stream after that
    mixing layer."""

    def __init__(self, cfg: LMConfig, compiled: bool = False):
        super().__init__()
        kw = dict(variant=cfg.variant, compiled=compiled, **cfg.mhc_kwargs())
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

    def __call__(self, x: mx.array) -> mx.array:
        return self.norm(self.mix(x))


class TinyLM(nn.Module):
    """tokens [B, T] int -> logits [B, T, V], or (inputs 'patches') patches [B, T, P] float
    -> class logits [B, V]; see mhc_core.experiments.lm_config for the layout.

    `params`: a dict from `init_lm_params` / `module_state` to load (default: a fresh
    `init_lm_params(cfg)`). `compiled`: mx.compile the mixing math of every MHC.
    """

    def __init__(self, cfg: LMConfig, params: dict | None = None, *, compiled: bool = False):
        super().__init__()
        self.cfg = cfg
        if cfg.inputs == "tokens":
            self.embed = nn.Embedding(cfg.vocab, cfg.dim)
        else:
            self.patch_embed = nn.Linear(cfg.patch_dim, cfg.dim, bias=False)
        self.pos_embed = nn.Embedding(cfg.seq_len, cfg.dim)
        self.blocks = [Block(cfg, compiled) for _ in range(cfg.n_layers)]
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

    def forward_recording(self, tokens: mx.array, rows: int = 0) -> tuple[mx.array, list[mx.array]]:
        """(logits, inputs): logits [B, T, V] (tokens) or [B, V] (patches); inputs[l] is
        the stream state entering mixing layer l for the first `rows` batch rows,
        [rows, T, n, C] (empty list when rows = 0)."""
        check_input_shape(self.cfg, tokens.shape)
        t = tokens.shape[1]
        if self.cfg.inputs == "tokens" and tokens.size:  # mx.take would gather some row for an id outside
            try:
                lo, hi = mx.min(tokens).item(), mx.max(tokens).item()
            except ValueError:  # traced by mx.compile / vmap: nothing can be evaluated, so no check
                lo, hi = 0, 0
            if lo < 0 or hi >= self.cfg.vocab:
                check_ids(np.array(tokens), self.cfg.vocab)
        embed = self.embed if self.cfg.inputs == "tokens" else self.patch_embed
        h = embed(tokens) + self.pos_embed.weight[:t]  # [B, T, C]
        x = mhc_core.expand_streams(h, self.cfg.n)  # [B, T, n, C]
        if self.cfg.variant == "history":
            x, inputs = self._run_history(x, rows)
        else:  # block recompute (training.recompute) when self.recompute > 0; same inputs recorded
            x, inputs = run_layers(self.stages(), x, block=self.recompute, record_rows=rows)
        h = mhc_core.reduce_streams(x)  # [B, T, C]
        if self.cfg.inputs == "patches":
            h = h.mean(axis=1)  # [B, C]: mean pooling over the patch tokens
        return self.head(self.head_norm(h)), inputs

    def _run_history(self, x: mx.array, rows: int) -> tuple[mx.array, list[mx.array]]:
        """The 'history' variant's layers over x [B, T, 1, C], keeping the last K states
        (each after its post-norm when cfg.norm == 'post')."""
        if self.recompute:
            raise ValueError("block recompute is not implemented for the 'history' variant")
        keep = mx.stop_gradient if self.cfg.detach_history else (lambda s: s)
        post = self.cfg.norm == "post"
        norms = [getattr(b, f"{kind}_norm") if post else None for b in self.blocks for kind in self.cfg.sublayers]
        window, inputs = [keep(x)], []
        for layer, norm in zip(self.mixing_layers(), norms):
            if rows:
                inputs.append(mx.stop_gradient(x[:rows]))
            x = layer(x, window)
            if norm is not None:
                x = norm(x)
            window = (window + [keep(x)])[-self.cfg.history:]
        return x, inputs

    def __call__(self, tokens: mx.array) -> mx.array:
        return self.forward_recording(tokens)[0]

    def res_matrices(self, tokens, rows: int | None = None) -> list[np.ndarray]:
        """Each mixing layer's res [rows, T, n, n] (numpy float64) for `tokens`, computed
        by mhc_core.coefficients from the recorded layer inputs (one implementation for
        both backends; 'residual' gives the 1x1 identity)."""
        tokens = _inputs(self.cfg, tokens)
        _, inputs = self.forward_recording(tokens, rows or tokens.shape[0])
        return mixing_matrices(self.cfg, [np.array(x) for x in inputs], mixing_state(self))


def mixing_state(model: TinyLM) -> dict[str, np.ndarray]:
    """The mixing parameters (phi, bias, alpha, or history logits / gate, of every layer) as numpy."""
    return {k: np.array(v) for k, v in tree_flatten(model.parameters())
            if k.rsplit(".", 1)[-1] in ("phi", "bias", "alpha", "logits", "gate") and ".layer." not in k}


def _inputs(cfg: LMConfig, x) -> mx.array:
    """numpy inputs as the model's array: token ids (int32, each in [0, vocab)) or patches (float32)."""
    x = np.asarray(x)
    if cfg.inputs == "tokens":
        check_ids(x, cfg.vocab)
    return mx.array(x.astype(np.int32 if cfg.inputs == "tokens" else np.float32))


def _targets(cfg: LMConfig, y) -> mx.array:
    """numpy targets (next tokens or class labels, each in [0, vocab)) as an int32 array."""
    y = np.asarray(y)
    check_ids(y, cfg.vocab, "targets")
    return mx.array(y.astype(np.int32))


def _rescaled(g: mx.array) -> tuple[float, float, bool]:
    """(max |g|, sum (g / max |g|)^2, all finite) of one gradient: `squared_norms`' second pass."""
    g = g.astype(mx.float32)
    amax = mx.abs(g).max().item() if g.size else 0.0
    return amax, ((g / amax) ** 2).sum().item() if amax > 0 else 0.0, bool(mx.all(mx.isfinite(g)).item())


def masked_cross_entropy(logits: mx.array, targets: mx.array, mask: mx.array) -> mx.array:
    """Mean over batch rows and masked positions: logits [B, T, V], targets [B, T], mask [T];
    class logits [B, V] with targets [B]: the plain mean (mask unused)."""
    ce = nn.losses.cross_entropy(logits, targets, reduction="none")  # [B, T] or [B]
    if logits.ndim == 2:
        return ce.mean()
    return (ce * mask).sum() / (ce.shape[0] * mask.sum())


def correct_and_weight(logits: mx.array, targets: mx.array, mask: mx.array) -> tuple[float, float]:
    """(mask-weighted count of argmax hits, mask-weighted count of targets); the hits are NaN
    when any logit is NaN/Inf (argmax would pick an arbitrary class, as the loss is NaN)."""
    hit = (mx.argmax(logits, axis=-1) == targets).astype(mx.float32)
    if not bool(mx.all(mx.isfinite(logits)).item()):
        hit = mx.full(hit.shape, float("nan"), dtype=mx.float32)
    if logits.ndim == 2:
        return float(hit.sum().item()), float(hit.size)
    return float((hit * mask).sum().item()), float(mask.sum().item() * hit.shape[0])


class Trainer:
    """Adam (bias-corrected, as torch.optim.Adam) on a TinyLM built from `params`.

    grad_clip > 0 clips the total gradient norm to it (0: off, the default, so the
    sweep sees the raw dynamics).
    """

    def __init__(self, cfg: LMConfig, params: dict | None = None, *, lr: float = 1e-3,
                 betas=(0.9, 0.999), eps: float = 1e-8, grad_clip: float = 0.0, compiled: bool = False):
        self.cfg = cfg
        self.model = TinyLM(cfg, params, compiled=compiled)
        self.opt = optim.Adam(learning_rate=lr, betas=list(betas), eps=eps, bias_correction=True)
        self.grad_clip = mhc_core.checks.non_negative(grad_clip, "grad_clip")  # nan would switch clipping off
        self.names = layer_names(cfg)

        def loss_fn(inputs, targets, mask, rows):
            logits, recorded = self.model.forward_recording(inputs, rows)
            return masked_cross_entropy(logits, targets, mask), recorded

        self._value_and_grad = nn.value_and_grad(self.model, loss_fn)

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
        x, y = _inputs(self.cfg, inputs), _targets(self.cfg, targets)
        m = mx.array(check_mask(mask, targets))
        (loss, recorded), grads = self._value_and_grad(x, y, m, record_rows)
        flat = tree_flatten(grads)
        sq = mx.stack([(g.astype(mx.float32) ** 2).sum() for _, g in flat])
        mx.eval(loss, sq, recorded)
        sq = squared_norms(np.array(sq), lambda k: _rescaled(flat[k][1]))
        out = grad_norms([k for k, _ in flat], sq, self.names)
        out["loss"] = float(loss.item())
        out["nonfinite_loss"] = not math.isfinite(out["loss"])
        out["skipped"] = out["nonfinite_loss"] or out["nonfinite_grad_tensors"] > 0
        if record_rows:
            out["layer_inputs"] = [np.array(a.astype(mx.float32)) for a in recorded]  # bf16: exact upcast
            out["mixing_state"] = mixing_state(self.model)
        if not out["skipped"]:
            if self.grad_clip > 0 and out["grad_norm"] > self.grad_clip:
                grads = _scale(grads, self.grad_clip / out["grad_norm"])
            self.opt.learning_rate = lr
            self.opt.update(self.model, grads)
            mx.eval(self.model.parameters(), self.opt.state)
        return out

    def evaluate(self, inputs, targets, mask, *, chunk: int = 256) -> dict:
        """Held-out eval_loss (the training loss's mean over every row) and eval_accuracy
        (argmax hits / targets, masked positions only) on numpy arrays, `chunk` rows at a time."""
        m = mx.array(check_mask(mask, targets))
        loss_sum = hits = total = 0.0
        rows = len(targets)
        for s in range(0, rows, chunk):
            x, y = _inputs(self.cfg, inputs[s:s + chunk]), _targets(self.cfg, targets[s:s + chunk])
            logits = self.model.forward_recording(x, 0)[0].astype(mx.float32)
            loss_sum += float(masked_cross_entropy(logits, y, m).item()) * int(y.shape[0])
            h, w = correct_and_weight(logits, y, m)
            hits, total = hits + h, total + w
        return {"eval_loss": loss_sum / rows, "eval_accuracy": hits / total}


def _scale(tree, s: float):
    if isinstance(tree, dict):
        return {k: _scale(v, s) for k, v in tree.items()}
    if isinstance(tree, list):
        return [_scale(v, s) for v in tree]
    return tree * s
