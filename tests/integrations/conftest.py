"""Shared pieces of the integration tests: tiny transformers models built locally (nothing
is downloaded) (assert_close comes from tests/conftest.py). Handed out as fixtures so the tests collect
under any pytest import mode.

Weights use initializer_range 0.2 (HF's default 0.02 gives near-zero logits, where any
conversion error would hide): logits are O(1).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")

VOCAB, HIDDEN = 64, 32


def _decoder(family: str, seed: int = 0):
    """A 2-layer causal LM of `family` ('llama', 'qwen2', 'qwen3', 'mistral', 'qwen3_moe'), float32, eval."""
    common = dict(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=64, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, initializer_range=0.2,
                  max_position_embeddings=64, tie_word_embeddings=False)
    torch.manual_seed(seed)
    if family == "llama":
        model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**common))
    elif family == "qwen2":
        model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
    elif family == "qwen3":
        model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=8, **common))
    elif family == "mistral":
        model = transformers.MistralForCausalLM(transformers.MistralConfig(**common))
    elif family == "qwen3_moe":
        model = transformers.Qwen3MoeForCausalLM(transformers.Qwen3MoeConfig(
            head_dim=8, num_experts=4, num_experts_per_tok=2, moe_intermediate_size=32, **common))
    else:
        raise ValueError(family)
    with torch.no_grad():  # RMSNorm weights away from 1 so the norms matter
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(torch.randn(p.shape) * 0.2)
    return model.eval()


@pytest.fixture
def decoder():
    return _decoder


@pytest.fixture
def token_ids():
    return torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(1))
