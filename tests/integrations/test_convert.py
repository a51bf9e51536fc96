"""mhc_core_torch.convert on real transformers decoders (Llama, Qwen2, Qwen3; tiny configs):
exact warm start, generate() with the KV cache, save_pretrained / load_converted
round trip, training reaches the mHC parameters."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import mhc_core_torch
from mhc_core_torch.integrations import convert, load_converted, mhc_steps

FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "qwen3_moe"]


@torch.no_grad()
def logits(model, ids, **kw):
    return model(ids, **kw).logits


@pytest.mark.parametrize("family", FAMILIES)
def test_warm_start_logits_match_original(family, decoder, token_ids, assert_close):
    original = decoder(family)
    converted = convert(copy.deepcopy(original), n=4)
    assert len(mhc_steps(converted)) == 4  # 2 layers x (attn, mlp)
    want = logits(original, token_ids)
    assert float(want.abs().max()) > 0.5, "logits too small for a meaningful comparison"
    assert_close(logits(converted, token_ids), want, 1e-5, f"{family} n=4 warm start")


def test_warm_start_holds_in_depth(assert_close, token_ids):
    """24 layers: the default sinkhorn_eps = 0 keeps res exactly doubly stochastic; with
    DeepSeek's 1e-6 each column sums to 1 - 1e-6 and the drift grows with depth."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=24,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2)
    original = transformers.LlamaForCausalLM(config).eval()
    want = logits(original, token_ids)
    exact = assert_close(logits(convert(copy.deepcopy(original), n=4), token_ids), want, 1e-5, "24 layers eps=0")
    drift = float((logits(convert(copy.deepcopy(original), n=4, sinkhorn_eps=1e-6), token_ids) - want).abs().max())
    assert drift > 5 * exact, (drift, exact)


@pytest.mark.parametrize("variant,n,reduce", [("hc", 4, "mean"), ("mhc", 2, "head"), ("residual", 1, "mean")])
def test_warm_start_other_settings(variant, n, reduce, decoder, token_ids, assert_close):
    original = decoder("llama")
    converted = convert(copy.deepcopy(original), n=n, variant=variant, reduce=reduce)
    assert_close(logits(converted, token_ids), logits(original, token_ids), 1e-5, f"llama {variant} n={n} {reduce}")


def test_layer_state_keys_are_kept(decoder):
    original = decoder("qwen3")
    converted = convert(copy.deepcopy(original), n=4)
    before, after = original.state_dict(), converted.state_dict()
    assert set(before) <= set(after)
    added = sorted(set(after) - set(before))
    assert added == sorted(f"model.layers.{i}.{b}_mhc.{p}" for i in range(2) for b in ("attn", "mlp")
                           for p in ("alpha", "bias", "phi"))
    assert after["model.layers.0.attn_mhc.phi"].shape == (4 * 32, 4 * 4 + 2 * 4)
    assert after["model.layers.0.attn_mhc.phi"].dtype == torch.float32


@pytest.mark.parametrize("family", ["llama", "qwen3"])
def test_generate_with_cache_matches_original(family, decoder, token_ids):
    original = decoder(family)
    converted = convert(copy.deepcopy(original), n=4)
    prompt = token_ids[:, :5]
    kw = dict(max_new_tokens=8, do_sample=False, pad_token_id=0)
    want = original.generate(prompt, **kw)
    got = converted.generate(prompt, **kw)
    no_cache = converted.generate(prompt, use_cache=False, **kw)
    assert want.shape == (2, 13)
    assert torch.equal(got, want), f"{family}: {got.tolist()} != {want.tolist()}"
    assert torch.equal(no_cache, got)


