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
