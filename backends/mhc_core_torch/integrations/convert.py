"""Convert a trained transformers decoder (Llama, Qwen2, Qwen3, ...) to mHC, save and load it.

    model = AutoModelForCausalLM.from_pretrained(...)
    mhc_core_torch.convert(model, n=4)              # in place; logits unchanged (warm start)
    ... train ...
    model.save_pretrained(path)                # config.json gets "mhc": {...}
    model = mhc_core_torch.load_converted(path)     # the same model back, bit for bit

Every decoder layer's attention and MLP residual becomes an mHC step (blocks.py), the
first layer expands the embedding into n streams and the last reduces them (mean) before
the model's final norm. The mHC parameters start at the exact warm start of
`mhc_core.init_params` (pre = 1/n, post = 1, phi = 0, res doubly stochastic): with equal
streams every step computes x + f(x) again, so the logits match the original's up to
float32 rounding. Integrations default to sinkhorn_eps = 0 (exactly doubly stochastic
res; DeepSeek's 1e-6 makes each column sum to 1 - 1e-6, a drift that grows with depth).

Loading: `config.mhc` records n, the variant, the MHCConfig and which blocks were
converted (and which modules `inject(..., history=K)` wrapped, with their options). `load_converted(path, **kwargs)` makes a subclass of the class named in
`config.architectures` (same name, so a second save_pretrained writes the same config)
whose __init__ re-applies the conversion, and calls its `from_pretrained`: dtype,
device_map and sharded checkpoints work as usual (mHC parameters stay float32 under
dtype=bfloat16, and no converted block is split across devices). A plain
`AutoModelForCausalLM.from_pretrained(path)` would load the original architecture and
report the `*_mhc.*` tensors as unexpected: use load_converted. mHC parameters the files
do not hold (a checkpoint saved before converting, with config.mhc added) start at the
warm start, with a warning naming them (transformers would leave them uninitialised).
"""
from __future__ import annotations

import json
import os
import warnings

import torch
from torch import nn

from ..modules import MHC, StreamHead

from .blocks import is_converted
from .history_inject import inject_history
from ..wrappers import compiled_inner
from .inject import FORMATS, check_model, check_settings, convert_segments, record
from .recipes import PRE_NORM_DECODER, RECIPES


def _decoder_stack(model: nn.Module) -> list[str]:
    """Names of the decoder layers the model's forward runs: the ModuleList of pre-LN
    decoder blocks (its first config.num_hidden_layers entries)."""
    stacks = [
        name for name, m in model.named_modules()
        if isinstance(m, nn.ModuleList) and len(m) > 0 and all(PRE_NORM_DECODER.matches(b) for b in m)
    ]
    if len(stacks) != 1:
        lists = [(name, type(m[0]).__name__) for name, m in model.named_modules()
                 if isinstance(m, nn.ModuleList) and len(m) > 0]
        if stacks:
            raise ValueError(f"convert: found several decoder stacks {stacks}; use mhc_core_torch.inject(model, target=...)")
        if any(is_converted(m) for m in model.modules()):
            raise ValueError("convert: this model is already converted to mHC")
        raise ValueError(
            "convert: no stack of pre-LN decoder layers (children exactly input_layernorm, self_attn, "
            f"post_attention_layernorm, mlp) in {type(model).__name__}; its ModuleLists hold {lists}. "
            "For other block shapes see mhc_core_torch.inject and its recipes."
        )
    name = stacks[0]
    layers = model.get_submodule(name)
    count = getattr(getattr(model, "config", None), "num_hidden_layers", None) or len(layers)
    return [f"{name}.{i}" if name else str(i) for i in range(min(count, len(layers)))]


