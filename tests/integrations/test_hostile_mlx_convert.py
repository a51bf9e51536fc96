"""mhc_core_mlx.integrations on odd but legal inputs: torch-converted checkpoints whose
settings transformers names otherwise than mlx-lm (`rope_parameters`, `num_local_experts`),
checkpoints mlx cannot convert alike, and convert's argument errors."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
pytest.importorskip("mlx_lm")
import torch  # noqa: E402
import transformers  # noqa: E402

from mhc_core_mlx.integrations import convert, load_converted  # noqa: E402
from mhc_core_torch.integrations import convert as torch_convert  # noqa: E402


def _moved(model):
    """Every mHC parameter moved off its warm start, so the streams differ."""
    g = torch.Generator().manual_seed(2)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "_mhc." in name:
                p.add_(torch.randn(p.shape, generator=g) * 0.1)
    return model


def _llama3_rope():
    """A tiny Llama with rope_theta 500000 and llama3 rope scaling (as Llama 3.1 ships)."""
    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(
        vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, initializer_range=0.2, max_position_embeddings=64, tie_word_embeddings=False,
        rope_parameters={"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                         "high_freq_factor": 4.0, "original_max_position_embeddings": 8})
    return transformers.LlamaForCausalLM(cfg).eval()


@pytest.mark.parametrize("build", ["qwen2", "llama3_rope", "qwen3_moe"])
def test_torch_checkpoint_settings_reach_mlx(build, decoder, tmp_path, assert_close):
    """transformers writes rope_theta (and any scaling) inside `rope_parameters`; mlx-lm
    reads `rope_theta` / `rope_scaling` and otherwise takes its own defaults (Qwen2: 1e6),
    which changed the logits by 1.2 on a Qwen2 saved with rope_theta 10000. transformers
    names Qwen3-MoE's expert count `num_local_experts`, mlx-lm `num_experts` (it could
    not build the model)."""
    model = _moved(torch_convert(_llama3_rope() if build == "llama3_rope" else decoder(build), n=4))
    model.save_pretrained(tmp_path)
    ids = torch.randint(0, 64, (2, 24), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        want = model(ids).logits.numpy()
    got = np.array(load_converted(tmp_path)(mx.array(ids.numpy())))
    assert_close(got, want, 1e-5, f"torch-converted {build} on mlx-lm")


def _mlx_llama():
    from mlx_lm.models import llama

    return llama.Model(llama.ModelArgs(model_type="llama", hidden_size=32, num_hidden_layers=2, intermediate_size=64,
                                       num_attention_heads=4, num_key_value_heads=2, rms_norm_eps=1e-6,
                                       vocab_size=64, tie_word_embeddings=False))


@pytest.mark.parametrize("kwargs, error, message", [
    ({"reduce": "head"}, ValueError, r"reduce='head' .*mlx.*'mean'"),
    ({"reduce": "sum"}, ValueError, r"reduce must be one of \('mean', 'head'\), got 'sum'"),
    ({"sinkhorn_iters": 5}, TypeError, r"unknown mHC settings \['sinkhorn_iters'\]; expected some of \['iters'"),
])
def test_convert_argument_errors_name_what_is_expected(kwargs, error, message):
    """As mhc_core_torch.convert: an unknown setting is named with the known ones, and
    reduce='head' (torch only) says so; the model is left unconverted."""
    model = _mlx_llama()
    with pytest.raises(error, match=message):
        convert(model, n=4, **kwargs)
    assert not hasattr(model, "mhc") and type(model.model.layers[0]).__name__ == "TransformerBlock"


@pytest.mark.parametrize("segments", [
    [["model.layers.0"], ["model.layers.1"]],  # each layer expands and reduces on its own
    [["model.layers.1"]],  # layer 0 left a plain block
])
def test_checkpoint_with_other_segments_is_refused(segments, decoder, tmp_path):
    """mlx convert makes one stream segment over every decoder layer; a checkpoint whose
    config.mhc records other segments ran with different streams on torch (the logits
    differed by 0.016 once the mixing had moved): refused, naming the segments."""
    import json

    _moved(torch_convert(decoder("llama"), n=4)).save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    config["mhc"]["segments"] = [{"blocks": blocks, "recipe": "pre_norm_decoder"} for blocks in segments]
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=r"one segment of every decoder layer \['model.layers.0', 'model.layers.1'\]"):
        load_converted(tmp_path)
