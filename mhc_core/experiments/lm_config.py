"""The depth sweep's tiny models (token LM, ViT, deep MLP), described once for every backend.

`LMConfig` is the model (framework-free); `init_lm_params(cfg)` draws ONE set of numpy
weights that `mhc_core_torch.lm.TinyLM` and `mhc_core_mlx.lm.TinyLM` both load, under the same
names and shapes, and `mixing_matrices` turns the layer inputs a backend recorded into
each layer's `res` via `mhc_core.coefficients` (numpy float64), so the stability metrics
come from one implementation whatever trained the model.

Model (pre-norm inside each wrapped sub-layer f, DESIGN §1 step around each):

    tokens [B, T] -> embed + pos_embed                          [B, T, C]
    expand_streams(., n)                                        [B, T, n, C]
    for each of n_layers blocks:
        x = MHC(attn)(x)   attn(h) = proj(causal_mha(rmsnorm(h)))      "blocks.i.attn"
        x = MHC(mlp)(x)    mlp(h)  = fc2(silu(fc1(rmsnorm(h))))        "blocks.i.mlp"
    reduce_streams (mean over streams) -> rmsnorm (head_norm) -> head   [B, T, V]

Every block is two mixing layers (attention, MLP): layer index 2*i and 2*i + 1.

Conditions (LMConfig fields; the defaults give the model above):

    arch   'transformer' (attn + mlp per block) | 'mlp' (one MLP sub-layer per block:
           a deep MLP stack, one mixing layer per block)
    norm   'pre'  (rmsnorm inside f, above) | 'post' (f without norm; after each mixing
           layer every stream is rmsnormed: x <- rmsnorm(step(x)), "blocks.i.<kind>_norm",
           Post-LN) | 'none' (no normalisation anywhere, head_norm dropped too)
    inputs 'tokens'  (embed [V, C], causal attention, logits [B, T, V] per position) |
           'patches' (patch_embed [C, P] on float patches [B, T, P], bidirectional
           attention, mean over tokens then head: class logits [B, V]; a tiny ViT)

Parameter names (flat, dotted, the same in both backends):

    embed.weight [V, C]        pos_embed.weight [T, C]
    blocks.{i}.attn.layer.norm.weight [C]   .qkv.weight [3C, C]   .proj.weight [C, C]
    blocks.{i}.mlp.layer.norm.weight  [C]   .fc1.weight [H, C]    .fc2.weight  [C, H]
    blocks.{i}.{attn,mlp}.{phi, bias, alpha}   (variant 'hc' / 'mhc' / 'mhc-lite'; mhc_core.init_params)
    blocks.{i}.{attn,mlp}.logits [K] (.gate [])  (variant 'history'; mhc_core.init_skip_logits)
    head_norm.weight [C]       head.weight [V, C]
    patches: patch_embed.weight [C, P] instead of embed.weight; norm != 'pre': no
    layer.norm.weight; norm 'post': blocks.{i}.{kind}_norm.weight [C]; norm 'none': no head_norm.

Variant 'history' (one stream, the `mhc` package's design): mixing layer l computes
x_{l+1} = f_l(x_l) + sum_k a_{l,k} x_k over the last K states (x_0 = the embedding), with
a = mhc_core.skip_weights(logits); its metrics come from `history_report`.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields

import numpy as np

from .. import checks
from .. import history as hist
from ..coefficients import coefficients
from ..config import MHCConfig
from ..init import init_params, param_shapes

SUBLAYERS = ("attn", "mlp")
LM_VARIANTS = checks.VARIANTS + ("history",)
ARCHS = ("transformer", "mlp")
NORMS = ("pre", "post", "none")
INPUTS = ("tokens", "patches")
RES_INITS = ("identity", "seed002")


@dataclass(frozen=True)
class LMConfig:
    """Everything that defines the model (not the optimiser or the data).

    variant: 'residual' (x + f(x), one stream), 'hc' (unconstrained hyper-connections),
    'mhc', 'mhc-lite' (n <= 6) or 'history' (multi-history skip mixing, one stream).
    n: streams; 'residual' and 'history' force 1. history (K), history_constraint,
    history_gate, detach_history: the 'history' variant's HistorySequential settings.
    n_layers: transformer blocks (each is two mixing layers). mlp_ratio: MLP hidden width / dim. init_std: std of embeddings and
    weights feeding the residual; the output projections (proj, fc2) use
    init_std / sqrt(mixing layers) when scale_out_init (GPT-2). alpha_init, phi_std,
    res_logit_gap: mhc_core.init_params arguments. iters ... post_scale: MHCConfig.
    norm_eps: eps of the model's RMSNorms (not the mixing's rms_eps). arch, norm,
    inputs: see the module docstring; patch_dim: values per patch (inputs 'patches').
    res_init: 'identity' (mhc_core.init_params) or 'seed002': the residual-mixing init of the
    MLX depth-sweep seed, logits 2I - 1 (n x n): HC's static res is exp(2I - 1) unnormalised
    (row sums e + (n-1)/e, 3.82 at n = 4, so the streams grow ~3.8x per layer), mHC's is
    sinkhorn(2I - 1) (res_logit_gap 2).
    """

    vocab: int = 64
    dim: int = 64
    n_layers: int = 12
    n_heads: int = 4
    mlp_ratio: int = 4
    seq_len: int = 32
    variant: str = "mhc"
    n: int = 4
    init_std: float = 0.02
    scale_out_init: bool = True
    norm_eps: float = 1e-6
    alpha_init: float = 0.01
    phi_std: float = 0.0
    res_logit_gap: float = 4.0
    iters: int = 20
    rms_eps: float = 1e-6
    pre_eps: float = 1e-6
    sinkhorn_eps: float = 1e-6
    post_scale: float = 2.0
    seed: int = 0
    history: int = 4
    history_constraint: str = "softmax"
    history_gate: bool = False
    detach_history: bool = False

    arch: str = "transformer"
    norm: str = "pre"
    inputs: str = "tokens"
    patch_dim: int = 0
    res_init: str = "identity"

    def __post_init__(self):
        """Validate every field and store numbers as Python int / float / bool (numpy scalars
        and 0-d arrays are accepted: a numpy seed would overflow `seed * 100_003` and stop
        `to_json`)."""
        if self.variant not in LM_VARIANTS:
            raise ValueError(f"variant must be one of {LM_VARIANTS}, got {self.variant!r}")
        for name, allowed in (("arch", ARCHS), ("norm", NORMS), ("inputs", INPUTS), ("res_init", RES_INITS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"LMConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731  (frozen)
        for name in ("vocab", "dim", "n_layers", "n_heads", "mlp_ratio", "seq_len"):
            set_(name, checks.integer(getattr(self, name), f"LMConfig.{name}"))
        set_("seed", checks.integer(self.seed, "LMConfig.seed", minimum=0))
        if self.inputs == "patches":
            try:
                set_("patch_dim", checks.integer(self.patch_dim, "LMConfig.patch_dim"))
            except ValueError:
                raise ValueError(f"LMConfig.patch_dim must be an integer >= 1 for inputs 'patches', "
                                 f"got {self.patch_dim!r}") from None
        else:
            set_("patch_dim", checks.integer(self.patch_dim, "LMConfig.patch_dim", minimum=0))
        for name in ("init_std", "norm_eps", "phi_std"):
            set_(name, checks.non_negative(getattr(self, name), f"LMConfig.{name}"))
        for name in ("alpha_init", "res_logit_gap"):
            set_(name, checks.real(getattr(self, name), f"LMConfig.{name}"))
        for name in ("scale_out_init", "history_gate", "detach_history"):
            set_(name, checks.flag(getattr(self, name), f"LMConfig.{name}"))
        if self.variant in ("residual", "history") and self.n != 1:
            set_("n", 1)  # one stream: the baseline, and the history design
        set_("n", checks.streams(self.n))
        if self.variant == "mhc-lite":
            checks.res_width(self.n, self.variant)  # n <= 6
        set_("history", hist.check_history(self.history))
        hist.check_constraint(self.history_constraint)
        if self.dim % self.n_heads:
            raise ValueError(f"LMConfig.dim ({self.dim}) must be divisible by n_heads ({self.n_heads})")
        for name, value in self.mhc_config().as_dict().items():  # validates iters and the eps values
            set_(name, value)

    @property
    def hidden(self) -> int:
        return self.mlp_ratio * self.dim

    @property
    def sublayers(self) -> tuple[str, ...]:
        """Sub-layer kinds of one block, in order: ('attn', 'mlp') or ('mlp',)."""
        return SUBLAYERS if self.arch == "transformer" else ("mlp",)

    @property
    def n_mixing_layers(self) -> int:
        return len(self.sublayers) * self.n_layers

    @property
    def causal(self) -> bool:
        """Causal attention for token LMs, bidirectional for patches (ViT)."""
        return self.inputs == "tokens"

    def mhc_config(self) -> MHCConfig:
        return MHCConfig(iters=self.iters, rms_eps=self.rms_eps, pre_eps=self.pre_eps,
                         sinkhorn_eps=self.sinkhorn_eps, post_scale=self.post_scale)

    def mhc_kwargs(self) -> dict:
        """Keyword arguments of mhc_core.step / the backends' MHC for this model."""
        return self.mhc_config().as_dict()

    def as_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LMConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LMConfig fields {unknown}; expected a subset of {sorted(known)}")
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.as_dict(), indent=2, sort_keys=True)


