"""The command-line tools attacked as a user would (tiny settings, a few steps):

- depth_sweep: each run's `rerun` line (config.json) must repeat every training setting the
  run used (config.json's own "train" record is the reference), and running it must give
  the same losses without overwriting the sweep it came from (summary.json, other runs);
- a diverged run logs its final held-out eval in metrics.jsonl, as the summary reports it;
- depth_sweep's tokens_per_sec counts batch x sequence tokens, not digits' pixel values;
- plot_runs names a summary.json / config.json / res_final.json that is not JSON;
- analyze_model on a history-variant sweep run says why it cannot (was KeyError: res_mean);
- finetune: --convert of a checkpoint convert already made is refused (it dropped the trained
  mixing); an --out that is a file is a usage error, not a FileExistsError traceback after
  the model has loaded; a rerun with fewer --steps than its checkpoint has done is refused
  (it used to run no step, re-save the longer run's model and report its step count).

(Named test_hostile_cli_tools.py: tests/sweep/test_hostile_cli.py already holds the module
name test_hostile_cli, and two test files of one basename break pytest's collection.)
"""
from __future__ import annotations

import json
import os
import shlex
import sys

import pytest

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(ROOT, "scripts"))

TINY = ["--depths", "1", "--dim", "8", "--heads", "2", "--seq-len", "6", "--batch", "2", "--vocab", "7",
        "--n", "2", "--no-progress", "--no-plots"]


def _losses(path):
    with open(path) as f:
        return [json.loads(line)["loss"] for line in f]


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    pytest.importorskip("torch")
    import depth_sweep

    out = tmp_path_factory.mktemp("hostile-cli") / "sweep"
    assert depth_sweep.main(["--backend", "torch", "--out", str(out), *TINY, "--steps", "3",
                             "--variants", "residual", "mhc", "--seeds", "0", "1", "--max-nonfinite", "3",
                             "--warmup", "1", "--log-every", "2", "--eval-every", "2", "--metric-rows", "1"]) == 0
    return out


def test_rerun_line_repeats_every_training_setting(sweep):
    """max_nonfinite decides when a NaN run stops (and counts as diverged); the rerun line
    left it off, so a rerun of a --max-nonfinite 3 run ran with the default 20."""
    import depth_sweep

    for name in ("residual-L1-s0", "mhc-L1-s1"):
        cfg = json.loads((sweep / name / "config.json").read_text())
        args = depth_sweep.parse_args(shlex.split(cfg["rerun"])[2:])
        assert args.seeds == [cfg["model"]["seed"]] and args.variants == [cfg["model"]["variant"]]
        differ = {k: (v, getattr(args, k)) for k, v in cfg["train"].items() if getattr(args, k) != v}
        assert not differ, f"{name}: rerun line differs from the run's settings (config, rerun): {differ}"


def test_rerun_line_reproduces_the_run_and_leaves_the_sweep_alone(sweep):
    """The rerun line used to name the sweep folder as --out: it wrote <variant>-L<depth>
    beside the seed's <variant>-L<depth>-s1 and replaced the sweep's summary.json (every
    run) with one listing the rerun alone, so plot_runs then drew that run only."""
    import depth_sweep

    summary = (sweep / "summary.json").read_bytes()
    before = sorted(p.name for p in sweep.iterdir())
    cfg = json.loads((sweep / "mhc-L1-s1" / "config.json").read_text())
    argv = shlex.split(cfg["rerun"])[2:] + ["--no-plots", "--no-progress"]
    assert depth_sweep.main(argv) == 0
    args = depth_sweep.parse_args(argv)
    assert (sweep / "summary.json").read_bytes() == summary
    assert sorted(p.name for p in sweep.iterdir()) == sorted(set(before) | {"reruns"})
    again = os.path.join(args.out, "mhc-L1", "metrics.jsonl")
    assert _losses(again) == _losses(sweep / "mhc-L1-s1" / "metrics.jsonl")


def test_finetune_out_that_is_a_file_is_a_usage_error(tmp_path):
    import finetune

    path = tmp_path / "a-file"
    path.write_text("x")
    with pytest.raises(ValueError, match="--out expected a folder .* is a file"):
        finetune.parse(["--convert", "unused", "--out", str(path)])
    with pytest.raises(ValueError, match="--out expected a folder .* is a file"):
        finetune.parse(["--convert", "unused", "--out", str(path / "sub")])


def test_finetune_rerun_with_fewer_steps_than_done_is_refused(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("tqdm")
    import finetune

    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                   max_position_embeddings=32, tie_word_embeddings=False)
    transformers.Qwen3ForCausalLM(cfg).save_pretrained(tmp_path / "hf")
    out = tmp_path / "ft"
    base = ["--convert", str(tmp_path / "hf"), "--out", str(out), "--batch", "2", "--seq-len", "8",
            "--checkpoint-every", "1", "--log-every", "1", "--max-chars", "5000", "--quiet"]
    first = finetune.main([*base, "--steps", "3"])
    saved = {p.name: p.read_bytes() for p in (out / "model").iterdir() if p.is_file()}
    with pytest.raises(ValueError, match="3 steps done, more than --steps 2"):
        finetune.main([*base, "--steps", "2"])
    assert json.loads((out / "summary.json").read_text())["steps"] == first["steps"] == 3
    assert {p.name: p.read_bytes() for p in (out / "model").iterdir() if p.is_file()} == saved


