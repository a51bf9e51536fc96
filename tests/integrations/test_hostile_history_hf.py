"""History mixing (`inject(..., history=K)`) on transformers models as a user meets it:
tied embeddings with the wrapped module holding the tied weight (lm_head under an
nn.Linear target), saved and loaded; compared with the model that was saved (tiny Llama,
nothing downloaded)."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from mhc_core_torch.integrations import inject, load_converted

transformers = pytest.importorskip("transformers")


def _tied_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                      num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                                      max_position_embeddings=64, tie_word_embeddings=True)
    return transformers.LlamaForCausalLM(config).eval()


@torch.no_grad()
def _moved(model):
    gen = torch.Generator().manual_seed(5)
    for name, p in model.named_parameters():
        if ".skip." in name:
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model


def test_tied_lm_head_wrapped_round_trips(token_ids, tmp_path):
    """inject(model, nn.Linear, history=2) wraps lm_head, whose weight is the embedding's:
    the tie holds, save_pretrained stores it once and load_converted ties it again."""
    model = _moved(inject(_tied_llama(), nn.Linear, history=2))
    assert model.lm_head.module.weight is model.model.embed_tokens.weight
    model.save_pretrained(tmp_path / "saved")
    loaded = load_converted(tmp_path / "saved").eval()
    assert loaded.lm_head.module.weight is loaded.model.embed_tokens.weight
    with torch.no_grad():
        assert torch.equal(loaded(token_ids).logits, model(token_ids).logits)
        loaded.model.embed_tokens.weight.add_(1.0)  # still one tensor after loading
        assert torch.equal(loaded.lm_head.module.weight, loaded.model.embed_tokens.weight)


def _logits_with_skips(model, ids, values: dict):
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".skip." in name:
                p.copy_(values[name.replace(".module.", ".")])
        return model(ids).logits


def test_history_inside_wrapped_modules(decoder, token_ids, tmp_path):
    """Wrapping the decoder layers, then their MLPs, wraps the MLPs inside the wrapped layers
    (it said no module matches 'LlamaMLP'): the same model as MLPs first, then layers, and it
    round-trips through save_pretrained / load_converted."""
    outer_first = inject(inject(decoder("llama"), "LlamaDecoderLayer", history=2), "LlamaMLP", history=3)
    inner_first = inject(inject(decoder("llama"), "LlamaMLP", history=3), "LlamaDecoderLayer", history=2)
    gen = torch.Generator().manual_seed(5)
    values = {name.replace(".module.", "."): 0.3 * torch.randn(p.shape, generator=gen)
              for name, p in inner_first.named_parameters() if ".skip." in name}
    assert len(values) == 4
    expected = _logits_with_skips(inner_first.eval(), token_ids, values)
    got = _logits_with_skips(outer_first.eval(), token_ids, values)
    assert torch.equal(got, expected)
    outer_first.save_pretrained(tmp_path / "saved")
    with torch.no_grad():
        assert torch.equal(load_converted(tmp_path / "saved").eval()(token_ids).logits, expected)


def test_same_target_twice_is_named(decoder):
    model = inject(decoder("llama"), "LlamaMLP", history=2)
    with pytest.raises(ValueError, match=r"every module matching target 'LlamaMLP' is history-wrapped already"):
        inject(model, "LlamaMLP", history=3)
