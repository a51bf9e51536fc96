"""Data-parallel mHC training on CPU (gloo, 2 real processes) against one process.

- Checkpoints hold the plain model's names whatever wrapper (DDP, torch.compile) they were
  captured through: 2 DDP steps, a rank-0 checkpoint, 1 more step on one process equal 3
  one-process steps (float64; also a Gumbel-noised history stack seeded alike on each rank).
- apply_fsdp on models with a 0-d parameter (the history skips' gate) and in several dtypes
  (bf16 with float32 mixing weights): gradients, norm and an SGD step equal one process.
- DataParallelTrainer records the global batch's first rows; DDP of injected skips that
  never mix works with find_unused_parameters=True; full_state names are the plain model's.
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from mhc_core_torch import MHC, HistorySequential
from mhc_core_torch.training import checkpoint as K
from mhc_core_torch.training import distributed as D
from scale_helpers import assert_close, free_port

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")
N, C, BATCH, STEPS = 2, 4, 4, 3


def _join(rank: int, world: int, port: int) -> "D.DistInfo":
    """Start a spawned rank: one thread, the gloo process group on localhost:`port`."""
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    return D.init_from_env("gloo")


def _finish() -> None:
    """End a spawned rank: leave the process group together, then exit at once. The DDP /
    FSDP objects still alive at interpreter teardown can destroy gloo's threads mid-use and
    abort the process ("terminate called without an active exception") after its work is
    done; mp.spawn would report that as the test failing."""
    D.shutdown()
    os._exit(0)


def _model(kind: str = "mhc") -> nn.Module:
    """Two mHC layers, or (kind 'stochastic') a Gumbel-noised history stack whose generator
    has the same seed on every rank, so every rank draws the single process's noise."""
    torch.manual_seed(0)
    if kind == "stochastic":
        return HistorySequential([nn.Linear(C, C) for _ in range(3)], history=2, stochastic=True, gate=True,
                                 generator=torch.Generator().manual_seed(5)).double()
    return nn.Sequential(*(MHC(nn.Linear(C, C), N, C, seed=i) for i in range(2))).double()


def _batch(step: int, kind: str = "mhc") -> torch.Tensor:
    shape = (BATCH, 3, C) if kind == "stochastic" else (BATCH, 3, N, C)
    return torch.randn(*shape, dtype=torch.float64, generator=torch.Generator().manual_seed(step))


def _step(model, opt, x) -> None:
    opt.zero_grad(set_to_none=True)
    model(x).pow(2).mean().backward()
    opt.step()


def _rank(rank: int, world: int, port: int, kind: str, out: str) -> None:
    info = _join(rank, world, port)
    model = D.wrap_ddp(_model(kind), info)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(STEPS - 1):
        (x,) = D.shard_batch((_batch(step, kind),), info)
        _step(model, opt, x)
    if info.is_main:
        tensors, meta = K.capture(model, opt)
        np.savez(out + ".npz", **tensors)
        with open(out + ".json", "w") as f:
            json.dump(meta, f)
    _finish()


@pytest.mark.parametrize("kind", ["mhc", "stochastic"])
def test_ddp_checkpoint_resumes_on_one_process(kind, tmp_path):
    out = str(tmp_path / "ckpt")
    mp.spawn(_rank, args=(2, free_port(), kind, out), nprocs=2)
    tensors = dict(np.load(out + ".npz"))
    with open(out + ".json") as f:
        meta = json.load(f)
    resumed = D.wrap_ddp(_model(kind), D.DistInfo())  # world 1: the plain model
    opt = torch.optim.Adam(resumed.parameters(), lr=1e-2)
    K.restore(resumed, opt, tensors, meta)
    _step(resumed, opt, _batch(STEPS - 1, kind))
    ref = _model(kind)
    ref_opt = torch.optim.Adam(ref.parameters(), lr=1e-2)
    for step in range(STEPS):
        _step(ref, ref_opt, _batch(step, kind))
    for (name, got), want in zip(resumed.named_parameters(), ref.parameters()):
        assert_close(got.detach().numpy(), want.detach().numpy(), rtol=1e-10, atol=1e-12,
                     case=f"{name} after 2 DDP steps + 1 resumed step vs 3 plain steps")