def layer_names(cfg: LMConfig) -> list[str]:
    """Module path of every mixing layer in order: blocks.0.attn, blocks.0.mlp, ...
    (arch 'mlp': blocks.0.mlp, blocks.1.mlp, ...)."""
    return [f"blocks.{i}.{s}" for i in range(cfg.n_layers) for s in cfg.sublayers]


def sublayer_shapes(cfg: LMConfig, kind: str) -> dict[str, tuple[int, ...]]:
    """Shapes of the wrapped layer f's weights (names relative to the MHC module)."""
    c, h = cfg.dim, cfg.hidden
    norm = {"layer.norm.weight": (c,)} if cfg.norm == "pre" else {}
    if kind == "attn":
        return {**norm, "layer.qkv.weight": (3 * c, c), "layer.proj.weight": (c, c)}
    if kind == "mlp":
        return {**norm, "layer.fc1.weight": (h, c), "layer.fc2.weight": (c, h)}
    raise ValueError(f"sub-layer kind must be one of {SUBLAYERS}, got {kind!r}")


def init_lm_params(cfg: LMConfig, dtype=np.float32) -> dict[str, np.ndarray]:
    """Fresh weights for `cfg` as {dotted name: numpy array}.

    The layer weights are drawn from one generator seeded by cfg.seed in a fixed order
    that does not depend on the variant or n, so residual / hc / mhc models with the same
    seed start from the same f weights; the mixing parameters come from
    mhc_core.init_params (phi = 0 by default: the warm-start init).
    """
    rng = np.random.default_rng(cfg.seed)
    std = cfg.init_std
    out_std = std / math.sqrt(cfg.n_mixing_layers) if cfg.scale_out_init else std
    mixing = {}
    if cfg.variant == "history":
        for name in layer_names(cfg):
            mixing[f"{name}.logits"] = hist.init_skip_logits(cfg.history, dtype=np.float64)
            if cfg.history_gate:
                mixing[f"{name}.gate"] = np.array(hist.GATE_INIT)
    elif cfg.variant != "residual":
        gap = 2.0 if cfg.res_init == "seed002" else cfg.res_logit_gap
        for l, name in enumerate(layer_names(cfg)):
            mix = init_params(cfg.n, cfg.dim, variant=cfg.variant, alpha=cfg.alpha_init,
                              phi_std=cfg.phi_std, res_logit_gap=gap,
                              pre_eps=cfg.pre_eps, seed=cfg.seed * 100_003 + l, dtype=np.float64)
            if cfg.variant == "hc" and cfg.res_init == "seed002":  # static res = exp(2I - 1), unnormalised
                mix["bias"][2 * cfg.n:] = np.exp(2.0 * np.eye(cfg.n) - 1.0).reshape(-1)
            mixing.update({f"{name}.{k}": v for k, v in mix.items()})
    p = {}
    for name, shape in lm_param_shapes(cfg).items():  # fixed order: the draws do not depend on the variant
        if name in mixing:
            p[name] = mixing[name]
        elif name.endswith("norm.weight"):
            p[name] = np.ones(shape)
        elif name.endswith(("proj.weight", "fc2.weight")):
            p[name] = rng.normal(0.0, out_std, shape)
        else:
            p[name] = rng.normal(0.0, std, shape)
    return {k: np.asarray(v, dtype=dtype) for k, v in p.items()}