@pytest.mark.parametrize("task", ["incrementing", "digits"])
def test_tokens_per_sec_counts_tokens_not_pixels(task, tmp_path):
    """tokens_per_sec was inputs.size / step time: for digits ([B, T, patch_dim] pixel
    values) that counts pixels, patch_dim times the tokens (64x with --model mlp)."""
    pytest.importorskip("torch")
    if task == "digits":
        pytest.importorskip("sklearn")
    import depth_sweep

    out = tmp_path / task
    shape = (["--model", "mlp"] if task == "digits" else ["--seq-len", "6", "--vocab", "7"])
    assert depth_sweep.main(["--backend", "torch", "--out", str(out), "--task", task, *shape, "--depths", "1",
                             "--dim", "8", "--heads", "2", "--batch", "3", "--n", "2", "--steps", "2",
                             "--variants", "residual", "--no-progress", "--no-plots"]) == 0
    cfg = json.loads((out / "residual-L1" / "config.json").read_text())
    tokens = cfg["train"]["batch"] * cfg["model"]["seq_len"]
    with open(out / "residual-L1" / "metrics.jsonl") as f:
        for rec in map(json.loads, f):
            assert rec["tokens_per_sec"] * rec["step_time_s"] == pytest.approx(tokens, rel=1e-9)


@pytest.mark.parametrize("n", [4, 2])
def test_finetune_convert_of_a_converted_checkpoint_is_refused(n, tmp_path):
    """--convert on a checkpoint convert already made loaded it as the plain model
    (transformers drops phi / bias / alpha as 'unexpected keys'): with the default --n 4
    the trained mixing was silently reset to the warm start, with another n the error
    said the model family is not supported by convert."""
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    import finetune
    import mhc_core_torch

    torch.manual_seed(0)
    cfg = transformers.Qwen3Config(vocab_size=300, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=2, num_key_value_heads=1, head_dim=16,
                                   max_position_embeddings=32, tie_word_embeddings=False)
    mhc_core_torch.convert(transformers.Qwen3ForCausalLM(cfg), n=n).save_pretrained(tmp_path / "converted")
    with pytest.raises(ValueError, match="already a converted mHC checkpoint.*--model"):
        finetune.main(["--convert", str(tmp_path / "converted"), "--out", str(tmp_path / "ft"), "--steps", "1",
                       "--quiet"])
    assert not (tmp_path / "ft").exists()


def test_diverged_run_logs_its_final_eval(tmp_path, monkeypatch):
    """summary.json gives a diverged run's held-out eval after its last update; its
    metrics.jsonl had no eval_loss_final at all (only the run that reached --steps wrote
    one), so the log and the summary disagreed on what the run ended with."""
    pytest.importorskip("torch")
    import depth_sweep

    sys.path.append(os.path.join(ROOT, "tests", "sweep"))
    from nan_runs import poison_hc_embedding

    poison_hc_embedding(monkeypatch, depth_sweep)
    out = tmp_path / "nan"
    assert depth_sweep.main(["--backend", "torch", "--out", str(out), *TINY, "--steps", "6",
                             "--variants", "hc", "mhc", "--max-nonfinite", "2"]) == 0
    rows = {r["run"]: r for r in json.loads((out / "summary.json").read_text())["runs"]}
    assert rows["hc-L1"]["diverged"] and not rows["mhc-L1"]["diverged"]
    for name, row in rows.items():
        with open(out / name / "metrics.jsonl") as f:
            last = [json.loads(line) for line in f][-1]
        assert last["step"] == row["steps_run"] - 1
        for key in ("eval_loss_final", "eval_accuracy_final"):
            assert key in last and last[key] == row[key], (name, key)


@pytest.mark.parametrize("damaged", ["summary.json", "mhc-L1-s0/config.json", "mhc-L1-s0/res_final.json"])
def test_plot_runs_names_a_damaged_json_file(damaged, sweep, tmp_path, capsys):
    """A summary.json / config.json / res_final.json cut short (a sweep killed while writing
    it) gave a bare JSONDecodeError traceback naming no file; metrics.jsonl's bad lines were
    already reported by file and line."""
    import shutil

    import plot_runs

    copy = tmp_path / "copy"
    shutil.copytree(sweep, copy)
    text = (copy / damaged).read_text()
    (copy / damaged).write_text(text[: len(text) // 2])
    with pytest.raises(SystemExit) as exc:
        plot_runs.main([str(copy)])
    assert str(copy / damaged) in str(exc.value) and "not valid JSON" in str(exc.value)


def test_analyze_model_on_a_history_run_says_why_not(tmp_path):
    """README: `analyze_model.py runs/<sweep>/<run>`. On a history-variant run (its
    res_final.json holds skip weights, no res matrices) it died with KeyError: 'res_mean'."""
    pytest.importorskip("torch")
    import analyze_model
    import depth_sweep

    out = tmp_path / "hist"
    assert depth_sweep.main(["--backend", "torch", "--out", str(out), *TINY, "--steps", "1",
                             "--variants", "history", "mhc"]) == 0
    with pytest.raises(SystemExit) as exc:
        analyze_model.main([str(out / "history-L1")])
    assert "'history' run has no residual-mixing matrices" in str(exc.value)
    assert analyze_model.main([str(out / "mhc-L1")]) == 0  # the same sweep's mHC run is analysed
