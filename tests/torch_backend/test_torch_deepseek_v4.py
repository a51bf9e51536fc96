"""DeepSeek-V4 compatibility against the real transformers classes (tiny config, built
locally, nothing downloaded).

Mapping: phi = fn.T, bias = base, alpha = scale, rms_eps = rms_norm_eps, pre_eps =
sinkhorn_eps = hc_eps, iters = hc_sinkhorn_iters, post_scale = 2 (our defaults are these).
Weights are randomised well away from HF's init (fn ~ N(0, 0.02), base 0, scale 1) so every
term of the coefficients matters.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

import mhc_core
from mhc_core_torch import MHC, StreamHead, load_state

ds = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")
from transformers import DeepseekV4Config  # noqa: E402
from transformers.masking_utils import create_sliding_window_causal_mask  # noqa: E402

N, C = 4, 16


@pytest.fixture(autouse=True)
def _seeded():
    """Every test draws its inputs from a seeded generator, so the errors that
    `MHC_REPORT_ERRORS=1` prints (the README's DeepSeek-V4 table) repeat from run to run."""
    torch.manual_seed(0)


def tiny_config() -> DeepseekV4Config:
    """One sliding-attention layer with a top-k MoE (hash routing would need input_ids)."""
    return DeepseekV4Config(
        vocab_size=32, hidden_size=C, moe_intermediate_size=8, num_hidden_layers=1,
        num_attention_heads=2, head_dim=8, q_lora_rank=8, o_groups=1, o_lora_rank=8,
        n_routed_experts=4, num_experts_per_tok=2, hc_mult=N, sliding_window=8,
        layer_types=["sliding_attention"], mlp_layer_types=["moe"],
    )


def cfg_of(config) -> dict:
    return dict(iters=config.hc_sinkhorn_iters, rms_eps=config.rms_norm_eps,
                pre_eps=config.hc_eps, sinkhorn_eps=config.hc_eps, post_scale=2.0)


@torch.no_grad()
def randomise(module: nn.Module, seed: int) -> None:
    """Every parameter away from its init: norms 1 + N(0, 0.2), sinks N(0, 1), hc fn
    N(0, 0.1) (z = rmsnorm(v) @ fn.T then has std ~0.8), base N(0, 0.5), scale U(0.5, 1.5),
    other weights N(0, 1/sqrt(fan_in))."""
    g = torch.Generator().manual_seed(seed)

    def normal(p, std, mean=0.0):
        p.copy_(torch.randn(p.shape, generator=g) * std + mean)

    for name, p in module.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if "norm" in name:
            normal(p, 0.2, 1.0)
        elif leaf == "sinks":
            normal(p, 1.0)
        elif leaf in ("fn", "hc_fn"):
            normal(p, 0.1)
        elif leaf in ("base", "hc_base"):
            normal(p, 0.5)
        elif leaf in ("scale", "hc_scale"):
            p.copy_(torch.rand(p.shape, generator=g) + 0.5)
        else:
            normal(p, p.shape[-1] ** -0.5)


def mixing_init(hc) -> dict:
    """Our parameters from a DeepseekV4HyperConnection."""
    return {"phi": hc.fn.detach().T, "bias": hc.base.detach(), "alpha": hc.scale.detach()}


# --- DeepseekV4HyperConnection -------------------------------------------------------------


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.bfloat16, 2e-2)], ids=["float32", "bfloat16"])
def test_hyper_connection_coefficients_and_mixing(dtype, tol, assert_close):
    """coefficients + pre_aggregate + post_residual = HF's (post, comb, collapsed) and the
    decoder layer's `post * out + comb^T @ x` (the hc weights are float32 in both, as
    DeepSeek keeps them; x and the block output in `dtype`)."""
    config = tiny_config()
    hc = ds.DeepseekV4HyperConnection(config)
    randomise(hc, seed=0)
    x = torch.randn(2, 5, N, C).to(dtype)  # [B, S, n, C]
    y = torch.randn(2, 5, C).to(dtype)  # a block output
    with torch.no_grad():
        post_hf, comb_hf, collapsed_hf = hc(x)
        mixed_hf = post_hf.to(dtype).unsqueeze(-1) * y.unsqueeze(-2) + torch.matmul(comb_hf.to(dtype).transpose(-1, -2), x)
        p = mixing_init(hc)
        pre, post, res = mhc_core.coefficients(x, p["phi"], p["bias"], p["alpha"], **cfg_of(config))
        collapsed = mhc_core.pre_aggregate(x, pre)
        mixed = mhc_core.post_residual(x, y, post, res)
    case = str(dtype).removeprefix("torch.")
    assert post.dtype == res.dtype == torch.float32 and collapsed.dtype == mixed.dtype == dtype
    assert_close(post, post_hf, 1e-6, f"post {case}")  # float32 in both: rounding only
    assert_close(res, comb_hf, 1e-6, f"comb {case}")
    assert_close(collapsed, collapsed_hf, tol, f"collapsed {case}")
    assert_close(mixed, mixed_hf, tol, f"decoder mixing {case}")


