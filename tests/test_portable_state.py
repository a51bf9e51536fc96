"""Weights move between the torch and MLX backends through safetensors files (and numpy
dicts) for real models: the README's blocks (torch / MLX Sequential), nested containers
and lists, LayerNorm / Embedding, and the tiny LM; in both directions the two modules
then give the same outputs to float32 rounding. Layers whose layouts differ are refused
by name (mhc_core.portable)."""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")
import mlx.nn as mnn  # noqa: E402
import mhc_core_mlx  # noqa: E402
import mhc_core_torch  # noqa: E402
from torch import nn as tnn  # noqa: E402


N, C = 4, 16
F32_RTOL = 1e-5  # relative to max|output|: float32 rounding of two different kernels


def torch_mlp(act):
    """The README quickstart blocks: RMSNorm -> Linear -> act -> Linear on torch."""
    return tnn.Sequential(tnn.RMSNorm(C, eps=1e-6), tnn.Linear(C, 4 * C), act(), tnn.Linear(4 * C, C))


def mlx_mlp(act):
    return mnn.Sequential(mnn.RMSNorm(C, eps=1e-6), mnn.Linear(C, 4 * C), act(), mnn.Linear(4 * C, C))


class TorchNet(tnn.Module):
    """tokens [B, T] -> [B, T, C]: Embedding, two mHC steps in a ModuleList (LayerNorm MLPs),
    then a Sequential holding a Sequential."""

    def __init__(self):
        super().__init__()
        self.embed = tnn.Embedding(32, C)
        self.blocks = tnn.ModuleList(
            mhc_core_torch.MHC(tnn.Sequential(tnn.LayerNorm(C, eps=1e-6), tnn.Linear(C, 2 * C), tnn.SiLU(),
                                              tnn.Linear(2 * C, C, bias=False)), n=N, dim=C) for _ in range(2))
        self.out = tnn.Sequential(tnn.Sequential(tnn.RMSNorm(C, eps=1e-6)), tnn.Linear(C, C))

    def forward(self, tokens):
        x = mhc_core_torch.expand_streams(self.embed(tokens), N)
        for b in self.blocks:
            x = b(x)
        return self.out(mhc_core_torch.reduce_streams(x))


class MlxNet(mnn.Module):
    """The same network on MLX (a Python list for the ModuleList)."""

    def __init__(self):
        super().__init__()
        self.embed = mnn.Embedding(32, C)
        self.blocks = [
            mhc_core_mlx.MHC(mnn.Sequential(mnn.LayerNorm(C, eps=1e-6), mnn.Linear(C, 2 * C), mnn.SiLU(),
                                            mnn.Linear(2 * C, C, bias=False)), n=N, dim=C) for _ in range(2)]
        self.out = mnn.Sequential(mnn.Sequential(mnn.RMSNorm(C, eps=1e-6)), mnn.Linear(C, C))

    def __call__(self, tokens):
        x = mhc_core_mlx.expand_streams(self.embed(tokens), N)
        for b in self.blocks:
            x = b(x)
        return self.out(mhc_core_mlx.reduce_streams(x))


def randomize(state: dict, seed: int) -> dict:
    """Every array of a module_state replaced by random values (norm weights around 1,
    mixing parameters away from the warm start so the mixing matters)."""
    rng = np.random.default_rng(seed)
    out = {}
    for k, v in state.items():
        scale = 0.5 if k.endswith(("phi", "alpha")) else 0.3
        out[k] = (rng.normal(size=v.shape) * scale + (1.0 if k.endswith("norm.weight") else 0.0)).astype(np.float32)
    return out


def inputs(kind: str, seed: int = 1):
    rng = np.random.default_rng(seed)
    if kind == "tokens":
        return rng.integers(0, 32, size=(2, 5))
    return rng.normal(size=(2, 5, N, C)).astype(np.float32)


def run_torch(module, x):
    t = torch.from_numpy(x) if x.dtype != np.int64 else torch.from_numpy(x).long()
    with torch.no_grad():
        return module(t).numpy()


def run_mlx(module, x):
    return np.array(module(mx.array(x.astype(np.int32) if x.dtype == np.int64 else x)))


def assert_close(got, want):
    err = float(np.abs(got - want).max() / np.abs(want).max())
    assert err <= F32_RTOL, f"relative error {err:.2e} > {F32_RTOL:g}"


