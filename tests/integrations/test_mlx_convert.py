"""mhc_core_mlx.integrations.convert on mlx-lm's Llama (tiny config): exact warm start, greedy
generation with the KV cache, and a torch-converted, trained Hugging Face Llama loaded
into mlx-lm with the same logits (same parameter names on both backends)."""
from __future__ import annotations

import copy

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
import torch  # noqa: E402
from mlx.utils import tree_flatten  # noqa: E402
from mlx_lm.models import llama  # noqa: E402
from mlx_lm.models.cache import make_prompt_cache  # noqa: E402

from mhc_core_mlx.integrations import convert, load_converted, mhc_steps  # noqa: E402

ARGS = dict(model_type="llama", hidden_size=32, num_hidden_layers=3, intermediate_size=64, num_attention_heads=4,
            num_key_value_heads=2, rms_norm_eps=1e-6, vocab_size=64, tie_word_embeddings=False)


def pair(seed=0):
    """An mlx-lm Llama with weights ~ N(0, 0.2) and a second one with the same weights."""
    model = llama.Model(llama.ModelArgs(**ARGS))
    rng = np.random.default_rng(seed)
    weights = [(k, mx.array(rng.normal(0, 0.2, v.shape).astype(np.float32) + (1.0 if "norm" in k else 0.0)))
               for k, v in tree_flatten(model.parameters())]
    model.load_weights(weights)
    twin = llama.Model(llama.ModelArgs(**ARGS))
    twin.load_weights(weights)
    return model, twin


def ids():
    return mx.array(np.random.default_rng(1).integers(0, 64, (2, 12)))


def test_warm_start_logits_match(assert_close):
    original, model = pair()
    convert(model, n=4)
    assert len(mhc_steps(model)) == 6
    names = {k for k, _ in tree_flatten(model.parameters())}
    assert "model.layers.2.mlp_mhc.phi" in names and len(names) == len(tree_flatten(original.parameters())) + 18
    want = np.array(original(ids()))
    assert np.abs(want).max() > 0.5
    assert_close(np.array(model(ids())), want, 1e-5, "mlx-lm llama n=4 warm start")


def greedy(model, prompt, steps):
    cache = make_prompt_cache(model)
    logits = model(prompt, cache=cache)
    out = []
    for _ in range(steps):
        nxt = mx.argmax(logits[:, -1], axis=-1)[:, None]
        out.append(nxt)
        logits = model(nxt, cache=cache)
    return np.array(mx.concatenate(out, axis=1))


def test_generation_with_kv_cache_matches():
    original, model = pair(seed=3)
    convert(model, n=4)
    prompt = ids()[:, :5]
    want = greedy(original, prompt, 8)
    np.testing.assert_array_equal(greedy(model, prompt, 8), want)
    full = np.array(mx.argmax(model(mx.concatenate([prompt, mx.array(want[:, :-1])], axis=1)), axis=-1))[:, 4:]
    np.testing.assert_array_equal(full, want)  # cached decoding == one pass over the whole sequence


def test_torch_converted_checkpoint_runs_on_mlx(decoder, token_ids, tmp_path, assert_close):
    """Convert + train in torch, save_pretrained, load into mlx-lm: same logits."""
    from mhc_core_torch.integrations import convert as torch_convert

    model = torch_convert(decoder("llama"), n=4)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = model(token_ids, labels=token_ids).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval().save_pretrained(tmp_path)
    with torch.no_grad():
        want = model(token_ids).logits.numpy()
    on_mlx = load_converted(tmp_path)
    phi_torch = model.model.layers[1].mlp_mhc.phi.detach().numpy()
    np.testing.assert_array_equal(np.array(on_mlx.model.layers[1].mlp_mhc.phi), phi_torch)
    assert_close(np.array(on_mlx(mx.array(token_ids.numpy()))), want, 1e-5, "torch-trained mHC Llama on mlx-lm")


def test_errors():
    _, model = pair()
    convert(model, n=2)
    with pytest.raises(ValueError, match="already converted"):
        convert(model, n=2)
    with pytest.raises(ValueError, match="number of streams"):
        convert(pair()[1], n=0)
    with pytest.raises(ValueError, match="expects streams"):
        model.model.layers[1](mx.zeros((1, 3, 32)))


