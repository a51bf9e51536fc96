"""mhc_core_torch.patch_deepseek_v4 on transformers' DeepSeek-V4 (tiny random config, every
attention kind: sliding, compressed-sparse with indexer, heavily-compressed; hash-routed
and top-k MoE): same logits, gradients and generations as the unpatched model, weights
and state-dict keys untouched."""
from __future__ import annotations

import copy

import pytest
import torch

import mhc_core
from mhc_core_torch import triton_gate
from mhc_core_torch.integrations import patch_deepseek_v4

ds = pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")
from transformers import DeepseekV4Config, DeepseekV4ForCausalLM  # noqa: E402

VOCAB, HIDDEN, N = 64, 32, 4


def tiny_model(seed: int = 0) -> DeepseekV4ForCausalLM:
    """4 layers: sliding / CSA (compress 4, indexer top-4) / HCA (compress 8) / CSA; layer 0
    hash-routed. hc weights far from HF's init (fn ~ N(0, 0.1), base ~ N(0, 0.5),
    scale ~ U(0.5, 1.5)) so every coefficient matters; hash table random."""
    config = DeepseekV4Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, moe_intermediate_size=32, num_hidden_layers=4,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, q_lora_rank=16, num_experts_per_tok=2,
        n_routed_experts=4, n_shared_experts=1, sliding_window=8, o_groups=2, o_lora_rank=16,
        index_n_heads=2, index_head_dim=16, index_topk=4, hc_mult=N, initializer_range=0.2,
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
        layer_types=["sliding_attention", "compressed_sparse_attention", "heavily_compressed_attention",
                     "compressed_sparse_attention"],
        mlp_layer_types=["hash_moe", "moe", "moe", "moe"],
    )
    torch.manual_seed(seed)
    model = DeepseekV4ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf in ("fn", "hc_fn"):
                p.normal_(0.0, 0.1)
            elif leaf in ("base", "hc_base"):
                p.normal_(0.0, 0.5)
            elif leaf in ("scale", "hc_scale"):
                p.uniform_(0.5, 1.5)
            elif "norm" in name:
                p.add_(torch.randn(p.shape) * 0.2)
        for name, b in model.named_buffers():
            if name.endswith("tid2eid"):
                b.copy_(torch.randint(0, 4, b.shape))
    return model


@pytest.fixture(scope="module")
def models():
    original = tiny_model()
    return original, patch_deepseek_v4(copy.deepcopy(original))


@pytest.fixture
def ids():
    return torch.randint(0, VOCAB, (2, 20), generator=torch.Generator().manual_seed(3))


def test_patch_swaps_every_hyper_connection(models):
    original, patched = models
    assert patched.mhc_patched == {"hyper_connections": 8, "decoder_layers": 4, "heads": 1}
    assert type(patched.model.layers[1].attn_hc).__name__ == "MHCDeepseekV4HyperConnection"
    assert isinstance(patched.model.layers[1].attn_hc, ds.DeepseekV4HyperConnection)
    assert type(patched.model.hc_head).__name__ == "MHCDeepseekV4HyperHead"
    before, after = original.state_dict(), patched.state_dict()
    assert list(before) == list(after)
    assert max(float((before[k].float() - after[k].float()).abs().max()) for k in before) == 0.0


def test_same_logits_as_unpatched(models, ids, assert_close):
    original, patched = models
    with torch.no_grad():
        want, got = original(ids).logits, patched(ids).logits
    assert float(want.abs().max()) > 1.0
    assert_close(got, want, 1e-5, "deepseek-v4 float32 logits")


def test_hyper_connection_keeps_its_contract(models):
    """attn_hc(x) still returns (post, comb, collapsed) as the original module does."""
    original, patched = models
    x = torch.randn(2, 5, N, HIDDEN, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        for want, got in zip(original.model.layers[2].ffn_hc(x), patched.model.layers[2].ffn_hc(x)):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
        torch.testing.assert_close(patched.model.hc_head(x), original.model.hc_head(x), rtol=0, atol=1e-6)


def test_same_gradients_as_unpatched(ids, assert_close):
    original = tiny_model(seed=1).train()
    patched = patch_deepseek_v4(copy.deepcopy(original)).train()
    for model in (original, patched):
        model(ids, labels=ids).loss.backward()
    grads = dict(original.named_parameters())
    for name, p in patched.named_parameters():
        if name.rsplit(".", 1)[-1] in ("fn", "base", "scale", "hc_fn", "hc_base", "hc_scale"):
            assert float(p.grad.abs().max()) > 0, name
            assert_close(p.grad, grads[name].grad, 1e-5, f"grad {name}")


def test_generate_matches_unpatched(models, ids):
    original, patched = models
    kw = dict(max_new_tokens=6, do_sample=False, pad_token_id=0)
    want = original.generate(ids[:, :10], **kw)
    assert torch.equal(patched.generate(ids[:, :10], **kw), want)


def test_bfloat16_step_is_at_least_as_accurate(models):
    """One residual step in bf16 around a Linear, against the same step in float32.
    DeepSeek's eager code mixes post * y + comb^T x in bf16, mhc_core in float32 and
    casts once, so ours must be at least as close. (Whole-model bf16 logits are not
    compared: one bf16 rounding can flip a top-k MoE routing decision either way.)"""
    original, patched = models
    hc_theirs, hc_ours = original.model.layers[1].attn_hc, patched.model.layers[1].attn_hc
    g = torch.Generator().manual_seed(5)
    x = torch.randn(2, 6, N, HIDDEN, generator=g)
    layer = torch.nn.Linear(HIDDEN, HIDDEN)

    def eager(hc, x, layer):  # DeepseekV4DecoderLayer's mixing, in x's dtype
        post, comb, collapsed = hc(x)
        y = layer(collapsed)
        return post.to(x.dtype).unsqueeze(-1) * y.unsqueeze(-2) + torch.matmul(comb.to(x.dtype).transpose(-1, -2), x)

    with torch.no_grad():
        reference = eager(hc_theirs, x, layer)
        layer16 = copy.deepcopy(layer).to(torch.bfloat16)
        theirs = eager(hc_theirs, x.bfloat16(), layer16).float()
        ours = hc_ours.step(x.bfloat16(), layer16).float()
        assert float((hc_ours.step(x, layer) - reference).abs().max()) < 1e-5
    err_theirs = float((theirs - reference).abs().max())
    err_ours = float((ours - reference).abs().max())
    assert err_ours <= 2e-2 * max(1.0, float(reference.abs().max())), f"bf16 step error {err_ours:.3e}"
    assert err_ours <= err_theirs, f"ours {err_ours:.3e} vs DeepSeek eager {err_theirs:.3e}"


def test_triton_path_where_it_can_run(models, ids, assert_close):
    original, _ = models
    x = torch.zeros(1, 1, N, HIDDEN)
    reason = triton_gate.unavailable_reason(x)
    if reason is not None:
        pytest.skip(reason)
    patched = patch_deepseek_v4(copy.deepcopy(original), impl="triton")
    with torch.no_grad():
        assert_close(patched(ids[:, :8]).logits, original(ids[:, :8]).logits, 1e-5, "deepseek-v4 triton")


def test_bad_input():
    with pytest.raises(ValueError, match="already patched"):
        patch_deepseek_v4(patch_deepseek_v4(tiny_model()))
    with pytest.raises(ValueError, match="no DeepseekV4HyperConnection"):
        patch_deepseek_v4(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="impl must be one of"):
        patch_deepseek_v4(tiny_model(), impl="cuda")
    assert mhc_core.MHCConfig().iters == 20  # the mapping relies on DeepSeek's defaults being ours