CASES = {
    "readme-mlx-block (GELU)": (lambda: mhc_core_torch.MHC(torch_mlp(tnn.GELU), n=N, dim=C),
                                lambda: mhc_core_mlx.MHC(mlx_mlp(mnn.GELU), n=N, dim=C), "streams"),
    "readme-cuda-block (SiLU)": (lambda: mhc_core_torch.MHC(torch_mlp(tnn.SiLU), n=N, dim=C),
                                 lambda: mhc_core_mlx.MHC(mlx_mlp(mnn.SiLU), n=N, dim=C), "streams"),
    "nested containers, LayerNorm, Embedding": (TorchNet, MlxNet, "tokens"),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("direction", ["torch->mlx", "mlx->torch"])
def test_file_moves_between_backends(case, direction, tmp_path):
    make_torch, make_mlx, kind = CASES[case]
    t, m = make_torch(), make_mlx()
    assert sorted(mhc_core_torch.module_state(t)) == sorted(mhc_core_mlx.module_state(m)), "canonical names differ"
    path = tmp_path / "block.safetensors"
    if direction == "torch->mlx":
        mhc_core_torch.load_state(t, randomize(mhc_core_torch.module_state(t), 0))
        mhc_core_torch.save_state(t, path)
        mhc_core_mlx.load_state(m, path)
    else:
        mhc_core_mlx.load_state(m, randomize(mhc_core_mlx.module_state(m), 0))
        mhc_core_mlx.save_state(m, path)
        mhc_core_torch.load_state(t, path)
    for k, v in mhc_core_torch.module_state(t).items():  # exact: float32 -> file -> float32
        np.testing.assert_array_equal(mhc_core_mlx.module_state(m)[k], v, err_msg=k)
    x = inputs(kind)
    assert_close(run_mlx(m, x), run_torch(t, x))


def test_numpy_dicts_move_both_ways():
    """module_state of one backend loads into the other (canonical names, no file)."""
    t, m = mhc_core_torch.MHC(torch_mlp(tnn.GELU), n=N, dim=C), mhc_core_mlx.MHC(mlx_mlp(mnn.GELU), n=N, dim=C)
    mhc_core_mlx.load_state(m, randomize(mhc_core_mlx.module_state(m), 3))
    mhc_core_torch.load_state(t, mhc_core_mlx.module_state(m))
    x = inputs("streams")
    assert_close(run_torch(t, x), run_mlx(m, x))
    m2 = mhc_core_mlx.load_state(mhc_core_mlx.MHC(mlx_mlp(mnn.GELU), n=N, dim=C), mhc_core_torch.module_state(t))
    np.testing.assert_array_equal(run_mlx(m2, x), run_mlx(m, x))


def test_mlx_native_names_still_load():
    """A state keyed by MLX's own names (`layer.layers.0.weight`, what mhc_core_mlx wrote
    before the canonical naming) loads into the same MLX module."""
    from mlx.utils import tree_flatten

    m = mhc_core_mlx.MHC(mlx_mlp(mnn.GELU), n=N, dim=C)
    native = {k: np.array(v) for k, v in tree_flatten(m.parameters())}
    assert "layer.layers.1.weight" in native and "layer.1.weight" in mhc_core_mlx.module_state(m)
    native = {k: v + 1.0 for k, v in native.items()}
    m2 = mhc_core_mlx.load_state(mhc_core_mlx.MHC(mlx_mlp(mnn.GELU), n=N, dim=C), native)
    np.testing.assert_array_equal(np.array(m2.layer.layers[1].weight), native["layer.layers.1.weight"])


def test_torch_reads_mlx_native_names():
    """A state keyed by MLX's own names (an MLX file written before the canonical naming)
    loads into the torch module too."""
    from mlx.utils import tree_flatten

    m = mhc_core_mlx.MHC(mlx_mlp(mnn.GELU), n=N, dim=C)
    mhc_core_mlx.load_state(m, randomize(mhc_core_mlx.module_state(m), 9))
    native = {k: np.array(v) for k, v in tree_flatten(m.parameters())}
    t = mhc_core_torch.load_state(mhc_core_torch.MHC(torch_mlp(tnn.GELU), n=N, dim=C), native)
    x = inputs("streams")
    assert_close(run_torch(t, x), run_mlx(m, x))
    with pytest.raises(ValueError, match=r"missing \['layer.3.bias'\]"):
        mhc_core_torch.load_state(t, {k: v for k, v in native.items() if k != "layer.layers.3.bias"})
    with pytest.raises(ValueError, match=r"\['layer.layers.3.bias'\] name the same tensors"):
        mhc_core_torch.load_state(t, {**mhc_core_torch.module_state(t), "layer.layers.3.bias": native["layer.layers.3.bias"]})


def test_tiny_lm_moves_both_ways(tmp_path):
    """The depth sweep's TinyLM (mHC at every sub-layer): logits agree after a file move
    in either direction."""
    from mhc_core.experiments.lm_config import LMConfig, init_lm_params
    from mhc_core_mlx.lm import TinyLM as MlxLM
    from mhc_core_torch.lm import TinyLM as TorchLM

    cfg = LMConfig(variant="mhc", n_layers=2, dim=16, n_heads=2, mlp_ratio=2, vocab=32, seq_len=8, n=N)
    trained = randomize(init_lm_params(cfg), 5)
    tokens = np.random.default_rng(2).integers(0, 32, size=(2, 8))
    t = TorchLM(cfg, trained)
    mhc_core_torch.save_state(t, tmp_path / "lm.safetensors")
    m = MlxLM(cfg)
    mhc_core_mlx.load_state(m, tmp_path / "lm.safetensors")
    assert_close(run_mlx(m, tokens), run_torch(t, tokens))
    mhc_core_mlx.save_state(m, tmp_path / "lm_mlx.safetensors")
    t2 = mhc_core_torch.load_state(TorchLM(cfg), tmp_path / "lm_mlx.safetensors")
    np.testing.assert_array_equal(run_torch(t2, tokens), run_torch(t, tokens))


def test_files_record_the_canonical_naming(tmp_path):
    from mhc_core import portable

    mhc_core_torch.save_state(mhc_core_torch.MHC(torch_mlp(tnn.GELU), n=N, dim=C), tmp_path / "t.safetensors")
    mhc_core_mlx.save_state(mhc_core_mlx.MHC(mlx_mlp(mnn.GELU), n=N, dim=C), tmp_path / "m.safetensors")
    for path, backend in ((tmp_path / "t.safetensors", "torch"), (tmp_path / "m.safetensors", "mlx")):
        meta = portable.file_metadata(path)
        assert meta["backend"] == backend and meta["naming"] == portable.NAMING


def conv_blocks():
    t = tnn.Sequential(tnn.Conv1d(C, C, 3, padding=1), tnn.Linear(C, C))
    m = mnn.Sequential(mnn.Conv1d(C, C, 3, padding=1), mnn.Linear(C, C))
    return t, m


def test_unportable_layer_torch_to_mlx_names_it(tmp_path):
    """Conv1d's weight is [out, in, k] on torch and [out, k, in] on MLX: a torch-written
    file is refused by the MLX module, naming the layer and what would map."""
    t, m = conv_blocks()
    mhc_core_torch.save_state(t, tmp_path / "conv.safetensors")
    with pytest.raises(ValueError, match=r"'layers\.0' \(mlx\.nn\.layers\.convolution\.Conv1d: weight is \[out, in, k\]") as err:
        mhc_core_mlx.load_state(m, tmp_path / "conv.safetensors")
    assert "Portable: Linear, RMSNorm, LayerNorm, Embedding" in str(err.value)


def test_unportable_layer_mlx_to_torch_names_it(tmp_path):
    t, m = conv_blocks()
    mhc_core_mlx.save_state(m, tmp_path / "conv.safetensors")
    with pytest.raises(ValueError, match=r"written by MLX.*'0' \(torch\.nn\.modules\.conv\.Conv1d"):
        mhc_core_torch.load_state(t, tmp_path / "conv.safetensors")


def test_file_from_an_unportable_layer_is_refused_by_the_other_backend(tmp_path):
    """A layer nn.quantize packed (MLX's QuantizedLinear, uint32 weights with scales and
    biases) inside an MHC: its file is refused by the torch module built with a plain
    Linear there, naming the quantized layer and why, not only as unexpected names."""
    m = mhc_core_mlx.MHC(mlx_mlp(mnn.GELU), n=N, dim=C)
    mnn.quantize(m, group_size=64, bits=8,  # layer.3 (Linear(4C, C)): the Linear whose input width is 64
                 class_predicate=lambda _, layer: isinstance(layer, mnn.Linear) and layer.weight.shape[-1] % 64 == 0)
    mhc_core_mlx.save_state(m, tmp_path / "quantized.safetensors")
    t = mhc_core_torch.MHC(torch_mlp(tnn.GELU), n=N, dim=C)
    with pytest.raises(ValueError, match=r"written by MLX, and the MLX module holds layers with no portable mapping "
                                         r"between torch and MLX: 'layer\.3' \(mlx\.nn\.layers\.quantized\."
                                         r"QuantizedLinear: MLX packs the weight into uint32"):
        mhc_core_torch.load_state(t, tmp_path / "quantized.safetensors")


def test_file_from_a_conv_with_matching_shapes_is_refused_by_the_other_backend(tmp_path):
    """torch Conv1d(4, 4, 4) has weight [4, 4, 4] as MLX's does, in another order: a torch
    file of a Conv1d is refused by an MLX module that holds a plain parameter of that shape,
    not loaded transposed."""
    t = tnn.Sequential(tnn.Conv1d(4, 4, 4))

    class Plain(mnn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.bias = mx.zeros((4, 4, 4)), mx.zeros((4,))

    m = mnn.Sequential(Plain())
    mhc_core_torch.save_state(t, tmp_path / "conv.safetensors")
    with pytest.raises(ValueError, match=r"written by torch, and the torch module holds layers with no portable "
                                         r"mapping between torch and MLX: '0' \(torch\.nn\.modules\.conv\.Conv1d"):
        mhc_core_mlx.load_state(m, tmp_path / "conv.safetensors")


def test_file_from_an_unportable_layer_still_loads_where_names_and_layouts_match(tmp_path):
    """MLX's MultiHeadAttention keeps query_proj / key_proj / value_proj / out_proj Linears
    ([out, in], as torch's): its file loads into a torch module of those Linears (the layer
    is unportable only into torch's packed nn.MultiheadAttention), weights unchanged."""
    m = mnn.MultiHeadAttention(C, 2)

    class Projections(tnn.Module):
        def __init__(self):
            super().__init__()
            for name in ("query_proj", "key_proj", "value_proj", "out_proj"):
                setattr(self, name, tnn.Linear(C, C, bias=False))

    mhc_core_mlx.save_state(m, tmp_path / "mha.safetensors")
    t = mhc_core_torch.load_state(Projections(), tmp_path / "mha.safetensors")
    want = mhc_core_mlx.module_state(m)
    for name, value in mhc_core_torch.module_state(t).items():
        assert np.array_equal(value, want[name]), name


def test_unportable_layer_in_a_mismatched_dict_is_named():
    """Without a file's metadata, the strict mismatch error also names the layers that
    cannot move (MultiHeadAttention: torch packs q/k/v, MLX does not)."""
    m = mnn.Sequential(mnn.MultiHeadAttention(C, 2), mnn.Linear(C, C))
    t = tnn.Sequential(tnn.MultiheadAttention(C, 2), tnn.Linear(C, C))
    with pytest.raises(ValueError, match=r"missing .*unexpected .*'0' \(torch\.nn\.modules\.activation\.MultiheadAttention"):
        mhc_core_torch.load_state(t, mhc_core_mlx.module_state(m))


def test_same_backend_files_with_conv_still_round_trip(tmp_path):
    """Layers that cannot cross backends still save and load within one backend."""
    t, m = conv_blocks()
    mhc_core_torch.save_state(t, tmp_path / "t.safetensors")
    t2 = mhc_core_torch.load_state(conv_blocks()[0], tmp_path / "t.safetensors")
    x = torch.randn(2, C, 5)
    assert torch.equal(t2[0](x), t[0](x))
    mhc_core_mlx.save_state(m, tmp_path / "m.safetensors")
    m2 = mhc_core_mlx.load_state(conv_blocks()[1], tmp_path / "m.safetensors")
    xm = mx.random.normal((2, 5, C))
    assert np.array_equal(np.array(m2.layers[0](xm)), np.array(m.layers[0](xm)))


@pytest.mark.skipif(not (hasattr(mhc_core_torch, "HistorySequential") and hasattr(mhc_core_mlx, "HistorySequential")),
                    reason="HistorySequential is not in this tree yet")
@pytest.mark.parametrize("direction", ["torch->mlx", "mlx->torch"])
def test_history_sequential_moves_between_backends(direction, tmp_path):
    """HistorySequential over Sequential MLPs (torch ModuleList of Sequentials, MLX list of
    Sequentials) with gated skips: same canonical names, outputs equal after a file move."""
    t = mhc_core_torch.HistorySequential([torch_mlp(tnn.GELU) for _ in range(3)], history=2, gate=True)
    m = mhc_core_mlx.HistorySequential([mlx_mlp(mnn.GELU) for _ in range(3)], history=2, gate=True)
    assert sorted(mhc_core_torch.module_state(t)) == sorted(mhc_core_mlx.module_state(m))
    path = tmp_path / "history.safetensors"
    if direction == "torch->mlx":
        mhc_core_torch.load_state(t, randomize(mhc_core_torch.module_state(t), 7))
        mhc_core_torch.save_state(t, path)
        mhc_core_mlx.load_state(m, path)
    else:
        mhc_core_mlx.load_state(m, randomize(mhc_core_mlx.module_state(m), 7))
        mhc_core_mlx.save_state(m, path)
        mhc_core_torch.load_state(t, path)
    x = np.random.default_rng(4).normal(size=(2, 5, C)).astype(np.float32)
    assert_close(run_mlx(m.eval() if hasattr(m, "eval") else m, x), run_torch(t.eval(), x))


@pytest.mark.parametrize("backend", ["torch", "mlx"])
def test_save_state_refuses_a_bad_path_or_module_by_name(backend, tmp_path):
    lib = mhc_core_torch if backend == "torch" else mhc_core_mlx
    module = mhc_core_torch.MHC(torch_mlp(tnn.GELU), n=N, dim=C) if backend == "torch" else \
        mhc_core_mlx.MHC(mlx_mlp(mnn.GELU), n=N, dim=C)
    for bad in (None, 3, ["a.safetensors"]):
        with pytest.raises(TypeError, match="save_state: path must be a str or os.PathLike"):
            lib.save_state(module, bad)
    with pytest.raises(TypeError, match="save_state: module must be"):
        lib.save_state({"w": np.zeros(2)}, tmp_path / "x.safetensors")
    assert not (tmp_path / "x.safetensors").exists()


class _TorchCausalConv(tnn.Conv1d):
    """A user's subclass of a layer whose layout differs (a causal convolution)."""


class _MlxCausalConv(mnn.Conv1d):
    """The same on MLX."""


def test_subclasses_of_unportable_layers_are_refused_by_the_other_backend(tmp_path):
    """A subclass keeps its base's layout: a torch file of a Conv1d subclass must not load,
    transposed, into an MLX Conv1d subclass of the same shapes (nor the other way round)."""
    mhc_core_torch.save_state(tnn.Sequential(_TorchCausalConv(4, 4, 4)), tmp_path / "t.safetensors")
    with pytest.raises(ValueError, match=r"written by torch, but Sequential holds layers with no portable mapping "
                                         r"between torch and MLX: 'layers\.0' \(mlx\.nn\.layers\.convolution\.Conv1d"):
        mhc_core_mlx.load_state(mnn.Sequential(_MlxCausalConv(4, 4, 4)), tmp_path / "t.safetensors")
    mhc_core_mlx.save_state(mnn.Sequential(_MlxCausalConv(4, 4, 4)), tmp_path / "m.safetensors")
    with pytest.raises(ValueError, match=r"written by MLX, but Sequential holds layers with no portable mapping "
                                         r"between torch and MLX: '0' \(torch\.nn\.modules\.conv\.Conv1d"):
        mhc_core_torch.load_state(tnn.Sequential(_TorchCausalConv(4, 4, 4)), tmp_path / "m.safetensors")


def test_a_conv_subclass_file_is_refused_by_a_module_of_plain_parameters(tmp_path):
    """The writer's Conv1d subclass is recorded in the file's metadata like Conv1d itself."""

    class Plain(mnn.Module):
        def __init__(self):
            super().__init__()
            self.weight, self.bias = mx.zeros((4, 4, 4)), mx.zeros((4,))

    mhc_core_torch.save_state(tnn.Sequential(_TorchCausalConv(4, 4, 4)), tmp_path / "conv.safetensors")
    with pytest.raises(ValueError, match=r"written by torch, and the torch module holds layers with no portable "
                                         r"mapping between torch and MLX: '0' \(torch\.nn\.modules\.conv\.Conv1d"):
        mhc_core_mlx.load_state(mnn.Sequential(Plain()), tmp_path / "conv.safetensors")
