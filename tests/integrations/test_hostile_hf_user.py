"""A transformers user's mistakes with convert / inject / load_converted (tiny models built
locally, nothing downloaded): each gets an error that names what was expected, and none
silently gives a model without its trained mixing."""
from __future__ import annotations

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
