"""Portable weight files: one naming on disk for both backends, and the errors when a layer
cannot move.

Canonical naming (what `save_state` writes and `module_state` returns on both backends) is
PyTorch's `state_dict` naming: dotted attribute paths, and the children of a sequential
container or a list as `<container>.<index>`. torch's `nn.Sequential` / `nn.ModuleList`
already name them so; MLX's `nn.Sequential` keeps its children in a list called `layers`
(`layer.layers.0.weight`), which the MLX backend drops on the way out and puts back on the
way in (`layer.0.weight`). Plain Python lists of MLX modules name their items
`<list>.<index>` already.

The layers whose parameters have the same names and layouts on both frameworks move as
they are: Linear (weight [out, in], bias [out]), RMSNorm (weight [C]), LayerNorm (weight,
bias [C]), Embedding (weight [V, C]), and this library's MHC / StreamHead; parameter-free
layers (activations, dropout, ...) hold nothing. Modules of your own move by attribute
name. Layers known to differ (convolutions, batch norm, multi-head attention, recurrent
and quantized layers) are refused by name: see `unportable`.

The files' metadata record the writer: {"library": "mhc-core", "backend": "torch" | "mlx",
"naming": NAMING}, when the module holds layers of `DIFFERS`, "unportable": a JSON object
of their canonical paths -> classes (the other backend names them when the file does not
match, and refuses a matching file of a reordered layout), and, when the module holds MHC
steps, "variants": a JSON object of each one's canonical path -> variant. mhc and hc have the same parameter shapes but read them
differently (hc's biases are its static pre / post / res, mhc's are logits), so a file
loads only into a module whose MHC steps at those paths have the same variants
(`check_variants`); numpy dicts carry no variants and are not checked.
"""
from __future__ import annotations

import json
import os
import struct

from .checks import state_matches

NAMING = "torch-state-dict"

PORTABLE = ("Linear, RMSNorm, LayerNorm, Embedding, MHC and StreamHead, held in Sequential / "
            "ModuleList / Python lists / module attributes (parameter-free layers such as "
            "activations move trivially)")

# Layer class name -> why its parameters do not line up between torch and MLX.
DIFFERS = {
    "Conv1d": "weight is [out, in, k] on torch and [out, k, in] on MLX",
    "Conv2d": "weight is [out, in, kh, kw] on torch and [out, kh, kw, in] on MLX",
    "Conv3d": "weight is [out, in, kd, kh, kw] on torch and [out, kd, kh, kw, in] on MLX",
    "ConvTranspose1d": "weight is [in, out, k] on torch and [out, k, in] on MLX",
    "ConvTranspose2d": "weight is [in, out, kh, kw] on torch and [out, kh, kw, in] on MLX",
    "ConvTranspose3d": "weight is [in, out, kd, kh, kw] on torch and [out, kd, kh, kw, in] on MLX",
    "BatchNorm": "torch keeps num_batches_tracked, MLX does not",
    "BatchNorm1d": "torch keeps num_batches_tracked, MLX does not",
    "BatchNorm2d": "torch keeps num_batches_tracked, MLX does not",
    "BatchNorm3d": "torch keeps num_batches_tracked, MLX does not",
    "MultiheadAttention": "torch packs q/k/v into in_proj_weight [3C, C]; MLX has query_proj / key_proj / value_proj",
    "MultiHeadAttention": "torch packs q/k/v into in_proj_weight [3C, C]; MLX has query_proj / key_proj / value_proj",
    "RNN": "torch names weight_ih_l0 / weight_hh_l0 / bias_*; MLX Wx / Wh / b",
    "GRU": "torch names weight_ih_l0 / weight_hh_l0 / bias_*; MLX Wx / Wh / b / bhn",
    "LSTM": "torch names weight_ih_l0 / weight_hh_l0 / bias_*; MLX Wx / Wh / bias",
    "QuantizedLinear": "MLX packs the weight into uint32 with scales / biases; torch has no such layer",
    "QuantizedEmbedding": "MLX packs the weight into uint32 with scales / biases; torch has no such layer",
}


# Of those, the layers whose parameters keep their names across the frameworks but not
# their layout: a file of one loads into a same-named layer of the other without any
# mismatch, transposed. (The others' names differ, so strict loading catches them.)
REORDERED = tuple(name for name in DIFFERS if name.startswith("Conv"))


