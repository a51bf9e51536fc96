"""scripts/analyze_model.py on a converted model (warm start: the numbers are known) and
on a depth-sweep run directory written by scripts/depth_sweep.py."""
from __future__ import annotations

import importlib.util
import json
import os

import numpy as np
import pytest

import mhc_core
from mhc_core_torch.integrations import convert

pytest.importorskip("matplotlib")
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "scripts", f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_converted_model_at_warm_start(decoder, tmp_path, capsys):
    convert(decoder("qwen3"), n=4).save_pretrained(tmp_path / "model")
    assert load_script("analyze_model").main([str(tmp_path / "model"), "--batch", "2", "--seq-len", "8"]) == 0
    out = tmp_path / "model" / "analysis"
    for png in ("overview.png", "res_heatmaps.png", "stream_similarity.png"):
        assert (out / png).stat().st_size > 10_000, png
    report = json.loads((out / "analysis.json").read_text())
    steps = report["steps"]
    assert [s["name"] for s in steps] == [f"model.layers.{i}.{b}_mhc" for i in range(2) for b in ("attn", "mlp")]
    res0 = mhc_core.sinkhorn(mhc_core.init_params(4, 1, dtype=np.float64)["bias"][8:].reshape(4, 4), eps=0.0)
    for s in steps:  # warm start: the coefficients do not depend on the input yet
        np.testing.assert_allclose(s["alpha"], [0.01] * 3, atol=1e-7)
        np.testing.assert_allclose(s["pre_mean"], [0.25] * 4, atol=1e-6)
        np.testing.assert_allclose(s["post_mean"], [1.0] * 4, atol=1e-6)
        np.testing.assert_allclose(s["res_mean"], res0, atol=1e-6)
        assert abs(s["forward_gain"] - 1) < 1e-5 and abs(s["composite_backward_gain"] - 1) < 1e-5
        assert np.min(s["stream_cos"]) > 1 - 1e-6  # streams are still copies of each other
    assert report["info"]["init_identity_distance"] == pytest.approx(steps[0]["identity_distance"], abs=1e-6)
    text = (out / "analysis.txt").read_text()
    assert "L1.mlp" in text and "0.25 [0.25, 0.25]" in text
    assert "wrote" in capsys.readouterr().out


def test_depth_sweep_run_without_weights(tmp_path):
    sweep = tmp_path / "sweep"
    load_script("depth_sweep").main(["--backend", "torch", "--variants", "hc", "--depths", "2", "--steps", "4",
                                     "--dim", "16", "--heads", "2", "--seq-len", "8", "--batch", "2", "--vocab",
                                     "16", "--log-every", "2", "--out", str(sweep), "--no-plots", "--no-progress"])
    run = sweep / "hc-L2"
    assert load_script("analyze_model").main([str(run)]) == 0
    report = json.loads((run / "analysis" / "analysis.json").read_text())
    recorded = json.loads((run / "res_final.json").read_text())
    assert [s["name"] for s in report["steps"]] == recorded["names"]
    np.testing.assert_allclose(report["steps"][-1]["res_mean"], recorded["res_mean"][-1])
    d = mhc_core.identity_distance(np.asarray(recorded["res_mean"][0]))
    assert report["steps"][0]["identity_distance"] == pytest.approx(float(d))
    assert (run / "analysis" / "res_heatmaps.png").stat().st_size > 10_000
    assert "last gain measurement" in (run / "analysis" / "analysis.txt").read_text()


def test_rejects_other_directories(tmp_path):
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit, match="neither a converted model"):
        load_script("analyze_model").main([str(tmp_path)])


def test_one_stream_model(decoder, tmp_path):
    """n = 1 (no pair of streams): the report and the coefficient plots, no similarity plot
    (it failed on an empty off-diagonal before). At the warm start pre = 1 and res = [[1]]."""
    convert(decoder("llama"), n=1).save_pretrained(tmp_path / "model")
    assert load_script("analyze_model").main([str(tmp_path / "model"), "--batch", "2", "--seq-len", "8"]) == 0
    out = tmp_path / "model" / "analysis"
    assert (out / "overview.png").exists() and not (out / "stream_similarity.png").exists()
    for s in json.loads((out / "analysis.json").read_text())["steps"]:
        np.testing.assert_allclose(s["pre_mean"], [1.0], atol=1e-6)
        np.testing.assert_allclose(s["res_mean"], [[1.0]], atol=1e-6)
