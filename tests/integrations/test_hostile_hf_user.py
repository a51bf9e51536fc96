"""A transformers user's mistakes with convert / inject / load_converted (tiny models built
locally, nothing downloaded): each gets an error that names what was expected, and none
silently gives a model without its trained mixing; gradient checkpointing around history-mixed
sub-layers gives the unchecked gradients."""
from __future__ import annotations

import copy
import json

import pytest
import torch

import mhc_core_torch
from mhc_core_torch.integrations import convert, load_converted

transformers = pytest.importorskip("transformers")


@pytest.mark.parametrize("entry", [convert, lambda m, n: mhc_core_torch.inject(m, "LlamaDecoderLayer", n=n)],
                         ids=["convert", "inject"])
@pytest.mark.parametrize("given,named", [
    (transformers.LlamaForCausalLM, "the class LlamaForCausalLM"),
    ("path/to/model", "str"),
    (torch.zeros(2), "Tensor"),
    (None, "NoneType"),
])
def test_a_non_module_is_refused_by_name(entry, given, named):
    with pytest.raises(TypeError, match=rf"expected a torch\.nn\.Module instance .*got {named}"):
        entry(given, 4)


def test_a_config_is_refused_by_name(decoder):
    with pytest.raises(TypeError, match=r"expected a torch\.nn\.Module instance .*got LlamaConfig"):
        convert(decoder("llama").config, n=4)


@pytest.mark.parametrize("target", ["LlamaDecoderLayer", "MHCLlamaDecoderLayer", "class"])
def test_inject_into_an_already_converted_model_says_so(target, decoder):
    model = convert(decoder("llama"), n=4)
    if target == "class":
        target = transformers.models.llama.modeling_llama.LlamaDecoderLayer
    with pytest.raises(ValueError, match=r"already converted to mHC.*model\.layers\.0"):
        mhc_core_torch.inject(model, target, n=4)


def test_load_converted_refuses_a_config_without_the_mhc_entry(decoder, token_ids, tmp_path):
    """from_pretrained(config=...) builds the model from the config given: one without
    config.mhc builds the unconverted model, and the saved mixing would be dropped as
    'unexpected' tensors."""
    model = convert(decoder("llama"), n=4)
    model.save_pretrained(tmp_path)
    plain = transformers.LlamaConfig(**{k: v for k, v in model.config.to_dict().items() if k != "mhc"})
    with pytest.raises(ValueError, match=r"config passed to load_converted has no 'mhc' entry"):
        load_converted(tmp_path, config=plain)
    plain.save_pretrained(tmp_path / "plain")  # the same, given as a directory to read the config from
    with pytest.raises(ValueError, match=r"config passed to load_converted has no 'mhc' entry"):
        load_converted(tmp_path, config=str(tmp_path / "plain"))
    # the checkpoint's own config (AutoConfig keeps 'mhc') loads the converted model
    own = transformers.AutoConfig.from_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(load_converted(tmp_path, config=own)(token_ids).logits, model(token_ids).logits)


def test_load_converted_refuses_a_model_in_place_of_a_path(decoder):
    with pytest.raises(TypeError, match=r"load_converted: expected the path of a save_pretrained directory, "
                                        r"got LlamaForCausalLM"):
        load_converted(decoder("llama"))


def test_load_converted_impl_does_not_stay_on_the_class(decoder, tmp_path):
    """impl is an option of one load: the class load_converted builds is shared by every
    model of that architecture, and building one from a config later (type(model)(config))
    must not pick up the impl of the last load, nor fail on a bad impl a failed load was given."""
    convert(decoder("llama"), n=4).save_pretrained(tmp_path)
    loaded = load_converted(tmp_path)
    with pytest.raises(ValueError, match="impl must be one of"):
        load_converted(tmp_path, impl="cuda")
    load_converted(tmp_path, impl="reference")
    fresh = type(loaded)(loaded.config)
    assert {step.impl for _, step in mhc_core_torch.integrations.mhc_steps(fresh)} == {"auto"}