@pytest.fixture
def world_one_group(tmp_path):
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        yield
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("wrap", ["ddp", "compile"])
def test_checkpoint_names_are_the_plain_models(wrap, world_one_group):
    gen = torch.Generator().manual_seed(7)
    plain = HistorySequential([nn.Linear(C, C) for _ in range(2)], history=2, stochastic=True, generator=gen)
    wrapped = nn.parallel.DistributedDataParallel(plain) if wrap == "ddp" else torch.compile(plain)
    opt = torch.optim.Adam(wrapped.parameters())
    wrapped(torch.randn(2, C)).sum().backward()
    opt.step()
    tensors, meta = K.capture(wrapped, opt)
    plain_tensors, _ = K.capture(plain, opt)
    assert sorted(tensors) == sorted(plain_tensors)
    want_noise = gen.get_state()
    fresh = HistorySequential([nn.Linear(C, C) for _ in range(2)], history=2, stochastic=True,
                              generator=torch.Generator().manual_seed(8))
    fresh_opt = torch.optim.Adam(fresh.parameters())
    K.restore(nn.parallel.DistributedDataParallel(fresh) if wrap == "ddp" else fresh, fresh_opt, tensors, meta)
    for (name, got), want in zip(fresh.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(got, want), name
    assert torch.equal(fresh.skips[0].generator.get_state(), want_noise), "the skips' noise generator was not restored"


def test_checkpoint_with_wrapped_names_still_restores():
    """A checkpoint written when capture kept DDP's `module.` prefix restores into the plain model."""
    gen = torch.Generator().manual_seed(7)
    plain = HistorySequential([nn.Linear(C, C) for _ in range(2)], history=2, stochastic=True, generator=gen)
    tensors, meta = K.capture(plain, None)
    old = {}
    for k, v in tensors.items():
        prefix = next((p for p in ("model/", "rng/generator/") if k.startswith(p)), None)
        old[k if prefix is None else f"{prefix}module.{k[len(prefix):]}"] = v
    fresh = HistorySequential([nn.Linear(C, C) for _ in range(2)], history=2, stochastic=True,
                              generator=torch.Generator().manual_seed(8))
    K.restore(fresh, None, old, meta)
    for (name, got), want in zip(fresh.state_dict().items(), plain.state_dict().values()):
        assert torch.equal(got, want), name
    assert torch.equal(fresh.skips[0].generator.get_state(), gen.get_state())


def _gated_history() -> nn.Module:
    torch.manual_seed(0)
    return HistorySequential([nn.Linear(C, C) for _ in range(3)], history=2, gate=True,
                             prune_threshold=0.3).double()


def _lm(kind: str) -> nn.Module:
    """A TinyLM: 'lm' the history variant with a gate; '-bf16' kinds in bfloat16 with the
    mixing weights float32 (`cast_except_mixing`), 'lm-mhc-bf16' the mhc variant."""
    from mhc_core.experiments.lm_config import LMConfig
    from mhc_core_torch.lm import TinyLM
    from mhc_core_torch.training.precision import cast_except_mixing

    variant = "mhc" if kind == "lm-mhc-bf16" else "history"
    model = TinyLM(LMConfig(vocab=8, dim=8, n_layers=1, n_heads=2, seq_len=4, variant=variant,
                            n=2 if variant == "mhc" else 1, history_gate=True, seed=1))
    if kind.endswith("-bf16"):
        cast_except_mixing(model, torch.bfloat16)
    return model


def _gated_model(kind: str) -> nn.Module:
    return _gated_history() if kind == "history" else _lm(kind)


def _fsdp_grads(model: nn.Module, inputs: torch.Tensor) -> dict[str, np.ndarray]:
    """{name: full gradient} of mean(model(inputs)**2) after one backward, their total norm
    (clip_grad_norm_) under '__norm__', and an SGD step's parameters under 'param/'."""
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    out = model(inputs)
    (out[0] if isinstance(out, tuple) else out).float().pow(2).mean().backward()
    grads = {k: (p.grad.full_tensor() if hasattr(p.grad, "full_tensor") else p.grad).detach().double().numpy().copy()
             for k, p in model.named_parameters()}
    norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1e9)  # DTensor and plain gradients together
    grads["__norm__"] = (norm.full_tensor() if hasattr(norm, "full_tensor") else norm).double().numpy()
    opt.step()
    grads.update({f"param/{k}": v.double().numpy() for k, v in D.full_state(model).items()})
    return grads


