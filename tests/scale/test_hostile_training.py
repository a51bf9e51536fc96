"""Training utilities used the way a demanding user would: damaged checkpoint records,
odd steps and metas, optimizer state beyond floats, the history variant under bf16, and
data-parallel helpers given the wrong kind of batch (recompute: test_hostile_recompute.py).

Every accepted input is checked against a reference (an uninterrupted run, numpy slicing,
the float32 model); every refused one by its error type and message.
"""
from __future__ import annotations

import json
import os
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

import mhc_core_torch
from mhc_core.experiments.checkpoints import CheckpointStore
from mhc_core.experiments.lm_config import LMConfig, init_lm_params
from mhc_core.experiments.tasks import shard_batch

# -- run checkpoints: damaged records, bad steps, meta that is not JSON -------------------

def _two_checkpoints(tmp_path) -> CheckpointStore:
    store = CheckpointStore(str(tmp_path))
    for step in (1, 2):
        store.save(step, {"w": np.full(3, step, np.float32)}, {"k": step})
    return store


@pytest.mark.parametrize("edit", [
    pytest.param(lambda r: r.pop("tensors_bytes"), id="no-tensors_bytes"),
    pytest.param(lambda r: r.pop("tensors_sha256"), id="no-tensors_sha256"),
    pytest.param(lambda r: r.update(tensors_bytes="123"), id="tensors_bytes-a-string"),
    pytest.param(lambda r: r.update(tensors_sha256=None), id="tensors_sha256-null"),
])
def test_a_record_with_missing_or_mistyped_fields_is_skipped_not_a_crash(tmp_path, edit):
    """A commit record that parses but lacks a field (hand-edited, written by another tool)
    is a damaged checkpoint: reported, and the previous one used."""
    store = _two_checkpoints(tmp_path)
    path = str(tmp_path / "ckpt-00000002.json")
    record = json.load(open(path))
    edit(record)
    open(path, "w").write(json.dumps(record))
    loaded = store.load_latest(warn=False)
    assert loaded.step == 1 and loaded.meta == {"k": 1}, loaded
    assert np.array_equal(loaded.tensors["w"], np.full(3, 1, np.float32))
    assert len(loaded.problems) == 1 and "checkpoint 2 skipped" in loaded.problems[0], loaded.problems



def test_numpy_integers_are_counts_for_keep_and_every(tmp_path):
    """'keep must be an integer >= 1, got np.int64(2)': numpy integers are numbers (DESIGN §1)."""
    from mhc_core.experiments.checkpoints import RunCheckpointer

    store = CheckpointStore(str(tmp_path / "store"), keep=np.int64(2))
    for step in (1, 2, 3):
        store.save(step, {"w": np.full(2, step, np.float32)}, {})
    assert store.steps() == [3, 2]
    ckpt = RunCheckpointer(str(tmp_path), every=np.int32(2), keep=np.int64(1))
    ckpt.resume()
    saved = [s for s in range(1, 6) if ckpt.step_done(s, lambda: ({"w": np.zeros(1, np.float32)}, {}))]
    assert saved == [2, 4] and ckpt.store.steps() == [4]
    with pytest.raises(ValueError, match=r"keep must be an integer >= 1, got 0"):
        CheckpointStore(str(tmp_path), keep=0)
    with pytest.raises(ValueError, match=r"checkpoint every must be an integer >= 1, got 2.0"):
        RunCheckpointer(str(tmp_path), every=2.0)



def test_resume_in_a_run_directory_that_does_not_exist_yet_starts_fresh(tmp_path):
    """The docstring's loop on a new run_dir died in resume() (FileNotFoundError writing
    metrics.jsonl.tmp) before the first step."""
    from mhc_core.experiments.checkpoints import RunCheckpointer

    run_dir = tmp_path / "new" / "run"
    ckpt = RunCheckpointer(str(run_dir), every=1)
    loaded = ckpt.resume()
    assert not loaded.found and loaded.step == 0
    with ckpt.open_log() as log:
        log.write(json.dumps({"step": 0}) + "\n")
        ckpt.step_done(1, lambda: ({"w": np.ones(2, np.float32)}, {"position": 7}))
    again = RunCheckpointer(str(run_dir), every=1).resume()
    assert again.step == 1 and again.meta["position"] == 7 and np.array_equal(again.tensors["w"], np.ones(2, np.float32))
    assert (run_dir / "metrics.jsonl").read_text() == '{"step": 0}\n'