def _differing_class(cls: type) -> type | None:
    """The class of `DIFFERS` that `cls` is: itself by name, or a torch / MLX base class (a
    user's subclass of Conv1d keeps Conv1d's layout)."""
    if cls.__name__ in DIFFERS:
        return cls
    for base in cls.__mro__[1:]:
        if base.__name__ in DIFFERS and base.__module__.split(".")[0] in ("torch", "mlx"):
            return base
    return None


def unportable_classes(named_modules) -> dict[str, str]:
    """path -> 'module.Class' of every module of a known non-portable class (or a subclass
    of one: its torch / MLX base class is named), given (path, module) pairs: what
    `save_state` records in a file's metadata."""
    out = {}
    for path, module in named_modules:
        cls = _differing_class(type(module))
        if cls is not None:
            out[path] = f"{cls.__module__}.{cls.__name__}"
    return out


def _described(classes: dict[str, str]) -> list[str]:
    """'path (module.Class: why)' for each entry of `unportable_classes`."""
    return [f"{path or '<root>'!r} ({cls}: {DIFFERS.get(cls.rsplit('.', 1)[-1], 'no portable mapping')})"
            for path, cls in classes.items()]


def unportable(named_modules) -> list[str]:
    """'path (Class: why)' for every module of a known non-portable class, given
    (path, module) pairs."""
    return _described(unportable_classes(named_modules))


def refusal(owner: str, layers: list[str]) -> str:
    """The message for a module holding layers that cannot move between backends."""
    return (f"{owner} holds layers with no portable mapping between torch and MLX: {'; '.join(layers)}. "
            f"Portable: {PORTABLE}. Convert those weights by hand (e.g. transpose a convolution's "
            "kernel) or replace the layers with portable ones.")


def check_incoming(current: dict, incoming: dict, owner: str, named_modules, state, other: str) -> None:
    """`checks.state_matches(current, incoming, owner)`, with the unportable layers named.

    A file written by the `other` backend ('torch' | 'mlx') is refused outright when this
    module holds such layers. When the writer's module held them (the file's metadata
    lists them), a mismatch names them as its reason, and a file that matches is still
    refused where one of them keeps its names but not its layout (`REORDERED`: a
    convolution's kernel would load transposed)."""
    layers = unportable(named_modules)
    meta = file_metadata(state) if isinstance(state, (str, os.PathLike)) else {}
    theirs: dict[str, str] = {}
    if meta.get("backend") == other:
        writer = {"torch": "torch", "mlx": "MLX"}[other]
        if layers:
            raise ValueError(f"load_state: {os.fspath(state)!r} was written by {writer}, but " + refusal(owner, layers))
        theirs = json.loads(meta.get("unportable") or "{}")

    def written_by(classes: dict[str, str]) -> str:
        return (f"{os.fspath(state)!r} was written by {writer}, and "
                + refusal(f"the {writer} module", _described(classes)))

    try:
        state_matches(current, incoming, owner)
    except ValueError as err:
        hint = stream_sizes_hint(current, incoming)
        message = f"{err}{hint}"
        if layers:
            raise ValueError(f"{message}. {refusal(owner, layers)}") from None
        if theirs:
            raise ValueError(f"{message}: {written_by(theirs)}") from None
        if hint:
            raise ValueError(message) from None
        raise
    reordered = {path: cls for path, cls in theirs.items() if cls.rsplit(".", 1)[-1] in REORDERED}
    if reordered:
        raise ValueError(f"load_state: {written_by(reordered)}")