def _gated_inputs(kind: str) -> torch.Tensor:
    gen = torch.Generator().manual_seed(4)
    if kind == "history":
        return torch.randn(BATCH, 3, C, dtype=torch.float64, generator=gen)
    return torch.randint(0, 8, (BATCH, 4), generator=gen)


def _fsdp_rank(rank: int, world: int, port: int, kind: str, out: str) -> None:
    info = _join(rank, world, port)
    model = D.apply_fsdp(_gated_model(kind), info)
    (x,) = D.shard_batch((_gated_inputs(kind),), info)
    grads = _fsdp_grads(model, x)
    if info.is_main:
        np.savez(out, **grads)
    _finish()


@pytest.mark.parametrize("kind", ["history", "lm", "lm-bf16", "lm-mhc-bf16"])
def test_fsdp_of_gated_history_equals_one_process(kind, tmp_path):
    """The skips' gate is a 0-d parameter, which fully_shard cannot shard: apply_fsdp keeps it
    replicated and averages its gradient. bf16 models keep their mixing weights float32, and
    FSDP2 shards one dtype per unit. Either way 2 FSDP ranks equal one process on the full batch."""
    out = str(tmp_path / "fsdp.npz")
    mp.spawn(_fsdp_rank, args=(2, free_port(), kind, out), nprocs=2)
    got = dict(np.load(out))
    model = _gated_model(kind)
    want = _fsdp_grads(model, _gated_inputs(kind))
    assert sorted(got) == sorted(want)
    assert any(k.endswith("gate") for k in want) or kind == "lm-mhc-bf16"
    rtol, atol = {"history": (1e-10, 1e-12), "lm": (1e-5, 1e-7)}.get(kind, (2e-2, 1e-6))
    for k in want:
        assert_close(got[k], want[k], rtol=rtol, atol=atol, case=f"{kind} FSDP {k}")


@pytest.mark.parametrize("wrap", ["compile", "ddp(compile)", "compile(ddp)"])
def test_full_state_names_are_the_plain_models(wrap, world_one_group):
    plain = _model()
    ddp = nn.parallel.DistributedDataParallel
    wrapped = {"compile": lambda: torch.compile(plain), "ddp(compile)": lambda: ddp(torch.compile(plain)),
               "compile(ddp)": lambda: torch.compile(ddp(plain))}[wrap]()
    got = D.full_state(wrapped)
    want = dict(plain.named_parameters())
    assert sorted(got) == sorted(want)
    for k, v in want.items():
        assert torch.equal(got[k], v.detach()), k


def _recording_rank(rank: int, world: int, port: int, out: str, rows: int) -> None:
    info = _join(rank, world, port)
    got = _recorded(D.DataParallelTrainer(_lm_trainer(), info), rows)
    np.savez(f"{out}.rank{rank}.npz", *got)
    _finish()


def _lm_trainer():
    from mhc_core.experiments.lm_config import LMConfig
    from mhc_core_torch.lm import Trainer

    return Trainer(LMConfig(vocab=8, dim=8, n_layers=1, n_heads=2, seq_len=4, variant="mhc", n=2, seed=1))


def _recorded(trainer, rows: int) -> list[np.ndarray]:
    from mhc_core.experiments.tasks import TaskStream

    inputs, targets, mask = TaskStream("incrementing", vocab=8, seq_len=4, batch_size=BATCH, seed=3).next()
    return trainer.step(inputs, targets, mask, lr=1e-3, record_rows=rows)["layer_inputs"]