def test_a_checkpoint_directory_that_is_a_file_is_an_error_not_a_fresh_start(tmp_path):
    """load_latest saw no checkpoints in a path that is a file, so resume() started the run
    afresh and emptied metrics.jsonl before the first save failed."""
    from mhc_core.experiments.checkpoints import RunCheckpointer

    log = tmp_path / "metrics.jsonl"
    log.write_text('{"step": 0}\n{"step": 1}\n')
    (tmp_path / "checkpoints").write_text("not a directory")
    ckpt = RunCheckpointer(str(tmp_path), every=1)
    with pytest.raises(NotADirectoryError, match="checkpoints is not a directory"):
        ckpt.resume()
    assert log.read_text() == '{"step": 0}\n{"step": 1}\n'
    with pytest.raises(NotADirectoryError, match="checkpoints is not a directory"):
        ckpt.store.save(1, {"w": np.zeros(1, np.float32)}, {})



def test_a_damaged_newer_checkpoint_does_not_push_out_the_one_just_written(tmp_path):
    """keep=1 with checkpoint 12 damaged: the run restarts and saves step 4, which pruning
    deleted at once (12 is newer), so every later resume started from scratch again."""
    store = CheckpointStore(str(tmp_path), keep=1)
    store.save(12, {"w": np.full(2, 12, np.float32)}, {})
    with open(tmp_path / "ckpt-00000012.safetensors", "r+b") as f:
        f.truncate(10)
    assert not store.load_latest(warn=False).found
    store.save(4, {"w": np.full(2, 4, np.float32)}, {"k": 4})
    loaded = store.load_latest(warn=False)
    assert loaded.step == 4 and loaded.meta == {"k": 4} and np.array_equal(loaded.tensors["w"], np.full(2, 4, np.float32))
    assert store.steps() == [4] and loaded.problems == []



@pytest.mark.parametrize("step", [-1, True, 2.0, "3"], ids=repr)
def test_save_refuses_a_step_that_is_not_a_count(tmp_path, step):
    """ckpt--0000001.json (step -1) was written and then never found again by load_latest."""
    store = CheckpointStore(str(tmp_path))
    with pytest.raises(ValueError, match=r"step \(steps done\) must be an integer >= 0"):
        store.save(step, {"w": np.zeros(2, np.float32)}, {})
    assert not os.path.exists(tmp_path) or os.listdir(tmp_path) == []


def test_meta_that_is_not_json_leaves_no_file_behind(tmp_path):
    """The tensors file used to be written before the JSON failed, leaving an orphan
    ckpt-*.safetensors that no prune ever removes."""
    store = _two_checkpoints(tmp_path)
    before = sorted(os.listdir(tmp_path))
    with pytest.raises(TypeError, match="float32 is not JSON serializable"):
        store.save(3, {"w": np.zeros(2, np.float32)}, {"loss": np.float32(1.5)})
    assert sorted(os.listdir(tmp_path)) == before
    assert store.load_latest(warn=False).step == 2


def _train(model, opt, steps: int, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        opt.zero_grad()
        model(torch.randn(3, 4, generator=gen)).square().sum().backward()
        opt.step()


def test_meta_with_integer_keys_loads_as_json_reads_it_back(tmp_path):
    """JSON turns integer keys into strings; the checksum was taken over the integer keys'
    sort order (9 < 10, but "10" < "9"), so every such checkpoint read back as 'altered'
    and was skipped: a silent fresh start. Mixed int / str keys failed sort_keys in save."""
    meta = {"per_layer": {9: 1.5, 10: 2.5}, "mixed": {1: "a", "b": 2}, "pair": (1, 2)}
    store = CheckpointStore(str(tmp_path))
    store.save(1, {"w": np.zeros(2, np.float32)}, meta)
    loaded = store.load_latest(warn=False)
    assert loaded.found and loaded.problems == [], loaded.problems
    assert loaded.meta == json.loads(json.dumps(meta))



def test_torch_optimizer_with_tensor_hyperparameters_resumes_bitwise(tmp_path):
    """torch optimizers take lr (and betas) as tensors (for capturable / compiled steps);
    capture died with 'Object of type Tensor is not JSON serializable'."""
    from mhc_core_torch.training import checkpoint as ckpt

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
        lr, betas = torch.tensor(0.01), (torch.tensor(0.9), torch.tensor(0.99))
        return model, torch.optim.Adam(model.parameters(), lr=lr, betas=betas)

    ref_model, ref_opt = build()
    _train(ref_model, ref_opt, 2, seed=1)
    _train(ref_model, ref_opt, 3, seed=2)

    model, opt = build()
    _train(model, opt, 2, seed=1)
    store = CheckpointStore(str(tmp_path))
    store.save(2, *ckpt.capture(model, opt))
    fresh, fresh_opt = build()
    for group in fresh_opt.param_groups:
        group["lr"] = torch.tensor(0.5)  # the checkpoint's value must win
    loaded = store.load_latest()
    ckpt.restore(fresh, fresh_opt, loaded.tensors, loaded.meta)
    group, ref_group = fresh_opt.param_groups[0], ref_opt.param_groups[0]
    assert isinstance(group["lr"], torch.Tensor) and torch.equal(group["lr"], ref_group["lr"])
    assert all(isinstance(b, torch.Tensor) and torch.equal(b, r) for b, r in zip(group["betas"], ref_group["betas"]))
    _train(fresh, fresh_opt, 3, seed=2)
    for (name, a), b in zip(ref_model.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), f"{name}: resumed run differs by {(a - b).abs().max():.3e}"


def test_torch_lbfgs_state_of_tensor_lists_resumes_bitwise(tmp_path):
    """LBFGS keeps lists of tensors (old_dirs, old_stps, ro, al) in its state: saving died
    with 'Tensor is not JSON serializable'."""
    from mhc_core_torch.training import checkpoint as ckpt

    x = torch.randn(6, 4, generator=torch.Generator().manual_seed(3))

    def build():
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.Linear(4, 2))
        return model, torch.optim.LBFGS(model.parameters(), lr=0.5, history_size=3, max_iter=4)

    def run(model, opt, steps):
        def closure():
            opt.zero_grad()
            loss = model(x).square().sum()
            loss.backward()
            return loss
        for _ in range(steps):
            opt.step(closure)

    ref_model, ref_opt = build()
    run(ref_model, ref_opt, 5)
    model, opt = build()
    run(model, opt, 2)
    store = CheckpointStore(str(tmp_path))
    store.save(2, *ckpt.capture(model, opt))
    fresh, fresh_opt = build()
    loaded = store.load_latest()
    ckpt.restore(fresh, fresh_opt, loaded.tensors, loaded.meta)
    run(fresh, fresh_opt, 3)
    for (name, a), b in zip(ref_model.named_parameters(), fresh.parameters()):
        assert torch.equal(a, b), f"{name}: resumed LBFGS run differs by {(a - b).abs().max():.3e}"