def test_mhc_module_reproduces_a_hyper_connection_step(assert_close):
    """The MHC module around a block = HF's attn_hc + block + the decoder layer's mixing,
    forward and the gradients w.r.t. x and fn (ours: phi = fn^T)."""
    config = tiny_config()
    hc = ds.DeepseekV4HyperConnection(config)
    randomise(hc, seed=1)
    block = nn.Sequential(nn.Linear(C, C), nn.SiLU())
    ours = MHC(block, N, C, init=mixing_init(hc), **cfg_of(config))
    x = torch.randn(3, 2, N, C)
    x_hf, x_ours = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    post, comb, collapsed = hc(x_hf)
    out_hf = post.unsqueeze(-1) * block(collapsed).unsqueeze(-2) + torch.matmul(comb.transpose(-1, -2), x_hf)
    out = ours(x_ours)
    assert_close(out, out_hf, 1e-5, "MHC step vs attn_hc step")
    cot = torch.randn_like(out)
    g_x_hf, g_fn = torch.autograd.grad((out_hf * cot).sum(), (x_hf, hc.fn))
    g_x, g_phi = torch.autograd.grad((out * cot).sum(), (x_ours, ours.phi))
    assert_close(g_x, g_x_hf, 1e-5, "grad x")
    assert_close(g_phi, g_fn.T, 1e-5, "grad phi vs grad fn^T")


# --- DeepseekV4HyperHead ------------------------------------------------------------------


def test_stream_head_reproduces_hyper_head(assert_close):
    config = tiny_config()
    head_hf = ds.DeepseekV4HyperHead(config)
    randomise(head_hf, seed=2)
    head = load_state(StreamHead(N, C, rms_eps=config.rms_norm_eps, eps=config.hc_eps),
                      {"phi": head_hf.hc_fn.detach().T, "bias": head_hf.hc_base.detach(),
                       "alpha": head_hf.hc_scale.detach()})
    x = torch.randn(2, 5, N, C)
    with torch.no_grad():
        assert_close(head(x), head_hf(x), 1e-6, "StreamHead vs DeepseekV4HyperHead")


# --- a whole DeepseekV4DecoderLayer ---------------------------------------------------------


class NormThen(nn.Module):
    """`sub(norm(h), **kw)`: a decoder sub-block with its pre-norm; [..., C] -> [..., C]
    (the attention's (output, weights) tuple reduced to the output)."""

    def __init__(self, norm: nn.Module, sub: nn.Module):
        super().__init__()
        self.norm, self.sub = norm, sub

    def forward(self, h, **kwargs):
        out = self.sub(self.norm(h), **kwargs)
        return out[0] if isinstance(out, tuple) else out


def test_decoder_layer_equals_two_mhc_steps(assert_close):
    """The real DeepseekV4DecoderLayer (attention with sinks and RoPE, top-k MoE) equals
    MHC(input_layernorm -> self_attn) then MHC(post_attention_layernorm -> mlp), built from
    the layer's own submodules and its attn_hc / ffn_hc weights."""
    config = tiny_config()
    torch.manual_seed(0)
    model = ds.DeepseekV4Model(config).eval()  # post_init fills the torch.empty parameters
    layer = model.layers[0]
    randomise(layer, seed=3)
    batch, seq = 2, 6
    emb = torch.randn(batch, seq, C)
    pid = torch.arange(seq)[None]
    kwargs = dict(
        position_embeddings={kind: model.rotary_emb(emb, position_ids=pid, layer_type=kind)
                             for kind in ("main", "compress")},
        position_ids=pid,
        attention_mask=create_sliding_window_causal_mask(config=config, inputs_embeds=emb, attention_mask=None,
                                                         past_key_values=None, position_ids=pid),
    )
    attn = MHC(NormThen(layer.input_layernorm, layer.self_attn), N, C, init=mixing_init(layer.attn_hc),
               **cfg_of(config))
    ffn = MHC(NormThen(layer.post_attention_layernorm, layer.mlp), N, C, init=mixing_init(layer.ffn_hc),
              **cfg_of(config))
    x = torch.randn(batch, seq, N, C)  # [B, S, n, C], streams not equal
    with torch.no_grad():
        want = layer(x, **kwargs)
        mid = attn(x, **kwargs)
        got = ffn(mid)
    assert float((want - x).abs().max()) > 0.1, "the layer should change its input noticeably"
    assert_close(got, want, 1e-5, "DeepseekV4DecoderLayer vs MHC(attn) -> MHC(mlp)")