@pytest.mark.parametrize("rows", [BATCH - 1, 1], ids=["more than a slice", "within a slice"])
def test_data_parallel_trainer_records_the_rows_asked_for(tmp_path, rows):
    """The recorded layer inputs are the global batch's first record_rows rows, as on one
    process, on every rank: whether or not they fit in one rank's slice."""
    out = str(tmp_path / "rows")
    mp.spawn(_recording_rank, args=(2, free_port(), out, rows), nprocs=2)
    want = _recorded(_lm_trainer(), rows)
    for rank in range(2):
        got = np.load(f"{out}.rank{rank}.npz")
        assert len(got.files) == len(want)
        for i, w in enumerate(want):
            assert_close(got[f"arr_{i}"], w, rtol=1e-6, atol=1e-7, case=f"rank {rank} layer {i} recorded inputs")


def _injected() -> nn.Module:
    """An MLP whose Linear layers get history skips; the non-square ones are called once per
    forward with an output shaped unlike their input, so their skips never mix (no gradient)."""
    from mhc_core_torch import inject

    torch.manual_seed(0)
    mlp = nn.Sequential(nn.Linear(C, C), nn.GELU(), nn.Linear(C, 2 * C), nn.GELU(), nn.Linear(2 * C, C)).double()
    inject(mlp, nn.Linear, history=3, gate=True)
    return mlp


def _injected_rank(rank: int, world: int, port: int, out: str) -> None:
    info = _join(rank, world, port)
    model = D.wrap_ddp(_injected(), info, find_unused_parameters=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for step in range(2):  # a second step: DDP refuses one whose previous reduction did not finish
        (x,) = D.shard_batch((_batch(step, "stochastic"),), info)
        _step(model, opt, x)
    if info.is_main:
        np.savez(out, **{k: v.numpy() for k, v in D.full_state(model).items()})
    _finish()


def test_ddp_of_injected_skips_that_never_mix(tmp_path):
    """README: skips that never mix leave parameters without gradient; with
    find_unused_parameters=True two DDP ranks equal one process."""
    out = str(tmp_path / "inject.npz")
    mp.spawn(_injected_rank, args=(2, free_port(), out), nprocs=2)
    got = np.load(out)
    ref = _injected()
    opt = torch.optim.SGD(ref.parameters(), lr=0.5)
    for step in range(2):
        _step(ref, opt, _batch(step, "stochastic"))
    assert any(p.grad is None for p in ref.parameters()), "every skip mixed: the case is not exercised"
    for k, v in ref.named_parameters():
        assert_close(got[k], v.detach().numpy(), rtol=1e-10, atol=1e-12, case=f"injected {k} after 2 DDP steps")


def test_apply_fsdp_names_a_module_holding_two_dtypes_itself(world_one_group):
    class TwoDtypes(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Parameter(torch.zeros(2))
            self.b = nn.Parameter(torch.zeros(2, dtype=torch.float64))

    with pytest.raises(ValueError, match=r"apply_fsdp: TwoDtypes holds parameters of dtypes "
                                         r"\['torch.float32', 'torch.float64'\] itself, and FSDP2 shards one dtype per unit"):
        D.apply_fsdp(TwoDtypes())


def test_apply_fsdp_with_0d_parameters_refuses_a_2d_mesh(world_one_group):
    from torch.distributed.device_mesh import init_device_mesh

    mesh = init_device_mesh("cpu", (1, 1), mesh_dim_names=("replicate", "shard"))
    with pytest.raises(ValueError, match=r"averages their gradients over a 1-D mesh; got a 2-D mesh"):
        D.apply_fsdp(_gated_history(), mesh=mesh)


def test_apply_fsdp_with_0d_parameters_on_a_1d_mesh(world_one_group):
    from torch.distributed.device_mesh import init_device_mesh

    x = _gated_inputs("history")
    want = _fsdp_grads(_gated_history(), x)
    got = _fsdp_grads(D.apply_fsdp(_gated_history(), mesh=init_device_mesh("cpu", (1,))), x)
    for k in want:
        assert_close(got[k], want[k], rtol=1e-12, atol=1e-14, case=f"1-D mesh {k}")
