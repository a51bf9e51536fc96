"""Dynamic INT8 quantization of a converted model (torch.ao quantize_dynamic): every Linear
becomes int8, the mHC parameters stay float32 and unchanged, logits stay close; and the
scripts/int8_quantize.py report at tiny size."""
from __future__ import annotations

import copy
import importlib.util
import io
import json
import os
import warnings

import pytest
import torch
from torch import nn

from mhc_core_torch.integrations import convert, mhc_steps

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def quantize(model):
    if torch.backends.quantized.engine == "none":
        pytest.skip("no quantized engine in this torch build")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.ao.quantization is deprecated in torch 2.13
        from torch.ao.quantization import quantize_dynamic

        return quantize_dynamic(copy.deepcopy(model), {nn.Linear}, dtype=torch.qint8)


def nbytes(model) -> int:
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def test_quantize_dynamic_keeps_mhc_float32_and_errs_like_the_original(decoder, token_ids):
    """At the warm start the converted model is the original function, so INT8 must cost it
    exactly what it costs the original: mHC adds no quantization error of its own."""
    original = decoder("llama")
    model = convert(copy.deepcopy(original), n=4)
    q, q_original = quantize(model), quantize(original)
    from torch.ao.nn.quantized.dynamic import Linear as DynamicQuantizedLinear

    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 2 * 7 + 1
    assert all(isinstance(q.get_submodule(n), DynamicQuantizedLinear) for n in linears)
    for (name, step), (_, qstep) in zip(mhc_steps(model), mhc_steps(q)):
        for p in ("phi", "bias", "alpha"):
            assert getattr(qstep, p).dtype == torch.float32 and torch.equal(getattr(qstep, p), getattr(step, p)), name
    with torch.no_grad():
        want = model(token_ids).logits
        err = (q(token_ids).logits - want).abs()
        err_original = (q_original(token_ids).logits - original(token_ids).logits).abs()
    assert float(err.mean()) < 0.1 * float(want.std()), f"mean int8 logit error {float(err.mean()):.3e}"
    assert abs(float(err.max()) - float(err_original.max())) < 1e-4, (float(err.max()), float(err_original.max()))
    assert nbytes(q) < 0.75 * nbytes(model)  # tiny model: the float32 phi (128 x 24 per step) weighs as much as the Linears


def test_int8_report_script(tmp_path):
    spec = importlib.util.spec_from_file_location("int8_quantize", os.path.join(ROOT, "scripts", "int8_quantize.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    out = tmp_path / "int8"
    assert script.main(["--out", str(out), "--hidden", "32", "--layers", "1", "--vocab", "64", "--steps", "2"]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    base, q = report["rows"][0], report["rows"][1]
    assert base["max_abs_logit_err"] == 0.0 and base["compression"] == 1.0
    assert q["name"].startswith("int8 torch.ao") and q["compression"] > 1.5 and q["max_abs_logit_err"] > 0
    assert "| int8 torch.ao quantize_dynamic |" in out.with_suffix(".md").read_text()