def convert(model: nn.Module, n: int = 4, *, variant: str = "mhc", reduce: str = "mean", impl: str = "auto",
            init: dict | None = None, **cfg) -> nn.Module:
    """Convert a pre-LN decoder model to mHC in place and return it.

    n: streams (paper's expansion rate); variant 'mhc' | 'hc'; reduce 'mean' (default) or
    'head' (a learned StreamHead, starting as the mean); impl 'auto' | 'reference' |
    'triton'; init: {'phi','bias','alpha'} for every step (default: exact warm start);
    cfg: MHCConfig fields (iters, rms_eps, pre_eps, sinkhorn_eps, post_scale). A torch.compile
    wrapper is returned as given, the model inside it converted.
    """
    check_model(model, "convert")
    wrapper, model = model, compiled_inner(model)
    n, full_cfg = check_settings(n, variant, reduce, cfg)
    names = _decoder_stack(model)
    segments = convert_segments(model, [names], PRE_NORM_DECODER, n=n, variant=variant, reduce=reduce,
                                impl=impl, init=init, cfg=full_cfg)
    record(model, n=n, variant=variant, reduce=reduce, cfg=full_cfg, segments=segments)
    return wrapper


def apply_settings(model: nn.Module, settings: dict, impl: str = "auto") -> nn.Module:
    """Re-apply a recorded conversion (config.mhc) to a freshly built model: the stream
    segments, and the history injections each at its recorded place among them."""
    if settings.get("format") not in FORMATS:
        raise ValueError(f"config.mhc has format {settings.get('format')!r}; this mhc reads formats {list(FORMATS)}")
    segments, entries = settings.get("segments", []), settings.get("history", [])
    for segment in segments:
        if segment.get("recipe") not in RECIPES:
            raise ValueError(f"config.mhc's segment names recipe {segment.get('recipe')!r}; this mhc_core_torch "
                             f"has {sorted(RECIPES)}")
    for i in range(len(segments) + 1):
        for entry in entries:
            if entry["after_segments"] == i:
                _rewrap_history(model, entry)
        if i < len(segments):
            # checked here, not up front: blocks inside history wrappers exist once the
            # entries recorded before this segment are applied
            modules = dict(model.named_modules())
            absent = [name for name in segments[i].get("blocks", []) if name not in modules]
            if absent:
                raise ValueError(f"config.mhc's segment names blocks this model does not have: {absent[:3]}")
            convert_segments(model, [segments[i]["blocks"]], RECIPES[segments[i]["recipe"]], n=settings["n"],
                             variant=settings["variant"], reduce=settings["reduce"], impl=impl, init=None,
                             cfg=settings["config"])
    if segments:
        record(model, n=settings["n"], variant=settings["variant"], reduce=settings["reduce"],
               cfg=settings["config"], segments=[])
    model.config.mhc = settings
    return model


def _rewrap_history(model: nn.Module, entry: dict) -> None:
    """Wrap the modules a config.mhc history entry names, with its options."""
    modules = dict(model.named_modules())
    absent = [name for name in entry["modules"] if name not in modules]
    if absent:
        raise ValueError(f"config.mhc's history entry names modules this model does not have: {absent[:3]}")
    chosen = {id(modules[name]) for name in entry["modules"]}
    options = dict(entry["options"])
    inject_history(model, lambda m: id(m) in chosen, options.pop("history"), "the modules config.mhc names",
                   **options)


_LOADERS: dict[type, type] = {}


def converted_class(base: type) -> type:
    """A subclass of the transformers class `base` (same name) whose __init__ re-applies
    `config.mhc`, so its from_pretrained / from_config build the converted model."""
    if base not in _LOADERS:
        def __init__(self, config, *args, **kwargs):
            base.__init__(self, config, *args, **kwargs)
            settings = getattr(config, "mhc", None)
            if settings:
                apply_settings(self, settings, impl=getattr(type(self), "_mhc_impl", "auto"))

        def __reduce_ex__(self, protocol):
            # made at run time, so pickle cannot find it by name: rebuild it from `base`
            return _new_loaded, (base,), self.__getstate__()

        _LOADERS[base] = type(base.__name__, (base,), {"__init__": __init__, "__reduce_ex__": __reduce_ex__,
                                                      "__module__": __name__})
    return _LOADERS[base]


