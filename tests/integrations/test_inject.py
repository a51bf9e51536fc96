"""mhc_core_torch.inject on transformers ViT (pre-LN) and BERT (post-LN), tiny configs, and
MHCSequential against the plain residual stack: exact warm start, gradients, save/load."""
from __future__ import annotations

import copy

import numpy as np

import pytest
import torch
from torch import nn

from mhc_core_torch.integrations import MHCSequential, inject, load_converted, mhc_steps

transformers = pytest.importorskip("transformers")
from transformers.models.bert.modeling_bert import BertLayer  # noqa: E402


def tiny_vit():
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=16, patch_size=4, num_channels=3, hidden_size=32,
                                    num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                                    initializer_range=0.2)
    return transformers.ViTModel(config).eval()


def tiny_bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                     intermediate_size=64, initializer_range=0.2)
    return transformers.BertModel(config).eval()


@pytest.fixture
def pixels():
    return torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(2))


@pytest.fixture
def bert_inputs():
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(2))
    mask = torch.ones(2, 10, dtype=torch.long)
    mask[1, 6:] = 0  # padding: the mask must reach the attention inside the mHC step
    return ids, mask


@pytest.mark.parametrize("n", [2, 4])
def test_vit_warm_start(n, pixels, assert_close):
    original = tiny_vit()
    injected = inject(copy.deepcopy(original), "ViTLayer", n=n)
    assert len(mhc_steps(injected)) == 4
    with torch.no_grad():
        want, got = original(pixel_values=pixels), injected(pixel_values=pixels)
    assert_close(got.last_hidden_state, want.last_hidden_state, 1e-5, f"vit n={n} last_hidden_state")
    assert_close(got.pooler_output, want.pooler_output, 1e-5, f"vit n={n} pooler")


@pytest.mark.parametrize("target", ["BertLayer", BertLayer])
def test_bert_post_norm_warm_start(target, bert_inputs, assert_close):
    original = tiny_bert()
    injected = inject(copy.deepcopy(original), target, n=4)
    ids, mask = bert_inputs
    with torch.no_grad():
        want, got = original(ids, attention_mask=mask), injected(ids, attention_mask=mask)
    assert_close(got.last_hidden_state, want.last_hidden_state, 1e-5, "bert last_hidden_state")
    assert_close(got.pooler_output, want.pooler_output, 1e-5, "bert pooler")


def test_bert_streams_are_each_layer_normed(bert_inputs):
    """Post-LN reading: after every step each stream is LayerNorm'd on its own (mean 0,
    variance 1 before the affine), so the streams stay normalised once they differ."""
    model = inject(tiny_bert(), "BertLayer", n=4)
    with torch.no_grad():
        for _, step in mhc_steps(model):
            step.phi.normal_(0.0, 0.5)  # trained-looking: streams now differ
        ln = model.encoder.layer[0].output.LayerNorm
        ln.weight.fill_(1.0)
        ln.bias.zero_()
        seen = {}
        model.encoder.layer[0].register_forward_hook(lambda m, a, out: seen.setdefault("out", out))
        model.encoder.layer[0].mlp_mhc.register_forward_hook(lambda m, a, out: seen.setdefault("pre", out))
        model(*bert_inputs[:1], attention_mask=bert_inputs[1])
        streams = ln(seen["pre"])  # what block 0 hands to block 1: [B, T, n, C]
    assert streams.shape == (2, 10, 4, 32)
    assert torch.equal(seen["out"], streams)
    assert float(streams.mean(-1).abs().max()) < 1e-5
    assert float((streams.var(-1, unbiased=False) - 1).abs().max()) < 1e-3
    assert float((streams[:, :, 0] - streams[:, :, 1]).abs().max()) > 1e-3  # they differ


def test_bert_gradients_and_round_trip(bert_inputs, tmp_path):
    model = inject(tiny_bert(), "BertLayer", n=4).train()
    ids, mask = bert_inputs
    model(ids, attention_mask=mask).last_hidden_state.square().mean().backward()
    for name, step in mhc_steps(model):
        assert float(step.phi.grad.abs().max()) > 0 and float(step.bias.grad.abs().max()) > 0, name
    model.eval().save_pretrained(tmp_path)
    loaded = load_converted(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(ids, attention_mask=mask).last_hidden_state,
                           model(ids, attention_mask=mask).last_hidden_state)


def test_segments_follow_the_module_list():
    """Consecutive matches in one ModuleList share streams; the first expands, the last reduces."""
    model = inject(tiny_bert(), "BertLayer", n=4)
    flags = [(b.mhc_expand, b.mhc_reduce) for b in model.encoder.layer]
    assert flags == [(True, False), (False, False), (False, True)]
    assert model.config.mhc["segments"] == [{"recipe": "bert_post_norm",
                                             "blocks": ["encoder.layer.0", "encoder.layer.1", "encoder.layer.2"]}]