def _train(model, ids, steps=3, lr=1e-2):
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    for _ in range(steps):
        loss = model(ids, labels=ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


def test_training_changes_mhc_parameters(decoder, token_ids):
    model = convert(decoder("llama"), n=4)
    start = {k: v.detach().clone() for k, v in model.state_dict().items() if "_mhc." in k}
    model.train()
    model(token_ids, labels=token_ids).loss.backward()
    for name, step in mhc_steps(model):
        for p in ("phi", "bias"):
            g = getattr(step, p).grad
            assert g is not None and float(g.abs().max()) > 0, f"no gradient reaches {name}.{p}"
        # z = rmsnorm(x) @ phi is 0 at phi = 0, so d(alpha * z)/d alpha = 0 on the first step;
        # alpha starts learning once phi has moved (checked below).
        assert float(step.alpha.grad.abs().max()) == 0.0
    model.zero_grad()
    _train(model, token_ids)
    model.train()
    model(token_ids, labels=token_ids).loss.backward()
    assert min(float(s.alpha.grad.abs().max()) for _, s in mhc_steps(model)) > 0
    model.zero_grad()
    moved = {k: float((v - start[k]).abs().max()) for k, v in model.state_dict().items() if k in start}
    assert min(moved.values()) > 1e-4, f"mHC parameters that did not move: {moved}"


def test_save_load_round_trip_is_exact(decoder, token_ids, tmp_path):
    model = _train(convert(decoder("qwen2"), n=4), token_ids)  # trained: streams no longer equal
    model.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["Qwen2ForCausalLM"]
    assert saved["mhc"]["n"] == 4 and saved["mhc"]["segments"][0]["blocks"] == ["model.layers.0", "model.layers.1"]
    assert (tmp_path / "model.safetensors").exists()

    loaded = load_converted(tmp_path).eval()
    want, got = model.state_dict(), loaded.state_dict()
    assert set(got) == set(want)
    diff = {k: float((got[k].float() - want[k].float()).abs().max()) for k in want}
    assert max(diff.values()) == 0.0, {k: v for k, v in diff.items() if v}
    assert torch.equal(logits(loaded, token_ids), logits(model, token_ids))

    loaded.save_pretrained(tmp_path / "again")  # a second round trip keeps the same config
    again = json.loads((tmp_path / "again" / "config.json").read_text())
    assert again["architectures"] == saved["architectures"] and again["mhc"] == saved["mhc"]


def test_load_in_bfloat16_keeps_mhc_parameters_float32(decoder, tmp_path):
    convert(decoder("llama"), n=4).save_pretrained(tmp_path)
    loaded = load_converted(tmp_path, dtype=torch.bfloat16)
    assert loaded.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    assert loaded.model.layers[0].attn_mhc.phi.dtype == torch.float32


def test_bad_input_errors(decoder, tmp_path):
    model = convert(decoder("llama"), n=4)
    with pytest.raises(ValueError, match="already converted"):
        convert(model, n=4)
    with pytest.raises(ValueError, match="number of streams"):
        convert(decoder("llama"), n=0)
    with pytest.raises(ValueError, match="n must be 1"):
        convert(decoder("llama"), n=4, variant="residual")
    with pytest.raises(TypeError, match="unknown mHC settings"):
        convert(decoder("llama"), n=4, sinkhorn_iters=3)
    bert = pytest.importorskip("transformers").BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1,
                                                          num_attention_heads=2, intermediate_size=64)
    with pytest.raises(ValueError, match="no stack of pre-LN decoder layers"):
        convert(pytest.importorskip("transformers").BertModel(bert), n=4)
    transformers = pytest.importorskip("transformers")
    gemma = transformers.Gemma2ForCausalLM(transformers.Gemma2Config(  # sandwich norms: a different block
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16))
    with pytest.raises(ValueError, match="Gemma2DecoderLayer"):
        convert(gemma, n=4)
    decoder("llama").save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="no 'mhc' entry"):
        load_converted(tmp_path)
    layer = model.model.layers[1]
    with pytest.raises(ValueError, match="expects the streams"):
        layer(torch.zeros(1, 3, 32))


def test_exports():
    assert mhc_core_torch.convert is convert and mhc_core_torch.load_converted is load_converted