def _new_loaded(base: type) -> nn.Module:
    """An empty converted_class(base) instance (its state is set by pickle afterwards)."""
    cls = converted_class(base)
    return cls.__new__(cls)


def load_converted(path: str | os.PathLike, *, impl: str = "auto", **kwargs):
    """Load a model saved after `convert` / `inject` (a save_pretrained directory),
    history mixing (`inject(..., history=K)`) included; a torch.Generator given to
    stochastic history mixing is not saved (the loaded model draws from torch's global RNG).

    kwargs go to `from_pretrained` (dtype, device_map, ...). The class is the one named
    in config.json's `architectures`, looked up in transformers.
    """
    import transformers

    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"load_converted: expected the path of a save_pretrained directory, got {type(path).__name__}")
    config_path = os.path.join(os.fspath(path), "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"load_converted: no config.json in {os.fspath(path)!r}")
    with open(config_path) as fh:
        raw = json.load(fh)
    if not raw.get("mhc"):
        raise ValueError(f"load_converted: {config_path} has no 'mhc' entry; was the model converted before saving?")
    given = kwargs.get("config")
    if isinstance(given, (str, os.PathLike)):
        given = transformers.AutoConfig.from_pretrained(given)
        kwargs["config"] = given
    if isinstance(given, transformers.PretrainedConfig) and not getattr(given, "mhc", None):
        # from_pretrained builds the model from this config: without 'mhc' the unconverted model,
        # which would drop the saved mixing as unexpected tensors
        raise ValueError("load_converted: the config passed to load_converted has no 'mhc' entry, so the model "
                         f"built from it would not be converted; pass {config_path}'s own config "
                         "(AutoConfig.from_pretrained(path) keeps 'mhc') or set config.mhc from it")
    arch = (raw.get("architectures") or [None])[0]
    base = getattr(transformers, arch, None) if arch else None
    if base is None:
        raise ValueError(f"load_converted: config.json names architecture {arch!r}, which transformers does not have")
    cls = converted_class(base)
    want_info = kwargs.pop("output_loading_info", False)
    # impl belongs to this load only: the class is shared by every model of this architecture
    cls._mhc_impl = impl
    try:
        model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs)
    finally:
        del cls._mhc_impl
    # ignore_mismatched_sizes=True leaves mismatched tensors uninitialised as well
    absent = [*info.get("missing_keys", ()), *(m[0] if isinstance(m, (tuple, list)) else m
                                               for m in info.get("mismatched_keys", ()))]
    restored = warm_start_missing(model, absent)
    if restored:
        warnings.warn(f"load_converted: {os.fspath(path)!r} holds no values for {len(restored)} mHC parameters "
                      f"({restored[:4]}{' ...' if len(restored) > 4 else ''}); they start at the exact warm start "
                      "(as after convert), not at trained values", stacklevel=2)
    return (model, info) if want_info else model


def warm_start_missing(model: nn.Module, missing) -> list[str]:
    """Give every MHC / StreamHead parameter named in `missing` (from_pretrained's
    missing_keys, which transformers leaves uninitialised memory) its warm-start value;
    returns the names it set."""
    missing, done = set(missing), []
    for name, module in model.named_modules():
        if isinstance(module, MHC):
            fresh = MHC(nn.Identity(), module.n, module.dim, variant=module.variant, **module._cfg)
        elif isinstance(module, StreamHead):
            fresh = StreamHead(module.n, module.dim, rms_eps=module.rms_eps, eps=module.eps)
        else:
            continue
        for pname, param in module.named_parameters(recurse=False):
            full = f"{name}.{pname}" if name else pname
            if full in missing:
                with torch.no_grad():
                    param.copy_(getattr(fresh, pname).to(param.device, param.dtype))
                done.append(full)
    return done