# -- bf16: every mixing weight stays float32 ----------------------------------------------

HISTORY_CFG = LMConfig(vocab=16, dim=16, n_layers=2, n_heads=2, seq_len=8, variant="history", history_gate=True)


def _split(named: dict) -> tuple[dict, dict]:
    """(history skip weights: logits / gate, every other weight)."""
    mixing = {k: v for k, v in named.items() if k.rsplit(".", 1)[-1] in ("logits", "gate")}
    assert len(mixing) == 2 * 2 * HISTORY_CFG.n_layers, sorted(named)
    return mixing, {k: v for k, v in named.items() if k not in mixing}


def test_torch_cast_except_mixing_keeps_history_skip_weights_float32():
    """The history variant's mixing weights (skip logits, gate) were cast to bf16 with the
    layers, so `--dtype bfloat16` trained them in bf16."""
    from mhc_core_torch.lm import TinyLM
    from mhc_core_torch.training.precision import cast_except_mixing

    params = init_lm_params(HISTORY_CFG)
    want = dict(TinyLM(HISTORY_CFG, params).named_parameters())
    got = dict(cast_except_mixing(TinyLM(HISTORY_CFG, params), torch.bfloat16).named_parameters())
    mixing, rest = _split(got)
    for k, v in mixing.items():
        assert v.dtype == torch.float32 and torch.equal(v, want[k]), f"{k}: {v.dtype}"
    for k, v in rest.items():
        assert v.dtype == torch.bfloat16 and torch.equal(v, want[k].to(torch.bfloat16)), f"{k}: {v.dtype}"


def test_mlx_cast_except_mixing_keeps_history_skip_weights_float32():
    mx = pytest.importorskip("mlx.core")
    from mlx.utils import tree_flatten

    from mhc_core_mlx.lm import TinyLM
    from mhc_core_mlx.training.precision import cast_except_mixing

    params = init_lm_params(HISTORY_CFG)
    want = dict(tree_flatten(TinyLM(HISTORY_CFG, params).parameters()))
    got = dict(tree_flatten(cast_except_mixing(TinyLM(HISTORY_CFG, params), mx.bfloat16).parameters()))
    mixing, rest = _split(got)
    for k, v in mixing.items():
        assert v.dtype == mx.float32 and np.array_equal(np.array(v), np.array(want[k])), f"{k}: {v.dtype}"
    for k, v in rest.items():
        assert v.dtype == mx.bfloat16, f"{k}: {v.dtype}"
        assert np.array_equal(np.array(v.astype(mx.float32)), np.array(want[k].astype(mx.bfloat16).astype(mx.float32)))


