"""Round trips through transformers' own loaders and configs that carry a `config.mhc`
entry the model in hand does not match (tiny Llama built locally, nothing downloaded):
a converted checkpoint read with the plain class, a fresh model built from a converted
model's config. Converting such a model must record its own conversion only, so the
checkpoint it writes loads back with load_converted and gives the same logits."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from mhc_core_torch.integrations import convert, load_converted

transformers = pytest.importorskip("transformers")


@torch.no_grad()
def logits(model, ids):
    return model(ids).logits


def _blocks(settings: dict) -> list[str]:
    return [b for segment in settings["segments"] for b in segment["blocks"]]


@pytest.mark.parametrize("n", [4, 2])
def test_convert_after_plain_loading_a_converted_checkpoint(n, decoder, token_ids, tmp_path, assert_close):
    """AutoModelForCausalLM.from_pretrained on a converted checkpoint gives the plain
    architecture whose config still holds the checkpoint's `mhc` entry. Converting that
    model is a first conversion: the stale entry must not be taken for an earlier
    conversion of this model (it was: the layers were listed twice, load_converted then
    refused the checkpoint, and n=2 was refused as 'already converted')."""
    original = decoder("llama")
    convert(copy.deepcopy(original), n=4).save_pretrained(tmp_path / "converted")
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "converted").eval()
    assert type(plain) is transformers.LlamaForCausalLM
    assert_close(logits(plain, token_ids), logits(original, token_ids), 0.0, "plain load keeps the base weights")

    model = convert(plain, n=n)
    assert model.config.mhc["n"] == n
    assert _blocks(model.config.mhc) == ["model.layers.0", "model.layers.1"]
    assert_close(logits(model, token_ids), logits(original, token_ids), 1e-5, "warm start after plain load")

    model.save_pretrained(tmp_path / "again")
    saved = json.loads((tmp_path / "again" / "config.json").read_text())
    assert _blocks(saved["mhc"]) == ["model.layers.0", "model.layers.1"]
    loaded = load_converted(tmp_path / "again").eval()
    assert torch.equal(logits(loaded, token_ids), logits(model, token_ids))


def test_fresh_model_from_a_converted_models_config(decoder, token_ids, tmp_path, assert_close):
    """A model built from a converted model's config object (config.mhc set, shared):
    converting it must leave the first model's record alone and write its own once."""
    first = convert(decoder("llama"), n=4)
    before = copy.deepcopy(first.config.mhc)
    torch.manual_seed(1)
    second = transformers.LlamaForCausalLM(first.config).eval()
    want = logits(second, token_ids)  # plain model: no converted blocks yet
    convert(second, n=4)
    assert first.config.mhc == before
    assert _blocks(second.config.mhc) == ["model.layers.0", "model.layers.1"]
    assert_close(logits(second, token_ids), want, 1e-5, "warm start of the second model")

    first.save_pretrained(tmp_path / "first")
    second.save_pretrained(tmp_path / "second")
    for name, model in (("first", first), ("second", second)):
        loaded = load_converted(tmp_path / name).eval()
        assert torch.equal(logits(loaded, token_ids), logits(model, token_ids)), name


def _pickled(model, tmp_path, name):
    """torch.save of the whole module and torch.load back (pickle finds classes by name)."""
    torch.save(model, tmp_path / name)
    return torch.load(tmp_path / name, weights_only=False).eval()


