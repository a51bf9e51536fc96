"""convert() reads a matched layer's forward: layers with Llama's four children but another
forward (a scaled residual, a config switch) are refused by name instead of converting to
a model with different logits; Granite's residual_multiplier is reproduced exactly;
OLMo's weightless LayerNorm gives C from its normalized_shape."""
from __future__ import annotations

import copy
import warnings

import pytest
import torch

from mhc_core_torch.integrations import convert, load_converted
from mhc_core.forward_check import read_forward

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, initializer_range=0.2, max_position_embeddings=64, tie_word_embeddings=False,
              pad_token_id=0, bos_token_id=1, eos_token_id=2)


def build(model_cls, config_cls, **kw):
    torch.manual_seed(0)
    model = model_cls(config_cls(**{**COMMON, **kw})).eval()
    with torch.no_grad():  # norm weights away from 1 so the norms matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn(p.shape) * 0.2)
    return model


@torch.no_grad()
def logits(model, ids):
    return model(ids).logits


def converted(model, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return convert(copy.deepcopy(model), **kw)


@pytest.mark.parametrize("n", [1, 2, 4])
def test_granite_residual_multiplier_warm_start(n, token_ids, assert_close):
    """Granite adds residual + f(x) * residual_multiplier: the mHC branch carries the factor."""
    original = build(transformers.GraniteForCausalLM, transformers.GraniteConfig, residual_multiplier=0.37,
                     embedding_multiplier=3.0, logits_scaling=2.0)
    want = logits(original, token_ids)
    assert float(want.abs().max()) > 0.5
    model = converted(original, n=n)
    assert model.model.layers[0].mhc_branch_scale == pytest.approx(0.37)
    assert_close(logits(model, token_ids), want, 1e-5, f"granite n={n}")


def test_granite_round_trip_keeps_the_scale(token_ids, tmp_path, assert_close):
    original = build(transformers.GraniteForCausalLM, transformers.GraniteConfig, residual_multiplier=0.37)
    model = converted(original, n=4)
    with torch.no_grad():
        model.model.layers[1].attn_mhc.phi.add_(torch.randn(model.model.layers[1].attn_mhc.phi.shape) * 0.1)
    want = logits(model, token_ids)
    model.save_pretrained(tmp_path)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = load_converted(tmp_path)
    assert torch.equal(logits(loaded, token_ids), want)


def test_olmo_weightless_layernorm_warm_start(token_ids, assert_close):
    """OLMo's LayerNorm has no weight; C comes from its normalized_shape."""
    original = build(transformers.OlmoForCausalLM, transformers.OlmoConfig)
    assert_close(logits(converted(original, n=4), token_ids), logits(original, token_ids), 1e-5, "olmo n=4")


class ScaledResidualLayer(transformers.models.llama.modeling_llama.LlamaDecoderLayer):
    """Llama's children, but the residual is scaled (MiniMax's form): not a plain residual add."""

    def forward(self, hidden_states, attention_mask=None, position_ids=None, past_key_values=None,
                use_cache=False, position_embeddings=None, **kwargs):
        residual = hidden_states
        hidden_states, _ = self.self_attn(self.input_layernorm(hidden_states), attention_mask=attention_mask,
                                          position_ids=position_ids, past_key_values=past_key_values,
                                          use_cache=use_cache, position_embeddings=position_embeddings, **kwargs)
        hidden_states = residual * self.residual_alpha + hidden_states
        residual = hidden_states
        return residual + self.mlp(self.post_attention_layernorm(hidden_states))


def test_same_children_other_forward_is_refused(token_ids):
    model = build(transformers.LlamaForCausalLM, transformers.LlamaConfig)
    for layer in model.model.layers:
        layer.__class__ = ScaledResidualLayer
        layer.residual_alpha = 0.5
    before = logits(model, token_ids)
    with pytest.raises(ValueError, match=r"ScaledResidualLayer.*residual \* self.residual_alpha"):
        convert(model, n=4)
    assert torch.equal(logits(model, token_ids), before)  # refused before touching anything


@pytest.mark.parametrize("name,statement", [
    ("MiniMaxDecoderLayer", "self.attn_alpha_factor"),
    ("MiniCPM3DecoderLayer", "self.residual_scale"),
    ("Molmo2DecoderLayer", "self.norm_after"),
    ("MoshiDecoderLayer", "self.mlp(hidden_states, codebook_idx)"),
])
def test_transformers_layers_with_other_forwards_are_read_as_such(name, statement):
    """transformers' own layers that have Llama's four children but not its forward."""
    import importlib

    module = {"MiniMaxDecoderLayer": "minimax", "MiniCPM3DecoderLayer": "minicpm3",
              "Molmo2DecoderLayer": "molmo2", "MoshiDecoderLayer": "moshi"}[name]
    try:
        cls = getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), name)
    except (ImportError, AttributeError):
        pytest.skip(f"transformers {transformers.__version__} has no {name}")
    reading = read_forward(cls)
    assert reading.readable and statement in reading.problems


@pytest.mark.parametrize("module,name", [("llama", "LlamaDecoderLayer"), ("qwen2", "Qwen2DecoderLayer"),
                                         ("qwen3", "Qwen3DecoderLayer"), ("mistral", "MistralDecoderLayer"),
                                         ("qwen3_moe", "Qwen3MoeDecoderLayer"), ("olmo", "OlmoDecoderLayer")])
def test_plain_layers_read_clean(module, name):
    import importlib

    reading = read_forward(getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), name))
    assert reading.readable and not reading.problems and not reading.scaled


def test_granite_reads_scaled():
    reading = read_forward(transformers.models.granite.modeling_granite.GraniteDecoderLayer)
    assert reading.scaled and not reading.problems


def test_unreadable_forward_converts_with_the_structure_warning(token_ids, assert_close):
    """A forward without source (built by exec) cannot be read: convert falls back to the
    structure match and its 'by structure only' warning (the warm start still holds here)."""
    namespace = {}
    exec("def forward(self, hidden_states, **kwargs):\n"
         "    return Base.forward(self, hidden_states, **kwargs)\n",
         {"Base": transformers.models.llama.modeling_llama.LlamaDecoderLayer}, namespace)
    layer_cls = type("GeneratedLayer", (transformers.models.llama.modeling_llama.LlamaDecoderLayer,),
                     {"forward": namespace["forward"]})
    assert not read_forward(layer_cls).readable
    original = build(transformers.LlamaForCausalLM, transformers.LlamaConfig)
    for layer in original.model.layers:
        layer.__class__ = layer_cls
    with pytest.warns(UserWarning, match="by structure only"):
        model = convert(copy.deepcopy(original), n=4)
    assert_close(logits(model, token_ids), logits(original, token_ids), 1e-5, "generated layer class")