def test_inject_errors():
    with pytest.raises(ValueError, match="no module of ViTModel matches"):
        inject(tiny_vit(), "BertLayer")
    with pytest.raises(ValueError, match="no mHC recipe fits"):
        inject(tiny_vit(), "ViTMLP")
    with pytest.raises(TypeError, match="target must be"):
        inject(tiny_vit(), 3)
    with pytest.raises(ValueError, match="recipe must be one of"):
        inject(tiny_vit(), "ViTLayer", recipe="gpt")
    model = inject(tiny_vit(), "ViTLayer")
    with pytest.raises(ValueError, match=r"matching target 'ViTLayer' is already converted to mHC"):
        inject(model, "ViTLayer")  # already converted blocks are not converted again


# --- MHCSequential ------------------------------------------------------------------------
class MLP(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.norm, self.fc1, self.fc2 = nn.LayerNorm(c), nn.Linear(c, 2 * c), nn.Linear(2 * c, c)

    def forward(self, h):
        return self.fc2(torch.nn.functional.gelu(self.fc1(self.norm(h))))


def plain_residual(layers, x):
    for f in layers:
        x = x + f(x)
    return x


@pytest.mark.parametrize("variant,n,reduce", [("mhc", 4, "mean"), ("mhc", 3, "head"), ("hc", 4, "mean"),
                                              ("residual", 1, "mean")])
def test_sequential_matches_plain_residual_stack(variant, n, reduce, assert_close):
    torch.manual_seed(0)
    layers = [MLP(16) for _ in range(6)]
    x = torch.randn(3, 5, 16)
    want = plain_residual(layers, x)
    stack = MHCSequential(layers, n=n, variant=variant, reduce=reduce)
    assert stack.dim == 16
    assert_close(stack(x), want, 1e-5, f"MHCSequential {variant} n={n} {reduce}")


def test_sequential_takes_numpy_numbers(assert_close):
    """numpy scalars for n and the settings: Python numbers inside, the same warm start."""
    torch.manual_seed(0)
    layers = [MLP(16) for _ in range(2)]
    x = torch.randn(3, 16)
    stack = MHCSequential(layers, n=np.int64(3), iters=np.int64(5), rms_eps=np.float32(1e-5), reduce="head")
    assert type(stack.n) is int and type(stack.layers[0].config.iters) is int
    assert type(stack.layers[0].config.rms_eps) is float and type(stack.head.rms_eps) is float
    assert_close(stack(x), plain_residual(layers, x), 1e-5, "MHCSequential numpy numbers")


def test_sequential_gradients_and_names():
    torch.manual_seed(0)
    stack = MHCSequential([MLP(8) for _ in range(2)], n=4, reduce="head")
    names = set(dict(stack.named_parameters()))
    assert {"layers.0.phi", "layers.1.bias", "layers.0.layer.fc1.weight", "head.phi"} <= names
    stack(torch.randn(4, 8)).square().sum().backward()
    assert float(stack.layers[1].phi.grad.abs().max()) > 0
    assert float(stack.layers[0].layer.fc1.weight.grad.abs().max()) > 0


def test_sequential_errors():
    with pytest.raises(ValueError, match="at least one layer"):
        MHCSequential([], n=4)
    with pytest.raises(ValueError, match="pass dim=C"):
        MHCSequential([nn.GELU()], n=4)
    stack = MHCSequential([nn.GELU()], n=4, dim=8)
    with pytest.raises(ValueError, match=r"expects x \[..., C=8\]"):
        stack(torch.zeros(2, 7))
    with pytest.raises(TypeError, match=r"MHCSequential layers\[0\] must be an nn.Module .*, got builtins.int"):
        MHCSequential([3], n=4)
    with pytest.raises(TypeError, match=r"layers\[1\] must be an nn.Module .*, got builtins.str"):
        MHCSequential([nn.Linear(8, 8), "fc"], n=4, dim=8)


@pytest.mark.parametrize("family", ["MPNet", "Deberta"])
def test_bert_like_layers_the_recipe_cannot_call_are_refused(family):
    """MPNet's attention has no .output (was an AttributeError from the matcher); DeBERTa's
    layer has BERT's parts but its own LayerNorm and attention call (was accepted, then
    failed inside DeBERTa's attention at the first forward)."""
    transformers = pytest.importorskip("transformers")
    config = getattr(transformers, f"{family}Config")(vocab_size=64, hidden_size=32, num_hidden_layers=2,
                                                       num_attention_heads=4, intermediate_size=64)
    model = getattr(transformers, f"{family}Model")(config)
    with pytest.raises(ValueError, match=f"no mHC recipe fits {family}Layer"):
        inject(model, f"{family}Layer", n=4)
