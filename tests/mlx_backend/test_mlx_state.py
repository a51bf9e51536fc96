"""Weight interchange: module_state / save_state / load_state through real safetensors files,
files written by other libraries (safetensors.numpy, safetensors.torch), strict errors."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")
st_numpy = pytest.importorskip("safetensors.numpy")

import mhc_core_mlx  # noqa: E402
from backend_registry.mlx_adapter import MLP  # noqa: E402
from mlx_cases import TOL, assert_close, make_state, oracle_step  # noqa: E402

X = np.random.default_rng(3).normal(size=(2, 3, 4))


def _mlp_mhc(**kw):
    return mhc_core_mlx.MHC(MLP(4), 3, 4, **kw)


def test_save_then_load_round_trips_through_a_safetensors_file(tmp_path):
    src = mhc_core_mlx.load_state(_mlp_mhc(), make_state("mhc", "mlp", 3, 4, seed=1))
    path = tmp_path / "mhc.safetensors"
    mhc_core_mlx.save_state(src, path)
    # The file is plain safetensors: any reader sees our names, shapes and float32 values.
    on_disk = st_numpy.load_file(str(path))
    want = mhc_core_mlx.module_state(src)
    assert sorted(on_disk) == sorted(want) == sorted(
        ["alpha", "bias", "phi", "layer.fc1.weight", "layer.fc1.bias", "layer.fc2.weight", "layer.fc2.bias"])
    for k in want:
        assert on_disk[k].dtype == np.float32, f"{k}: {on_disk[k].dtype}"
        assert_close(on_disk[k], want[k], 0.0, "file", k)
    dst = mhc_core_mlx.load_state(_mlp_mhc(), path)  # a fresh module with the default init
    x = mx.array(X.astype(np.float32))
    assert_close(np.array(dst(x)), np.array(src(x)), 0.0, "round-trip")


def test_numpy_state_loads_and_reproduces_the_oracle():
    state = make_state("hc", "linear", 3, 4, seed=2)
    module = mhc_core_mlx.load_state(mhc_core_mlx.MHC(nn.Linear(4, 4), 3, 4, variant="hc"), state)
    loaded = mhc_core_mlx.module_state(module)
    for k, v in state.items():
        assert loaded[k].dtype == np.float32
        assert_close(loaded[k], v, 1e-7, "numpy-state", k)
    out = np.array(module(mx.array(X.astype(np.float32))))
    assert_close(out, oracle_step("hc", "linear", loaded, X.astype(np.float32)), TOL["float32"], "numpy-state-out")


def test_float64_state_keeps_float64_precision_in_a_float64_module():
    """mx.array(float64 ndarray) would round to float32 if load_state did not pass the dtype."""
    state = make_state("mhc", "linear", 3, 4, seed=4)
    module = mhc_core_mlx.MHC(nn.Linear(4, 4), 3, 4)
    module.set_dtype(mx.float64)
    mhc_core_mlx.load_state(module, state)
    for k, v in mhc_core_mlx.module_state(module).items():
        assert v.dtype == np.float64
        assert_close(v, state[k], 0.0, "f64-load", k)


def test_file_written_by_torch_loads_into_mlx(tmp_path):
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    state = make_state("mhc", "mlp", 3, 4, seed=5)
    path = tmp_path / "from_torch.safetensors"
    st_torch.save_file({k: torch.tensor(v, dtype=torch.float32) for k, v in state.items()}, str(path))
    module = mhc_core_mlx.load_state(_mlp_mhc(), path)
    x = X.astype(np.float32)
    want = oracle_step("mhc", "mlp", {k: v.astype(np.float32) for k, v in state.items()}, x)
    assert_close(np.array(module(mx.array(x))), want, TOL["float32"], "torch-file")


def test_bfloat16_module_saves_bfloat16_and_loads_into_float32(tmp_path):
    src = mhc_core_mlx.load_state(_mlp_mhc(), make_state("mhc", "mlp", 3, 4, seed=6))
    src.layer.set_dtype(mx.bfloat16)
    path = tmp_path / "bf16.safetensors"
    mhc_core_mlx.save_state(src, path)
    raw = mx.load(str(path))
    assert raw["layer.fc1.weight"].dtype == mx.bfloat16 and raw["phi"].dtype == mx.float32
    dst = mhc_core_mlx.load_state(_mlp_mhc(), path)
    assert dst.layer.fc1.weight.dtype == mx.float32  # cast to the module's dtype
    for k, v in mhc_core_mlx.module_state(src).items():  # bf16 values are exact in float32
        assert_close(mhc_core_mlx.module_state(dst)[k], v, 0.0, "bf16-file", k)


def test_stream_head_state_round_trip(tmp_path):
    src = mhc_core_mlx.StreamHead(3, 4)
    rng = np.random.default_rng(7)
    mhc_core_mlx.load_state(src, {"phi": rng.normal(size=(12, 3)), "bias": rng.normal(size=3), "alpha": np.array([0.5])})
    mhc_core_mlx.save_state(src, tmp_path / "head.safetensors")
    dst = mhc_core_mlx.load_state(mhc_core_mlx.StreamHead(3, 4), tmp_path / "head.safetensors")
    x = mx.array(X.astype(np.float32))
    assert_close(np.array(dst(x)), np.array(src(x)), 0.0, "head-file")


# --- strict loading: every problem named --------------------------------------------------

def _good():
    return make_state("mhc", "linear", 3, 4)


@pytest.mark.parametrize("edit, message", [
    (lambda s: s.pop("alpha"), r"missing \['alpha'\]"),
    (lambda s: s.update(extra=np.zeros(2)), r"unexpected \['extra'\]"),
    (lambda s: s.update(phi=np.zeros((12, 14))), r"shape mismatch \['phi: state \[12, 14\] vs module \[12, 15\]'\]"),
    (lambda s: (s.pop("layer.bias"), s.update(bias=np.zeros(3))),
     r"missing \['layer.bias'\]; shape mismatch \['bias: state \[3\] vs module \[15\]'\]"),
    (lambda s: s.update(alpha=np.array([1, 2, 3])), r"'alpha' must be floating point, got dtype"),
], ids=["missing", "unexpected", "shape", "several", "integer"])
def test_load_state_is_strict(edit, message):
    state = _good()
    edit(state)
    module = mhc_core_mlx.MHC(nn.Linear(4, 4), 3, 4)
    before = np.array(module.phi)
    with pytest.raises((ValueError, TypeError), match=message):
        mhc_core_mlx.load_state(module, state)
    assert_close(np.array(module.phi), before, 0.0, "unchanged-after-error")


def test_load_and_save_reject_bad_paths_and_types(tmp_path):
    module = mhc_core_mlx.MHC(nn.Linear(4, 4), 3, 4)
    with pytest.raises(FileNotFoundError, match=r"no safetensors file at .*nope.safetensors"):
        mhc_core_mlx.load_state(module, tmp_path / "nope.safetensors")
    with pytest.raises(TypeError, match=r"expects a dict of arrays or a safetensors path, got list"):
        mhc_core_mlx.load_state(module, [1, 2])
    mhc_core_mlx.save_state(module, tmp_path / "weights.st")  # any name: the file is exactly that path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["weights.st"]
    mhc_core_mlx.load_state(module, tmp_path / "weights.st")
    with pytest.raises(TypeError, match=r"expected an mlx.nn.Module, got builtins.dict"):
        mhc_core_mlx.module_state({"phi": np.zeros(3)})


def test_float64_module_round_trips_and_reads_float64_files(tmp_path):
    """MLX's safetensors I/O has no F64; save_state / load_state go through safetensors.numpy."""
    state = make_state("mhc", "mlp", 3, 4, seed=8)
    src = _mlp_mhc()
    src.set_dtype(mx.float64)
    mhc_core_mlx.load_state(src, state)
    path = tmp_path / "f64.safetensors"
    mhc_core_mlx.save_state(src, path)
    on_disk = st_numpy.load_file(str(path))
    assert all(v.dtype == np.float64 for v in on_disk.values())
    dst = _mlp_mhc()
    dst.set_dtype(mx.float64)
    mhc_core_mlx.load_state(dst, path)
    for k, v in state.items():
        assert_close(mhc_core_mlx.module_state(dst)[k], v, 0.0, "f64-file", k)
    f32 = mhc_core_mlx.load_state(_mlp_mhc(), path)  # a float64 file into a float32 module: cast
    assert f32.phi.dtype == mx.float32
    assert_close(np.array(f32.phi), state["phi"].astype(np.float32), 0.0, "f64-file-into-f32")