def lm_param_shapes(cfg: LMConfig) -> dict[str, tuple[int, ...]]:
    """{name: shape} of every parameter, in init_lm_params order (no weights drawn)."""
    c = cfg.dim
    embed = {"embed.weight": (cfg.vocab, c)} if cfg.inputs == "tokens" else {"patch_embed.weight": (c, cfg.patch_dim)}
    shapes = {**embed, "pos_embed.weight": (cfg.seq_len, c)}
    for i in range(cfg.n_layers):
        for kind in cfg.sublayers:
            shapes.update({f"blocks.{i}.{kind}.{k}": v for k, v in sublayer_shapes(cfg, kind).items()})
            if cfg.norm == "post":
                shapes[f"blocks.{i}.{kind}_norm.weight"] = (c,)
    if cfg.norm != "none":
        shapes["head_norm.weight"] = (c,)
    shapes["head.weight"] = (cfg.vocab, c)
    for name in layer_names(cfg):
        if cfg.variant == "history":
            shapes[f"{name}.logits"] = (cfg.history,)
            if cfg.history_gate:
                shapes[f"{name}.gate"] = ()
        else:
            shapes.update({f"{name}.{k}": v for k, v in param_shapes(cfg.n, c, cfg.variant).items()})
    return shapes


def history_weights_of(cfg: LMConfig, state: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Each mixing layer's noise-free skip weights (numpy float64, gate included), [k_l] for
    the k_l = min(K, l + 1) states layer l sees (variant 'history')."""
    out = []
    for l, name in enumerate(layer_names(cfg)):
        logits = np.asarray(state[f"{name}.logits"], dtype=np.float64)
        w = hist.skip_weights(logits, min(cfg.history, l + 1), constraint=cfg.history_constraint)
        gate = np.asarray(state[f"{name}.gate"], dtype=np.float64) if cfg.history_gate else None
        out.append(hist.applied_weights(w, gate=gate))
    return out


def history_report(cfg: LMConfig, state: dict[str, np.ndarray]) -> list[dict]:
    """`mhc_core.gain_report`'s records for the 'history' variant (mhc_core.history_gain_report)."""
    return hist.history_gain_report(history_weights_of(cfg, state), cfg.history)


def mixing_matrices(cfg: LMConfig, layer_inputs: list, state: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Each mixing layer's `res [..., n, n]` (numpy float64) from its recorded input.

    layer_inputs[l]: the stream state entering layer l (layer_names order), [..., n, C],
    any array convertible by np.asarray. state: the model's parameters by name. The
    residual variant's res is the 1x1 identity (gain 1) for every token.
    """
    if cfg.variant == "history":
        raise ValueError("variant 'history' has no res matrices; its metrics come from history_report(cfg, state)")
    names = layer_names(cfg)
    if len(layer_inputs) != len(names):
        raise ValueError(f"expected {len(names)} layer inputs (one per sub-layer), got {len(layer_inputs)}")
    out = []
    for name, x in zip(names, layer_inputs):
        x = np.asarray(x, dtype=np.float64)
        if cfg.variant == "residual":
            out.append(np.ones(x.shape[:-2] + (1, 1)))
            continue
        phi, bias, alpha = (np.asarray(state[f"{name}.{k}"], dtype=np.float64) for k in ("phi", "bias", "alpha"))
        _, _, res = coefficients(x, phi, bias, alpha, variant=cfg.variant, **cfg.mhc_kwargs())
        out.append(res)
    return out


def check_input_shape(cfg: LMConfig, shape) -> None:
    """ValueError unless `shape` is what the model takes: tokens [B, T] with T <= seq_len,
    or patches [B, T, patch_dim] with 1 <= T <= seq_len (mean pooling needs a token)."""
    shape = tuple(shape)
    if cfg.inputs == "patches":
        if len(shape) != 3 or shape[2] != cfg.patch_dim or not 1 <= shape[1] <= cfg.seq_len:
            raise ValueError(f"patches must be [B, T, {cfg.patch_dim}] with 1 <= T <= {cfg.seq_len}, got {list(shape)}")
        return
    if len(shape) != 2:
        raise ValueError(f"token ids must be [B, T] with T <= {cfg.seq_len}, got {list(shape)}")
    if shape[1] > cfg.seq_len:
        raise ValueError(f"sequence length {shape[1]} exceeds the model's seq_len {cfg.seq_len}")


def check_ids(ids, vocab: int, what: str = "token ids") -> None:
    """ValueError unless every id (token ids, or targets: next tokens / class labels) lies in
    [0, vocab): an id outside is an IndexError in torch, but MLX gathers some row silently."""
    a = np.asarray(ids)
    outside = (a < 0) | (a >= vocab)
    if outside.any():
        raise ValueError(f"{what} must be in [0, {vocab}) (vocab {vocab}), got {a[outside].flat[0]}")


def check_mask(mask, targets) -> np.ndarray:
    """The loss mask as float32: one weight per position, [T] for targets [B, T] (class
    targets [B] do not use it). The loss is a mean over rows and weighted positions, so
    ValueError for no row, a mask of another shape (a [B, T] mask would broadcast against
    the per-token loss while the mean still divides by B * mask.sum()) or no weight."""
    mask = np.asarray(mask, dtype=np.float32)
    t = np.shape(targets)
    if not t or t[0] == 0:
        raise ValueError(f"targets must hold at least one row, got shape {list(t)}")
    if len(t) == 2:
        if mask.shape != (t[1],):
            raise ValueError(f"mask must have shape [T] = [{t[1]}] (one weight per position), got {list(mask.shape)}")
        if not mask.sum() > 0:
            raise ValueError(f"mask must weight at least one position, got {mask.tolist()}")
    return mask


TINY_SQUARES = 1e-30  # a float32 sum of squares below this may have lost terms to underflow


def squared_norms(sq, rescaled) -> np.ndarray:
    """Per-tensor squared L2 norms in float64 (both backends call this).

    sq[k] is a backend's float32 sum of squares of gradient k. Squares overflow float32
    above ~1.8e19 and underflow below ~1e-19, so a sum that is not finite or is below
    TINY_SQUARES is taken again from `rescaled(k) -> (amax, scaled, finite)`: amax = max |g|,
    scaled = sum (g / amax)^2 (0 when amax = 0), finite = every entry finite; the norm is
    amax^2 * scaled in float64, NaN for a tensor holding NaN / Inf (counted by `grad_norms`).
    Only those tensors pay for the second pass."""
    out = np.asarray(sq, dtype=np.float64).copy()
    for k in np.flatnonzero(~(out >= TINY_SQUARES) | ~np.isfinite(out)):
        amax, scaled, finite = rescaled(int(k))
        out[k] = float(amax) ** 2 * float(scaled) if finite else np.nan
    return out


def grad_norms(names: list[str], sq, layers: list[str]) -> dict:
    """Gradient norms from per-parameter squared L2 norms (both backends call this).

    names[k] / sq[k]: a parameter's dotted name and the squared L2 norm of its gradient.
    layers: layer_names(cfg). Returns grad_norm (total), layer_grad_norm (per mixing
    layer: the norm over the wrapped sub-layer's weights `<layer>.layer.*`, so the
    variants are compared on the same weights), mixing_grad_norm (every phi / bias /
    alpha) and nonfinite_grad_tensors (how many gradients hold a NaN or Inf).
    """
    sq = np.asarray(sq, dtype=np.float64)
    index = {name: l for l, name in enumerate(layers)}
    per_layer = np.zeros(len(layers))
    mixing = 0.0
    for name, s in zip(names, sq):
        owner, _, rest = name.partition(".layer.")
        if rest and owner in index:
            per_layer[index[owner]] += s
        elif name.rsplit(".", 1)[0] in index:
            mixing += s
    return {
        "grad_norm": float(np.sqrt(sq.sum())),
        "layer_grad_norm": np.sqrt(per_layer).tolist(),
        "mixing_grad_norm": float(np.sqrt(mixing)),
        "nonfinite_grad_tensors": int((~np.isfinite(sq)).sum()),
    }


def lr_at(step: int, lr: float, warmup: int = 0) -> float:
    """Learning rate at 0-based `step`: linear warmup over `warmup` steps, then constant."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr
