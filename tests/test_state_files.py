"""State files between the backends at odd sizes, and the files a user may hand
load_state by mistake: a wrong n or C (the error says which), a truncated or foreign file
(ValueError naming the path), missing / extra names, bfloat16 tensors, and mappings whose
names or values are not names and numbers."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from safetensors.torch import load_file, save_file  # noqa: E402
from torch import nn as tnn  # noqa: E402

import mhc_core_torch  # noqa: E402

C = 16
BACKENDS = ["torch", "mlx"]


def torch_mhc(n, c=C, seed=0):
    torch.manual_seed(seed)
    module = mhc_core_torch.MHC(tnn.Linear(c, c), n, c)
    with torch.no_grad():  # away from the warm start, so every parameter matters
        for p in module.parameters():
            p.add_(torch.randn(p.shape) * 0.1)
    return module


def mlx_mhc(n, c=C):
    mm = pytest.importorskip("mhc_core_mlx")
    import mlx.nn as mnn

    return mm.MHC(mnn.Linear(c, c), n, c)


def lib_and_module(backend, n, c=C):
    if backend == "torch":
        return mhc_core_torch, torch_mhc(n, c, seed=1)
    return pytest.importorskip("mhc_core_mlx"), mlx_mhc(n, c)


def run_torch(module, x):
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


@pytest.mark.parametrize("n", [1, 2, 8])
def test_torch_to_mlx_and_back_at_odd_stream_counts(n, tmp_path, assert_close):
    mm = pytest.importorskip("mhc_core_mlx")
    mx = pytest.importorskip("mlx.core")
    source = torch_mhc(n)
    mhc_core_torch.save_state(source, tmp_path / "t.safetensors")
    on_mlx = mm.load_state(mlx_mhc(n), tmp_path / "t.safetensors")
    x = np.random.default_rng(n).standard_normal((3, 5, n, C)).astype(np.float32)
    want = run_torch(source, x)
    assert_close(np.array(on_mlx(mx.array(x))), want, 1e-5, f"mlx after torch file, n={n}")
    mm.save_state(on_mlx, tmp_path / "m.safetensors")
    back = mhc_core_torch.load_state(torch_mhc(n, seed=2), tmp_path / "m.safetensors")
    assert np.array_equal(run_torch(back, x), want)  # float32 through both files: bit for bit


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("n,c,says", [(2, C, "file n=4, C=16; module n=2, C=16"),
                                      (8, C, "file n=4, C=16; module n=8, C=16"),
                                      (4, 8, "file n=4, C=16; module n=4, C=8")])
def test_wrong_n_or_c_is_named(backend, n, c, says, tmp_path):
    mhc_core_torch.save_state(torch_mhc(4), tmp_path / "n4.safetensors")
    lib, module = lib_and_module(backend, n, c)
    with pytest.raises(ValueError, match=f"shape mismatch.*{says}"):
        lib.load_state(module, tmp_path / "n4.safetensors")
    with pytest.raises(ValueError, match=says):  # the same from a dict
        lib.load_state(module, mhc_core_torch.module_state(torch_mhc(4)))


def test_stream_head_wrong_n_is_named():
    state = mhc_core_torch.module_state(mhc_core_torch.StreamHead(4, C))
    with pytest.raises(ValueError, match="file n=4, C=16; module n=3, C=16"):
        mhc_core_torch.load_state(mhc_core_torch.StreamHead(3, C), state)


def test_wrong_n_inside_a_converted_model_names_the_step():
    model = tnn.ModuleDict({"block": torch_mhc(4)})
    state = mhc_core_torch.module_state(tnn.ModuleDict({"block": torch_mhc(2)}))
    with pytest.raises(ValueError, match="block: file n=2, C=16; module n=4, C=16"):
        mhc_core_torch.load_state(model, state)


def _good_file(tmp_path):
    path = tmp_path / "good.safetensors"
    mhc_core_torch.save_state(torch_mhc(4), path)
    return path


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["header cut", "half", "last bytes cut", "text", "torch.save pickle"])
def test_truncated_or_foreign_file_is_named(backend, kind, tmp_path):
    raw = _good_file(tmp_path).read_bytes()
    bad = tmp_path / "bad.safetensors"
    if kind == "torch.save pickle":
        torch.save(torch_mhc(4).state_dict(), bad)
    else:
        bad.write_bytes({"header cut": raw[:20], "half": raw[: len(raw) // 2], "last bytes cut": raw[:-3],
                         "text": b"not a safetensors file at all, just words"}[kind])
    lib, module = lib_and_module(backend, 4)
    with pytest.raises(ValueError, match="bad.safetensors' is not a complete safetensors file"):
        lib.load_state(module, bad)


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_and_extra_names_in_a_file(backend, tmp_path):
    tensors = load_file(_good_file(tmp_path))
    save_file({k: v for k, v in tensors.items() if k != "phi"}, tmp_path / "missing.safetensors")
    save_file({**tensors, "gamma": torch.zeros(3)}, tmp_path / "extra.safetensors")
    lib, module = lib_and_module(backend, 4)
    with pytest.raises(ValueError, match=r"missing \['phi'\]"):
        lib.load_state(module, tmp_path / "missing.safetensors")
    with pytest.raises(ValueError, match=r"unexpected \['gamma'\]"):
        lib.load_state(module, tmp_path / "extra.safetensors")


@pytest.mark.parametrize("backend", BACKENDS)
def test_bfloat16_file_loads_the_rounded_values_into_float32(backend, tmp_path):
    tensors = {k: v.bfloat16() for k, v in load_file(_good_file(tmp_path)).items()}
    save_file(tensors, tmp_path / "bf16.safetensors")
    lib, module = lib_and_module(backend, 4)
    lib.load_state(module, tmp_path / "bf16.safetensors")
    got = lib.module_state(module)
    for k, v in tensors.items():
        assert got[k].dtype == np.float32
        assert np.array_equal(got[k], v.float().numpy()), k  # bfloat16 -> float32 is exact


@pytest.mark.parametrize("backend", BACKENDS)
def test_mapping_with_bad_names_or_values(backend):
    lib, module = lib_and_module(backend, 4)
    state = mhc_core_torch.module_state(torch_mhc(4))
    with pytest.raises(TypeError, match="'alpha' must be an array of numbers, got str"):
        lib.load_state(module, {**state, "alpha": "abc"})
    with pytest.raises(TypeError, match="'phi' must be an array of numbers, got NoneType"):
        lib.load_state(module, {**state, "phi": None})
    with pytest.raises(TypeError, match="state names must be dotted strings.*got 3 \\(int\\)"):
        lib.load_state(module, {**state, 3: np.zeros(3)})