def test_float64_with_bfloat16_is_refused_clearly(tmp_path):
    module = _mlp_mhc()
    module.set_dtype(mx.float64)
    module.layer.set_dtype(mx.bfloat16)
    with pytest.raises(ValueError, match=r"mixes float64 and bfloat16 tensors"):
        mhc_core_mlx.save_state(module, tmp_path / "mixed.safetensors")
    torch = pytest.importorskip("torch")
    st_torch = pytest.importorskip("safetensors.torch")
    path = tmp_path / "mixed_from_torch.safetensors"
    st_torch.save_file({"phi": torch.zeros(2, dtype=torch.float64), "bias": torch.zeros(2, dtype=torch.bfloat16)}, str(path))
    with pytest.raises(ValueError, match=r"load_state: .*mixes float64 and bfloat16 tensors"):
        mhc_core_mlx.load_state(module, path)


class _BytesPath:
    """An os.PathLike whose __fspath__ gives bytes (allowed by os.fspath)."""

    def __init__(self, path):
        self.path = bytes(path)

    def __fspath__(self):
        return self.path


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_save_state_odd_but_valid_paths_round_trip(tmp_path, dtype):
    """save_state writes exactly the path given, whatever its name: an existing file is
    replaced, a unicode name, a name already ending in '.safetensors', a bytes PathLike, a
    str, and a name at the file system's 255-byte limit (no longer temporary name next to
    it); load_state of each gives back the module's values; no temporary file is left."""
    src = mhc_core_mlx.load_state(_mlp_mhc(), make_state("mhc", "mlp", 3, 4, seed=1))
    src.set_dtype(getattr(mx, dtype))
    want = mhc_core_mlx.module_state(src)
    (tmp_path / "old.safetensors").write_text("not a safetensors file")
    paths = [tmp_path / "old.safetensors", tmp_path / "權重 w.safetensors", str(tmp_path / "w.bin"),
             _BytesPath(tmp_path / "b.safetensors"), tmp_path / ("n" * 255)]
    for path in paths:
        mhc_core_mlx.save_state(src, path)
        dst = _mlp_mhc()
        dst.set_dtype(getattr(mx, dtype))
        got = mhc_core_mlx.module_state(mhc_core_mlx.load_state(dst, path))
        for k in want:
            assert_close(got[k], want[k], 0.0, str(path)[-20:], k)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["old.safetensors", "權重 w.safetensors", "w.bin", "b.safetensors", "n" * 255])


def test_save_state_unwritable_paths_name_the_path(tmp_path):
    """An empty path, a directory and a file in a missing folder are refused before anything
    is written, with an error naming the path (not a temporary file's name)."""
    module = mhc_core_mlx.MHC(nn.Linear(4, 4), 3, 4)
    with pytest.raises(ValueError, match=r"save_state: path is empty"):
        mhc_core_mlx.save_state(module, "")
    with pytest.raises(IsADirectoryError, match=r"save_state: .*sub' is a directory"):
        (tmp_path / "sub").mkdir()
        mhc_core_mlx.save_state(module, tmp_path / "sub")
    with pytest.raises(FileNotFoundError, match=r"save_state: folder .*nope' of .*w.safetensors' does not exist"):
        mhc_core_mlx.save_state(module, tmp_path / "nope" / "w.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sub"] and not any((tmp_path / "sub").iterdir())