def test_left_padded_batch_generate_matches_original(decoder):
    """The attention mask reaches the attention inside the mHC step (padding tokens ignored)."""
    original = decoder("qwen2")
    converted = convert(copy.deepcopy(original), n=4)
    ids = torch.tensor([[0, 0, 5, 9, 3], [7, 1, 4, 4, 2]])
    mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 1, 1]])
    kw = dict(attention_mask=mask, max_new_tokens=6, do_sample=False, pad_token_id=0)
    assert torch.equal(converted.generate(ids, **kw), original.generate(ids, **kw))


def test_gradient_checkpointing_gives_the_same_gradients(decoder, token_ids, assert_close):
    model = _train(convert(decoder("llama"), n=4), token_ids, steps=2)  # streams differ
    twin = copy.deepcopy(model)
    twin.activation_checkpointing_enable()
    for m in (model, twin):
        m.train()
        m(token_ids, labels=token_ids).loss.backward()
    grads = dict(model.named_parameters())
    for name, p in twin.named_parameters():
        if "_mhc." in name or name.endswith("q_proj.weight"):
            assert_close(p.grad, grads[name].grad, 1e-5, f"checkpointed grad {name}")


def test_head_reduction_round_trip(decoder, token_ids, tmp_path):
    model = _train(convert(decoder("llama"), n=4, reduce="head"), token_ids, steps=2)
    assert model.model.layers[1].mhc_head.phi.shape == (4 * 32, 4)
    model.save_pretrained(tmp_path)
    loaded = load_converted(tmp_path).eval()
    assert torch.equal(logits(loaded, token_ids), logits(model, token_ids))


@pytest.mark.slow  # ~25 s in the Triton interpreter on 2 CPU cores
def test_triton_path_where_it_can_run(decoder, token_ids, assert_close):
    """impl='triton' (CUDA, or the Triton interpreter on CPU under TRITON_INTERPRET=1)."""
    from mhc_core_torch import triton_gate

    reason = triton_gate.unavailable_reason(torch.zeros(1, 4, 32))
    if reason is not None:
        pytest.skip(reason)
    original = decoder("llama")
    converted = convert(copy.deepcopy(original), n=4, impl="triton")
    assert_close(logits(converted, token_ids), logits(original, token_ids), 1e-5, "llama n=4 triton warm start")
    trained = _train(convert(decoder("llama"), n=4), token_ids, steps=2)
    on_triton = copy.deepcopy(trained)
    for _, step in mhc_steps(on_triton):
        step.impl = "triton"
    assert_close(logits(on_triton, token_ids), logits(trained, token_ids), 1e-5, "trained llama triton vs reference")


def test_checkpoint_without_mhc_values_loads_at_the_warm_start(decoder, token_ids, tmp_path, assert_close):
    """A checkpoint saved before converting, with config.mhc added (or one whose mHC tensors
    were dropped): transformers leaves the missing tensors uninitialised (NaN logits before);
    load_converted gives them the warm start, says so, and the logits are the original's."""
    original = decoder("llama")
    want = logits(original, token_ids)
    original.save_pretrained(tmp_path)
    converted_config = convert(copy.deepcopy(original), n=4).config.to_dict()
    config = json.loads((tmp_path / "config.json").read_text())
    config["mhc"] = converted_config["mhc"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"no values for 12 mHC parameters.*warm start"):
        loaded, info = load_converted(tmp_path, output_loading_info=True)
    assert "model.layers.0.attn_mhc.phi" in info["missing_keys"]
    assert_close(logits(loaded, token_ids), want, 1e-5, "unconverted checkpoint loaded converted")
    fresh = mhc_core_torch.MHC(torch.nn.Identity(), 4, 32, sinkhorn_eps=0.0)
    for name, p in loaded.model.layers[1].mlp_mhc.named_parameters(recurse=False):
        assert torch.equal(p, getattr(fresh, name)), name