def _perturbed(model):
    """Mixing moved off its start, so every skip and stream weight matters."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_mhc." in name or ".skip." in name:
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(len(name))) * 0.3)
    return model


@pytest.mark.parametrize("reentrant", [True, False])
@pytest.mark.parametrize("make", [
    lambda m: mhc_core_torch.inject(m, "LlamaDecoderLayer", history=2),
    lambda m: mhc_core_torch.inject(m, "LlamaMLP", history=3, gate=True),
    lambda m: mhc_core_torch.inject(convert(m, n=2), "LlamaMLP", history=2),
    lambda m: convert(mhc_core_torch.inject(m, "LlamaAttention", history=2), n=3),
], ids=["history on the layers", "history on the mlps", "streams, then history on the mlps", "history on the attentions, then streams"])
def test_gradient_checkpointing_recomputes_history_mixed_sublayers(make, reentrant, decoder, token_ids,
                                                                   assert_close):
    """gradient_checkpointing_enable reruns each decoder layer in backward, and with it the
    history-mixed module inside: the rerun must mix the window that module had when the
    forward called it (empty, so seeded with its input), not the window the forward left."""
    model = _perturbed(make(decoder("llama"))).train()
    twin = copy.deepcopy(model)
    twin.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": reentrant})
    for m in (model, twin):
        m(token_ids, labels=token_ids).loss.backward()
    want = dict(model.named_parameters())
    for name, p in twin.named_parameters():
        assert (p.grad is None) == (want[name].grad is None), name
        if p.grad is not None:
            assert_close(p.grad, want[name].grad, 1e-5, f"checkpointed grad {name}")
    with torch.no_grad():  # the window a checkpointed backward leaves does not leak into the next forward
        assert torch.equal(twin.eval()(token_ids).logits, model.eval()(token_ids).logits)


def test_a_history_mixed_module_run_twice_in_a_checkpointed_layer_is_refused_in_backward():
    """Which of its two forward calls the rerun repeats (so which window it mixed) is unknown."""
    class Twice(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(4, 4)

        def forward(self, x):
            return torch.utils.checkpoint.checkpoint(lambda y: self.lin(self.lin(y)), x, use_reentrant=False)

    model = mhc_core_torch.inject(Twice(), "Linear", history=2)
    loss = model(torch.randn(3, 4, requires_grad=True)).sum()
    with pytest.raises(RuntimeError, match=r"history mixing around Linear: backward reran it .* after 2 calls"):
        loss.backward()


@pytest.mark.parametrize("target", ["LlamaMLP", "LlamaDecoderLayer", torch.nn.Linear], ids=["mlps", "layers", "linears"])
def test_history_windows_start_empty_when_the_inner_model_is_called(target, decoder, token_ids):
    """model.model(...) / model.get_decoder()(...) (hidden states without the LM head) is a
    forward of its own: it must not mix the states an earlier forward left in the windows
    (every Linear: the LM head's window is outside the inner model)."""
    model = _perturbed(mhc_core_torch.inject(decoder("llama"), target, history=2))
    with torch.no_grad():
        want = model(token_ids, output_hidden_states=True).hidden_states[-1]
        for call in (model.model, model.get_decoder(), model.model):
            assert torch.equal(call(token_ids).last_hidden_state, want)
        assert torch.equal(model(token_ids, output_hidden_states=True).hidden_states[-1], want)


def test_load_converted_in_bfloat16_keeps_the_history_gate_float32(decoder, token_ids, tmp_path):
    """The skip gate is a mixing weight (float32, like the skip logits and phi / bias / alpha):
    from_pretrained(dtype=bfloat16) builds the model under that default dtype, and a gate made
    in it was bfloat16, rounding the trained value."""
    model = _perturbed(mhc_core_torch.inject(decoder("llama"), "LlamaMLP", history=2, gate=True))
    model.save_pretrained(tmp_path)
    loaded = load_converted(tmp_path, dtype=torch.bfloat16)
    saved = dict(model.named_parameters())
    skips = {name: p for name, p in loaded.named_parameters() if ".skip." in name}
    assert len(skips) == 4
    for name, p in skips.items():
        assert p.dtype == torch.float32, name
        assert torch.equal(p, saved[name]), name


def test_history_mixed_model_compiles_with_fullgraph(decoder, token_ids, assert_close):
    """torch.compile(fullgraph=True) traces the window bookkeeping (and the clearing hook):
    nothing in it may break the graph. Two calls: the second must not see the first's windows."""
    model = _perturbed(mhc_core_torch.inject(decoder("llama"), "LlamaMLP", history=2, gate=True))
    with torch.no_grad():
        want = model(token_ids).logits
        compiled = torch.compile(model, fullgraph=True)
        for _ in range(2):
            assert_close(compiled(token_ids).logits, want, 1e-5, "compiled history-mixed llama")


@pytest.mark.parametrize("how", ["streams", "history"])
def test_converting_a_compiled_model_records_the_models_own_names(how, decoder, token_ids, tmp_path):
    """torch.compile(model) wraps the model (its modules under `_orig_mod.`), while
    save_pretrained (reached through the wrapper) writes the model's own names: config.mhc
    must name the blocks as the model does, or the checkpoint does not load."""
    model = decoder("llama")
    compiled = torch.compile(model)
    if how == "streams":
        assert convert(compiled, n=4) is compiled
        names = [b for segment in model.config.mhc["segments"] for b in segment["blocks"]]
        assert names == ["model.layers.0", "model.layers.1"]
    else:
        assert mhc_core_torch.inject(compiled, "LlamaMLP", history=2) is compiled
        assert model.config.mhc["history"][0]["modules"] == ["model.layers.0.mlp", "model.layers.1.mlp"]
    _perturbed(model)
    compiled.save_pretrained(tmp_path)
    with torch.no_grad():
        assert torch.equal(load_converted(tmp_path)(token_ids).logits, model(token_ids).logits)


def test_load_converted_names_blocks_the_model_does_not_have(decoder, tmp_path):
    convert(decoder("llama"), n=4).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["mhc"]["segments"][0]["blocks"][1] = "model.layers.7"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.mhc's segment names blocks this model does not have: "
                                        r"\['model\.layers\.7'\]"):
        load_converted(tmp_path)
    config["mhc"]["segments"][0]["blocks"][1] = "model.layers.1"
    config["mhc"]["segments"][0]["recipe"] = "gpt2"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"config\.mhc's segment names recipe 'gpt2'; this mhc_core_torch has "
                                        r"\['bert_post_norm', "):
        load_converted(tmp_path)
