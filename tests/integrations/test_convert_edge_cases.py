"""convert() where users stray from the tested path: n = 8 with a learned head, bfloat16 /
float16 models, a model built on the meta device, tied embeddings through save / load,
a right-padded batch, and GPT-2 (a block shape convert does not handle)."""
from __future__ import annotations

import copy

import pytest
import torch

from mhc_core_torch.integrations import convert, load_converted

transformers = pytest.importorskip("transformers")


@torch.no_grad()
def logits(model, ids, **kw):
    return model(ids, **kw).logits


def test_eight_streams_with_a_head_warm_start(decoder, token_ids, assert_close):
    original = decoder("qwen3")
    model = convert(copy.deepcopy(original), n=8, reduce="head")
    assert model.model.layers[-1].mhc_head.n == 8
    assert_close(logits(model, token_ids), logits(original, token_ids), 1e-5, "qwen3 n=8 head")


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_model_converts_within_its_own_rounding(dtype, decoder, token_ids):
    """A bf16 / fp16 model: mHC parameters stay float32, the output keeps the model's dtype,
    and the converted model is no further from the float32 original than twice the
    distance of the unconverted low-precision model (its own rounding)."""
    reference = logits(decoder("llama"), token_ids)
    low = decoder("llama").to(dtype)
    own_rounding = float((logits(low, token_ids).float() - reference).abs().max())
    model = convert(copy.deepcopy(low), n=4)
    assert {p.dtype for name, p in model.named_parameters() if "_mhc" in name} == {torch.float32}
    out = logits(model, token_ids)
    assert out.dtype == dtype
    assert 0 < own_rounding < 0.5
    assert float((out.float() - reference).abs().max()) <= 2 * own_rounding


def test_meta_device_model_converts_and_takes_real_weights(decoder, token_ids):
    """Build on meta (no memory), convert, materialise, load a converted state dict."""
    trained = convert(decoder("llama"), n=4)
    with torch.no_grad():
        trained.model.layers[0].attn_mhc.phi.normal_(0, 0.05)
    with torch.device("meta"):
        skeleton = transformers.LlamaForCausalLM(trained.config.__class__(**{
            k: v for k, v in trained.config.to_dict().items() if k != "mhc"}))
    convert(skeleton, n=4)
    assert skeleton.model.layers[0].attn_mhc.phi.device.type == "meta"
    skeleton.to_empty(device="cpu")
    skeleton.load_state_dict(trained.state_dict())
    skeleton.model.rotary_emb.inv_freq.copy_(trained.model.rotary_emb.inv_freq)  # a non-persistent buffer
    assert torch.equal(logits(skeleton.eval(), token_ids), logits(trained, token_ids))


def test_tied_embeddings_round_trip(token_ids, tmp_path, assert_close):
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                                      tie_word_embeddings=True)
    original = transformers.LlamaForCausalLM(config).eval()
    model = convert(copy.deepcopy(original), n=4)
    assert_close(logits(model, token_ids), logits(original, token_ids), 1e-5, "tied llama n=4")
    model.save_pretrained(tmp_path)
    loaded = load_converted(tmp_path)
    assert loaded.lm_head.weight.data_ptr() == loaded.model.embed_tokens.weight.data_ptr()
    assert torch.equal(logits(loaded, token_ids), logits(model, token_ids))


def test_right_padded_batch_matches_on_real_tokens(decoder):
    original = decoder("mistral")
    model = convert(copy.deepcopy(original), n=4)
    ids = torch.randint(1, 64, (3, 9), generator=torch.Generator().manual_seed(5))
    mask = torch.ones_like(ids)
    mask[0, 6:] = 0
    mask[2, 3:] = 0
    diff = (logits(model, ids, attention_mask=mask) - logits(original, ids, attention_mask=mask)).abs()
    assert float((diff * mask[..., None]).max()) < 1e-5


def test_gpt2_is_refused_by_name():
    gpt2 = transformers.GPT2LMHeadModel(transformers.GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4,
                                                                n_positions=32))
    with pytest.raises(ValueError, match=r"no stack of pre-LN decoder layers.*GPT2Block"):
        convert(gpt2, n=4)


def test_hidden_states_between_converted_layers_are_the_streams(decoder, token_ids, assert_close):
    """output_hidden_states: the embedding [B, T, C], then each converted layer's output
    (the streams [B, T, n, C], last layer reduced to [B, T, C]) as DeepSeek-V4 reports them.
    At the warm start every stream equals the original's hidden state."""
    original = decoder("llama")
    model = convert(copy.deepcopy(original), n=4)
    with torch.no_grad():
        want = original(token_ids, output_hidden_states=True).hidden_states
        got = model(token_ids, output_hidden_states=True).hidden_states
    assert [tuple(h.shape) for h in got] == [(2, 12, 32), (2, 12, 4, 32), (2, 12, 32)]
    for i in range(4):
        assert_close(got[1][..., i, :], want[1], 1e-5, f"stream {i} after layer 0")
    assert_close(got[2], want[2], 1e-5, "final hidden state")


def test_models_sharing_one_config_object(token_ids, tmp_path, assert_close):
    """Two models built from one config object: converting one must not mark the other as
    converted, and converting the second (other n) must not append to the first's record
    (the saved checkpoint listed every layer twice and load_converted refused it)."""
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    original, first, second = (transformers.LlamaForCausalLM(config).eval() for _ in range(3))
    convert(first, n=4)
    assert getattr(original.config, "mhc", None) is None and getattr(config, "mhc", None) is None
    assert first.model.config is first.config  # inner modules see the converted model's config
    convert(second, n=2)
    assert first.config.mhc["n"] == 4 and second.config.mhc["n"] == 2
    assert [s["blocks"] for s in second.config.mhc["segments"]] == [["model.layers.0", "model.layers.1"]]
    second.save_pretrained(tmp_path)
    loaded = load_converted(tmp_path)
    assert torch.equal(logits(loaded, token_ids), logits(second, token_ids))


def test_attention_weights_are_the_originals_at_the_warm_start(decoder, token_ids, assert_close):
    """output_attentions (eager attention): each layer's weights [B, heads, T, T], computed
    on h = sum_i pre_i x_i, which at the warm start is the original's hidden state."""
    original = decoder("qwen3")
    original.set_attn_implementation("eager")
    model = convert(copy.deepcopy(original), n=3)
    with torch.no_grad():
        want = original(token_ids, output_attentions=True).attentions
        got = model(token_ids, output_attentions=True).attentions
    assert [tuple(a.shape) for a in got] == [(2, 4, 12, 12)] * 2
    for i, (g, w) in enumerate(zip(got, want)):
        assert_close(g, w, 1e-5, f"attention weights of layer {i}")
