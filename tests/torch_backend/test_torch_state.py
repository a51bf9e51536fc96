"""Weight interchange of mhc_core_torch: module_state / save_state / load_state through real
safetensors files, and the strict errors of load_state."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors import safe_open

import mhc_core
from backend_registry.numpy_adapter import layer_shapes
from mhc_core_torch import MHC, StreamHead, load_state, module_state, save_state
from backend_registry.torch_adapter import make_layer

N, C = 3, 5


def trained_mhc(random_state, seed: int = 0) -> MHC:
    """An MHC around the conformance MLP with random (non-init) weights."""
    return load_state(MHC(make_layer("mlp", C), N, C), random_state(N, C, "mhc", "mlp", seed))


def test_module_state_names_shapes_and_values(random_state):
    module = trained_mhc(random_state)
    state = module_state(module)
    want = {**mhc_core.param_shapes(N, C), **layer_shapes("mlp", C)}
    assert {k: v.shape for k, v in state.items()} == want
    assert all(isinstance(v, np.ndarray) and v.dtype == np.float32 for v in state.values())
    np.testing.assert_array_equal(state["phi"], module.phi.detach().numpy(), err_msg="phi")
    state["phi"][0, 0] += 1.0  # a copy: editing it leaves the module alone
    assert state["phi"][0, 0] != module.phi[0, 0].item()


def test_save_load_round_trip_gives_identical_outputs(tmp_path, random_state):
    src = trained_mhc(random_state, seed=1)
    path = tmp_path / "mhc.safetensors"
    save_state(src, path)
    with safe_open(str(path), framework="np") as f:
        assert sorted(f.keys()) == sorted(module_state(src))
        assert f.metadata()["library"] == "mhc-core"
    dst = MHC(make_layer("mlp", C), N, C)  # fresh init: differs from src before loading
    x = torch.randn(2, 4, N, C)
    assert not torch.equal(dst(x), src(x))
    assert load_state(dst, path) is dst
    for name, value in module_state(src).items():
        np.testing.assert_array_equal(module_state(dst)[name], value, err_msg=name)
    assert torch.equal(dst(x), src(x)), "outputs differ after a safetensors round trip"
    again = load_state(MHC(make_layer("mlp", C), N, C), module_state(src))  # numpy dict route
    assert torch.equal(again(x), src(x)), "outputs differ after a module_state round trip"


def test_stream_head_round_trip(tmp_path):
    src = StreamHead(N, C)
    load_state(src, {"phi": np.random.default_rng(0).normal(size=(N * C, N)), "bias": np.arange(N) * 0.3,
                     "alpha": np.array([1.7])})
    save_state(src, tmp_path / "head.safetensors")
    dst = load_state(StreamHead(N, C), tmp_path / "head.safetensors")
    x = torch.randn(3, N, C)
    assert torch.equal(dst(x), src(x))


def test_dtypes_bf16_file_and_float32_into_float64(tmp_path, random_state):
    """bf16 tensors are saved as bf16; module_state upcasts them (exactly); loading casts to
    the module's dtype, so a float32 file loads into a float64 module unchanged."""
    src = trained_mhc(random_state, seed=2)
    src.layer.to(torch.bfloat16)
    save_state(src, tmp_path / "mixed.safetensors")
    with safe_open(str(tmp_path / "mixed.safetensors"), framework="pt") as f:
        assert f.get_tensor("layer.fc1.weight").dtype == torch.bfloat16
        assert f.get_tensor("phi").dtype == torch.float32
    assert module_state(src)["layer.fc1.weight"].dtype == np.float32
    dst = load_state(MHC(make_layer("mlp", C), N, C).double(), tmp_path / "mixed.safetensors")
    assert dst.phi.dtype == torch.float64 and dst.layer.fc1.weight.dtype == torch.float64
    np.testing.assert_array_equal(dst.layer.fc1.weight.detach().numpy(), module_state(src)["layer.fc1.weight"])


@pytest.mark.parametrize("edit,error,message", [
    (lambda s: s.pop("phi"), ValueError, r"failed: missing \['phi'\]"),
    (lambda s: s.update(extra=np.zeros(2)), ValueError, r"failed: unexpected \['extra'\]"),
    (lambda s: s.update(phi=np.zeros((N * C, 3))), ValueError,
     r"shape mismatch \['phi: state \[15, 3\] vs module \[15, 15\]'\]"),
    (lambda s: (s.pop("alpha"), s.update(layer_weight=np.zeros(1))), ValueError,
     r"missing \['alpha'\]; unexpected \['layer_weight'\]"),
    (lambda s: s.update(bias=np.zeros(N * N + 2 * N, dtype=np.int64)), TypeError,
     r"'bias' must be floating point, got dtype torch.int64"),
], ids=["missing", "unexpected", "shape", "missing+unexpected", "int-dtype"])
def test_load_state_is_strict(edit, error, message, random_state):
    module = trained_mhc(random_state)
    before = module_state(module)
    state = dict(before)
    edit(state)
    with pytest.raises(error, match=message):
        load_state(module, state)
    for k, v in module_state(module).items():  # a failed load changes nothing
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_load_state_strict_from_file_and_bad_sources(tmp_path):
    save_state(StreamHead(N, C), tmp_path / "head.safetensors")
    with pytest.raises(ValueError, match=r"missing \['layer.bias', 'layer.weight'\]; shape mismatch "
                                         r"\['alpha: state \[1\] vs module \[3\]', 'bias: "):
        load_state(MHC(torch.nn.Linear(C, C), N, C), tmp_path / "head.safetensors")
    with pytest.raises(FileNotFoundError, match="no safetensors file at"):
        load_state(StreamHead(N, C), tmp_path / "nope.safetensors")
    with pytest.raises(TypeError, match="expects a dict of arrays or a safetensors path, got list"):
        load_state(StreamHead(N, C), [1, 2])
    with pytest.raises(TypeError, match="expected a torch.nn.Module"):
        module_state({"phi": np.zeros(1)})


def test_save_state_unwritable_paths_name_the_path(tmp_path):
    """As the MLX backend's: an empty path, a directory and a file in a missing folder are
    refused with an error naming the path, before anything is written."""
    module = StreamHead(N, C)
    with pytest.raises(ValueError, match=r"save_state: path is empty"):
        save_state(module, "")
    (tmp_path / "sub").mkdir()
    with pytest.raises(IsADirectoryError, match=r"save_state: .*sub' is a directory"):
        save_state(module, tmp_path / "sub")
    with pytest.raises(FileNotFoundError, match=r"save_state: folder .*nope' of .*w.safetensors' does not exist"):
        save_state(module, tmp_path / "nope" / "w.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"]