def test_whole_model_torch_save_of_converted_and_loaded_models(decoder, token_ids, tmp_path):
    """torch.save(model) pickles the module tree: the run-time classes MHC<Layer> and
    load_converted's subclass could not be found by name (PicklingError), and Branch.call
    is a lambda. The unpickled models give the same logits and stay converted."""
    model = convert(decoder("qwen3"), n=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    for _ in range(2):  # streams no longer equal, so the mixing matters
        model(token_ids, labels=token_ids).loss.backward()
        opt.step()
        opt.zero_grad()
    model.eval()
    back = _pickled(model, tmp_path, "converted.pt")
    assert type(back.model.layers[0]) is type(model.model.layers[0])
    assert torch.equal(logits(back, token_ids), logits(model, token_ids))
    assert back.model.layers[0].attn_mhc.layer._block is back.model.layers[0]

    model.save_pretrained(tmp_path / "saved")
    loaded = load_converted(tmp_path / "saved").eval()
    again = _pickled(loaded, tmp_path, "loaded.pt")
    assert type(again) is type(loaded)
    assert torch.equal(logits(again, token_ids), logits(model, token_ids))
    again.save_pretrained(tmp_path / "saved-again")
    assert torch.equal(logits(load_converted(tmp_path / "saved-again"), token_ids), logits(model, token_ids))


def test_whole_model_torch_save_of_a_patched_deepseek_v4(tmp_path, assert_close):
    from mhc_core_torch.integrations import patch_deepseek_v4

    pytest.importorskip("transformers.models.deepseek_v4.modeling_deepseek_v4")
    config = transformers.DeepseekV4Config(
        vocab_size=64, hidden_size=32, moe_intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        num_key_value_heads=1, head_dim=16, q_lora_rank=16, num_experts_per_tok=2, n_routed_experts=4,
        n_shared_experts=1, sliding_window=8, o_groups=2, o_lora_rank=16, index_n_heads=2, index_head_dim=16,
        index_topk=4, hc_mult=4, initializer_range=0.2,
        compress_rates={"compressed_sparse_attention": 4, "heavily_compressed_attention": 8},
        layer_types=["sliding_attention", "compressed_sparse_attention"], mlp_layer_types=["moe", "moe"])
    torch.manual_seed(0)
    original = transformers.DeepseekV4ForCausalLM(config).eval()
    with torch.no_grad():
        for name, p in original.named_parameters():
            if name.rsplit(".", 1)[-1] in ("fn", "hc_fn"):
                p.normal_(0.0, 0.1)
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(3))
    patched = patch_deepseek_v4(copy.deepcopy(original))
    back = _pickled(patched, tmp_path, "patched.pt")
    assert type(back.model.layers[1].attn_hc) is type(patched.model.layers[1].attn_hc)
    assert torch.equal(logits(back, ids), logits(patched, ids))
    assert_close(logits(back, ids), logits(original, ids), 1e-5, "unpickled patched deepseek-v4")


def test_history_injected_model_round_trips_through_its_state_dict(decoder, token_ids, tmp_path):
    """Without save_pretrained: save the state_dict, inject the same history into a fresh
    model and load it back: the same logits, bit for bit (save_pretrained and
    load_converted: test_history_save_pretrained.py)."""
    from mhc_core_torch.integrations import inject

    model = inject(decoder("llama"), "LlamaDecoderLayer", history=2).eval()
    torch.save(model.state_dict(), tmp_path / "state.pt")
    fresh = inject(decoder("llama"), "LlamaDecoderLayer", history=2).eval()
    with torch.no_grad():  # other weights everywhere, so only the load can restore them
        for p in fresh.parameters():
            p.add_(1.0)
    assert not torch.equal(logits(fresh, token_ids), logits(model, token_ids))
    fresh.load_state_dict(torch.load(tmp_path / "state.pt"))
    assert torch.equal(logits(fresh, token_ids), logits(model, token_ids))


def test_streams_over_history_wrapped_layers_load_back(decoder, token_ids, tmp_path, assert_close):
    """History skips around the decoder layers, then streams over those layers (inject by
    class): config.mhc names the blocks inside the history wrappers
    ('model.layers.0.module'), which exist only once the recorded history entry has been
    applied again, so load_converted must check each segment's blocks when it comes to it."""
    from mhc_core_torch.integrations import inject

    model = decoder("llama")
    inject(model, "LlamaDecoderLayer", history=2, init="uniform")
    inject(model, "LlamaDecoderLayer", n=2)
    assert _blocks(model.config.mhc)[0] == "model.layers.0.module"
    model.save_pretrained(tmp_path / "m")
    loaded = load_converted(tmp_path / "m").eval()
    assert_close(logits(loaded, token_ids), logits(model.eval(), token_ids), 0.0, "history + streams load_converted")
