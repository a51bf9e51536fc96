"""History mixing (`inject(..., history=K)`) through transformers' save_pretrained and
`load_converted`, alone and together with stream conversion in either order, and through
`torch.save(model)` (tiny Llama built locally, nothing downloaded). The loaded model must
wrap the same modules with the same options and give the same logits, bit for bit."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from mhc_core_torch.integrations import convert, inject, load_converted
from mhc_core_torch.integrations.convert import apply_settings
from mhc_core_torch.integrations.history_inject import HistoryInjected

transformers = pytest.importorskip("transformers")

SKIP_SETTINGS = ("history", "constraint", "temperature", "epsilon", "mixing", "prune_threshold", "stochastic",
                 "gated", "iters", "sinkhorn_eps")

BUILDS = {
    "decoder layers": lambda m: inject(m, "LlamaDecoderLayer", history=2),
    "mlps, every option": lambda m: inject(m, "LlamaMLP", history=3, gate=True, mixing="matrix", temperature=0.5,
                                           iters=7, sinkhorn_eps=1e-4, detach_history=True, init="uniform",
                                           prune_threshold=1e-3),
    "simplex, attention": lambda m: inject(m, "LlamaAttention", history=2, constraint="simplex", epsilon=0.2),
    "streams, then history on the mlps": lambda m: inject(convert(m, n=2), "LlamaMLP", history=2),
    "history on the mlps, then streams": lambda m: convert(inject(m, "LlamaMLP", history=2), n=2),
    "streams, then history on the converted layers": lambda m: inject(
        convert(m, n=2), transformers.models.llama.modeling_llama.LlamaDecoderLayer, history=2),
    "history, streams, history": lambda m: inject(convert(inject(m, "LlamaMLP", history=2), n=2),
                                                  "LlamaAttention", history=3, gate=True),
}


@torch.no_grad()
def logits(model, ids):
    return model(ids).logits


@torch.no_grad()
def _trained(model):
    """Mixing parameters moved away from their init (seeded), so a load that missed them shows."""
    gen = torch.Generator().manual_seed(5)
    for name, p in model.named_parameters():
        if ".skip." in name or "_mhc." in name:
            p.add_(0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _wrapped(model) -> dict:
    return {name: {s: getattr(m.skip, s) for s in SKIP_SETTINGS} | {"detach_history": m.detach_history}
            for name, m in model.named_modules() if isinstance(m, HistoryInjected)}


@pytest.mark.parametrize("build", list(BUILDS))
def test_round_trip_through_save_pretrained(build, decoder, token_ids, tmp_path):
    base = decoder("llama")
    model = _trained(BUILDS[build](copy.deepcopy(base)))
    assert _wrapped(model), "the build wraps modules"
    assert not torch.allclose(logits(model, token_ids), logits(base, token_ids), atol=1e-3)

    model.save_pretrained(tmp_path / "saved")
    saved = json.loads((tmp_path / "saved" / "config.json").read_text())["mhc"]
    assert saved["format"] == 2 and saved["history"]
    loaded = load_converted(tmp_path / "saved").eval()
    assert _wrapped(loaded) == _wrapped(model)
    assert torch.equal(logits(loaded, token_ids), logits(model, token_ids))

    loaded.save_pretrained(tmp_path / "again")  # a loaded model writes the same record
    assert json.loads((tmp_path / "again" / "config.json").read_text())["mhc"] == saved
    assert torch.equal(logits(load_converted(tmp_path / "again").eval(), token_ids), logits(model, token_ids))


@pytest.mark.parametrize("build", ["decoder layers", "history on the mlps, then streams"])
def test_whole_model_torch_save(build, decoder, token_ids, tmp_path):
    """The window-clearing hook is a module-level function, so the model pickles."""
    model = _trained(BUILDS[build](decoder("llama")))
    torch.save(model, tmp_path / "model.pt")
    back = torch.load(tmp_path / "model.pt", weights_only=False).eval()
    assert _wrapped(back) == _wrapped(model)
    assert torch.equal(logits(back, token_ids), logits(model, token_ids))


def test_generator_is_not_saved(decoder, token_ids, tmp_path):
    """A stochastic skip's torch.Generator is run-time state: the loaded model has none
    (torch's global RNG) and the same eval-mode logits."""
    model = _trained(inject(decoder("llama"), "LlamaMLP", history=2, stochastic=True,
                            generator=torch.Generator().manual_seed(0)))
    model.save_pretrained(tmp_path / "saved")
    loaded = load_converted(tmp_path / "saved").eval()
    skips = [m.skip for m in loaded.modules() if isinstance(m, HistoryInjected)]
    assert skips and all(s.stochastic and s.generator is None for s in skips)
    assert torch.equal(logits(loaded, token_ids), logits(model, token_ids))


def test_fresh_model_from_a_history_models_config(decoder, token_ids, tmp_path):
    """A model built from an injected model's (shared) config object starts unwrapped;
    injecting it records its own entry once and leaves the first model's record alone."""
    first = _trained(inject(decoder("llama"), "LlamaMLP", history=2))
    before = copy.deepcopy(first.config.mhc)
    torch.manual_seed(1)
    second = transformers.LlamaForCausalLM(first.config).eval()
    assert not _wrapped(second)
    inject(second, "LlamaDecoderLayer", history=3)
    assert first.config.mhc == before
    assert [e["modules"] for e in second.config.mhc["history"]] == [["model.layers.0", "model.layers.1"]]
    for name, model in (("first", first), ("second", second)):
        model.save_pretrained(tmp_path / name)
        loaded = load_converted(tmp_path / name).eval()
        assert torch.equal(logits(loaded, token_ids), logits(model, token_ids)), name


def test_unknown_format_is_refused(decoder):
    model = decoder("llama")
    with pytest.raises(ValueError, match=r"format 3; this mhc reads formats \[1, 2\]"):
        apply_settings(model, {"format": 3, "history": []})
    entry = {"modules": ["model.layers.7.mlp"], "options": {"history": 2}, "after_segments": 0}
    with pytest.raises(ValueError, match=r"modules this model does not have: \['model.layers.7.mlp'\]"):
        apply_settings(model, {"format": 2, "history": [entry]})