def _sizes(phi_shape, alpha_shape) -> tuple[int, int] | None:
    """(n, C) from the shape of an MHC's phi [n*C, n*n + 2n] (alpha [3]) or a StreamHead's
    phi [n*C, n] (alpha [1]); None when the shapes fit neither."""
    if len(phi_shape) != 2 or len(alpha_shape) != 1:
        return None
    rows, cols = phi_shape
    if alpha_shape[0] == 1:
        n = cols
    else:
        n = round((1 + cols) ** 0.5) - 1
        if n * n + 2 * n != cols:
            return None
    return (n, rows // n) if n > 0 and rows % n == 0 else None


def stream_sizes_hint(current: dict, incoming: dict) -> str:
    """' (prefix: file n=.., C=..; module n=.., C=..)' for every MHC / StreamHead whose phi
    shape differs between the module and the incoming state, so a wrong n or C reads as
    such; '' when there is none."""
    out = []
    for key in sorted(current):
        if key != "phi" and not key.endswith(".phi"):
            continue
        prefix = key[: -len("phi")]
        alpha = current.get(prefix + "alpha")
        if key not in incoming or alpha is None or tuple(incoming[key].shape) == tuple(current[key].shape):
            continue
        mine = _sizes(tuple(current[key].shape), tuple(alpha.shape))
        theirs = _sizes(tuple(incoming[key].shape), tuple(alpha.shape))
        if mine and theirs:
            out.append(f"{prefix.rstrip('.') or '<root>'}: file n={theirs[0]}, C={theirs[1]}; "
                       f"module n={mine[0]}, C={mine[1]}")
    return f" (streams and width: {'; '.join(out)})" if out else ""


def unreadable(path: str, err: Exception) -> ValueError:
    """The error for a file that is not a complete safetensors file (truncated, or another
    format such as a torch.save pickle), naming the path and the reader's complaint."""
    return ValueError(f"load_state: {path!r} is not a complete safetensors file ({type(err).__name__}: {err}); "
                      "was it cut short, or written in another format (torch.save / pickle / npz)?")


def checked_key(key) -> str:
    """`key` of an incoming state mapping, or a TypeError saying names are dotted strings."""
    if not isinstance(key, str):
        raise TypeError(f"load_state: state names must be dotted strings such as 'phi' or 'layer.weight', "
                        f"got {key!r} ({type(key).__name__})")
    return key


def numeric(key: str, value, np_module):
    """`value` as a numpy array of numbers, or a TypeError naming `key` and what it held."""
    array = np_module.asarray(value)
    if array.dtype.kind not in "biuf":
        raise TypeError(f"load_state: {key!r} must be an array of numbers, got {type(value).__name__} "
                        f"(dtype {array.dtype})")
    return array


def file_metadata(path: str | os.PathLike) -> dict:
    """The `__metadata__` of a safetensors file ({} when it has none); reads only the header."""
    with open(os.fspath(path), "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(size))
    return dict(header.get("__metadata__") or {})


def checked_path(path, fn: str) -> str:
    """`path` as a string (an os.PathLike giving bytes is decoded as the file system does), or a
    TypeError naming what `fn` expected (a str or os.PathLike file path)."""
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"{fn}: path must be a str or os.PathLike naming a .safetensors file, got {type(path).__name__}")
    return os.fsdecode(os.fspath(path))


def writable_path(path, fn: str) -> str:
    """`checked_path(path)` where a file can be written: ValueError for an empty path,
    IsADirectoryError for a directory, FileNotFoundError for a missing parent folder, each
    naming the path (instead of an I/O error about a file the caller never named)."""
    path = checked_path(path, fn)
    if not path:
        raise ValueError(f"{fn}: path is empty; expected a file path such as 'weights.safetensors'")
    if os.path.isdir(path):
        raise IsADirectoryError(f"{fn}: {path!r} is a directory; expected a file path inside it")
    folder = os.path.dirname(path) or "."
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"{fn}: folder {folder!r} of {path!r} does not exist; create it first")
    return path


def metadata(backend: str, version: str, variants: dict[str, str] | None = None,
             unportable_layers: dict[str, str] | None = None) -> dict[str, str]:
    """What `save_state` writes into a file's metadata; variants: canonical path of each MHC
    step -> its variant ('' for the module itself); unportable_layers: `unportable_classes`
    of the module (canonical paths), which the other backend names or refuses."""
    out = {"library": "mhc-core", "backend": backend, "naming": NAMING, "version": version}
    if variants:
        out["variants"] = json.dumps(variants, sort_keys=True)
    if unportable_layers:
        out["unportable"] = json.dumps(unportable_layers, sort_keys=True)
    return out


def check_variants(state, mine: dict[str, str], owner: str) -> None:
    """A file whose metadata records its MHC steps' variants loads only into a module whose
    MHC steps at those paths (`mine`: canonical path -> variant) have the same ones; one
    ValueError names every difference. Mappings and files without the record pass."""
    if not mine or not isinstance(state, (str, os.PathLike)):
        return
    recorded = file_metadata(state).get("variants")
    if not recorded:
        return
    theirs = json.loads(recorded)
    wrong = [(path, theirs[path], mine[path]) for path in sorted(set(theirs) & set(mine)) if theirs[path] != mine[path]]
    if wrong:
        what = "; ".join(f"an MHC of variant {t!r} at {path or '<root>'!r}, but this "
                         + (f"{owner}'s MHC there is" if path else f"{owner} is") + f" variant {m!r}"
                         for path, t, m in wrong)
        raise ValueError(f"load_state: {os.fspath(state)!r} holds {what}. The variants read the same parameters "
                         "differently (hc's biases are static coefficients, mhc's and mhc-lite's are logits): "
                         "build the module with the file's variants.")