@pytest.mark.parametrize("dtype", [torch.int8, torch.bool, "bfloat16"], ids=str)
def test_torch_cast_except_mixing_refuses_a_dtype_that_is_not_floating(dtype):
    """int8 died in the middle ('data set to a tensor that requires gradients must be
    floating point'), "bfloat16" with 'Invalid device string'."""
    from mhc_core_torch.training.precision import cast_except_mixing

    model = mhc_core_torch.MHC(nn.Linear(8, 8), 2, 8)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(TypeError, match=r"dtype must be a floating torch.dtype \(e.g. torch.bfloat16\), got"):
        cast_except_mixing(model, dtype)
    assert all(torch.equal(v, want[k]) and v.dtype == want[k].dtype for k, v in model.state_dict().items())


def test_mlx_cast_except_mixing_refuses_a_dtype_that_is_not_floating():
    """mx.int32 silently turned the layer's weights into integers."""
    mx = pytest.importorskip("mlx.core")
    mnn = pytest.importorskip("mlx.nn")
    import mhc_core_mlx
    from mlx.utils import tree_flatten

    from mhc_core_mlx.training.precision import cast_except_mixing

    model = mhc_core_mlx.MHC(mnn.Linear(8, 8), 2, 8)
    want = {k: np.array(v) for k, v in tree_flatten(model.parameters())}
    for dtype in (mx.int32, "bfloat16"):
        with pytest.raises(TypeError, match=r"dtype must be a floating mlx.core.Dtype \(e.g. mx.bfloat16\), got"):
            cast_except_mixing(model, dtype)
    got = dict(tree_flatten(model.parameters()))
    assert all(got[k].dtype == mx.float32 and np.array_equal(np.array(got[k]), v) for k, v in want.items())



# -- data parallel helpers ----------------------------------------------------------------

def test_shard_batch_of_an_empty_batch_gives_each_rank_empty_slices():
    x, y = np.zeros((0, 4)), np.zeros(0, np.int64)
    for rank in range(2):
        got = shard_batch((torch.as_tensor(x), y), SimpleNamespace(rank=rank, world=2))
        assert tuple(got[0].shape) == (0, 4) and got[1].shape == (0,)


@pytest.mark.parametrize("batch,info,error,message", [
    # one array instead of a sequence: each *row* was sliced along its columns
    (np.arange(8).reshape(4, 2), (1, 2), TypeError, r"a sequence of arrays \(e\.g\. \(x, y\)\), got one array of shape \(4, 2\)"),
    # x and y of different row counts: the ranks' x and y rows no longer belonged together
    ((np.zeros((4, 3)), np.zeros(6)), (0, 2), ValueError, r"every array must have the same number of rows \(axis 0\), got \[4, 6\]"),
    ((np.float32(1.0),), (0, 2), ValueError, r"every array must have the same number of rows \(axis 0\), got a 0-d array"),
    ((np.zeros(4),), (2, 2), ValueError, r"rank must be in \[0, world\) = \[0, 2\), got 2"),
    ((np.zeros(4),), (0, 0), ValueError, r"world \(number of ranks\) must be an integer >= 1, got 0"),
    ((np.zeros(4), [1, 2, 3, 4]), (0, 2), TypeError, r"every item must be an array \(numpy, torch or mlx\) with a "
                                                      r"shape; item 1 is a list"),
], ids=["one-array", "unequal-rows", "0-d", "rank-out-of-range", "world-0", "a-list"])
def test_shard_batch_refuses_what_it_cannot_split(batch, info, error, message):
    with pytest.raises(error, match=message):
        shard_batch(batch, SimpleNamespace(rank=info[0], world=info[1]))


@pytest.mark.parametrize("env,message", [
    ({"WORLD_SIZE": "two"}, "environment variable WORLD_SIZE must be an integer, got 'two'"),
    ({"WORLD_SIZE": "2", "LOCAL_RANK": "first"}, "environment variable LOCAL_RANK must be an integer, got 'first'"),
])
def test_torch_init_from_env_names_the_bad_variable(monkeypatch, env, message):
    from mhc_core_torch.training import distributed as D

    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ValueError, match=message):
        D.init_from_env()


def test_torch_apply_fsdp_alone_is_the_model_itself_as_wrap_ddp_is(monkeypatch):
    """A script run with plain `python` (world 1) died in torch's env:// rendezvous
    ('environment variable RANK expected') when it took the README's apply_fsdp branch."""
    from mhc_core_torch.lm import TinyLM
    from mhc_core_torch.training import distributed as D

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    cfg = LMConfig(vocab=16, dim=16, n_layers=2, n_heads=2, seq_len=8, n=2)
    model = TinyLM(cfg, init_lm_params(cfg))
    tokens = torch.arange(8).reshape(1, 8) % 16
    want = TinyLM(cfg, init_lm_params(cfg))(tokens)
    info = D.init_from_env()
    assert D.wrap_ddp(model, info) is model
    assert D.apply_fsdp(model, info) is model
    assert not any(hasattr(p, "full_tensor") for p in model.parameters())
    assert torch.equal(model(tokens), want)