def built(family, **extra):
    """An mlx-lm model of `family` with weights ~ N(0, 0.2) (norms around 1)."""
    import importlib

    module = importlib.import_module(f"mlx_lm.models.{family}")
    fields = module.ModelArgs.__dataclass_fields__
    args = {k: v for k, v in {**ARGS, "model_type": family, "max_position_embeddings": 64, "rope_theta": 10000.0,
                              **extra}.items() if k in fields}
    model = module.Model(module.ModelArgs(**args))
    rng = np.random.default_rng(0)
    model.load_weights([(k, mx.array(rng.normal(0, 0.2, v.shape).astype(np.float32) + (1.0 if "norm" in k else 0.0)))
                        for k, v in tree_flatten(model.parameters())])
    return model


def test_granite_residual_multiplier_warm_start(assert_close):
    """mlx-lm's Granite adds x + r * residual_multiplier: each branch carries the factor
    (without it the logits were off by 1.7 at the warm start)."""
    model = built("granite", residual_multiplier=0.37, embedding_multiplier=2.0, attention_multiplier=0.25,
                  logits_scaling=2.0, attention_bias=False, mlp_bias=False)
    want = np.array(model(ids()))
    assert np.abs(want).max() > 0.5
    convert(model, n=4)
    assert_close(np.array(model(ids())), want, 1e-5, "mlx-lm granite n=4 warm start")


def test_block_with_another_forward_is_refused():
    """mlx-lm's MiniCPM has Llama's four children but scales each branch by
    scale_depth / sqrt(layers) from its own attributes: refused by name, model untouched."""
    model = built("minicpm", scale_depth=1.4, scale_emb=12, dim_model_base=16)
    want = np.array(model(ids()))
    with pytest.raises(ValueError, match=r"minicpm.*scale_depth"):
        convert(model, n=4)
    assert np.array_equal(np.array(model(ids())), want)


def test_block_without_its_own_call_is_refused():
    """mlx-lm's IQuestLoopCoder has Llama's four children but no __call__: its model runs
    the children itself, so converted blocks would never run (the mHC parameters would
    have no effect). Refused by name, model untouched."""
    model = built("iquestloopcoder", head_dim=8)
    want = np.array(model(ids()))
    with pytest.raises(ValueError, match=r"layer 0 \(.*iquestloopcoder\.TransformerBlock\) has no __call__"):
        convert(model, n=4)
    assert not hasattr(model, "mhc") and np.array_equal(np.array(model(ids())), want)


def test_block_with_other_call_arguments_is_refused():
    """mlx-lm's Hunyuan block takes (x, mask, cache, shared_kv_states) and returns a pair:
    it was converted, then every call failed with a TypeError. Refused by name, model
    untouched."""
    model = built("hunyuan", moe_topk=2, num_experts=4, num_shared_expert=1, use_mixed_mlp_moe=True,
                  use_qk_norm=True, use_cla=True, cla_share_factor=2, attention_bias=False, head_dim=8,
                  rope_scaling={"alpha": 1.0, "factor": 1.0, "type": "dynamic"})
    want = np.array(model(ids()))
    with pytest.raises(ValueError, match=r"layer 0 \(.*hunyuan\.DecoderLayer\) is called with "
                                         r"\['x', 'mask', 'cache', 'shared_kv_states'\].*\(x, mask, cache\)"):
        convert(model, n=4)
    assert not hasattr(model, "mhc") and np.array_equal(np.array(model(ids())), want)


def test_unreadable_call_converts_with_the_structure_warning():
    """A block whose __call__ has no source (built by exec) cannot be read: as on torch,
    convert goes by the structure and warns (here the exec'd block scales its residuals,
    so the warm start is off: exactly what the warning is for)."""
    namespace = {}
    exec("def __call__(self, x, mask=None, cache=None):\n"
         "    h = x + 0.5 * self.self_attn(self.input_layernorm(x), mask, cache)\n"
         "    return h + 0.5 * self.mlp(self.post_attention_layernorm(h))\n", {}, namespace)
    _, model = pair()
    cls = type("GeneratedBlock", (llama.TransformerBlock,), {"__call__": namespace["__call__"]})
    for block in model.model.layers:
        block.__class__ = cls
    with pytest.warns(UserWarning, match=r"GeneratedBlock.*no readable source.*by structure only"):
        convert(model, n=4)
