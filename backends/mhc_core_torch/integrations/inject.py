"""`inject(model, target, n)`: turn every matching residual block of any model into mHC blocks.

Matching blocks that sit next to each other in one `nn.ModuleList` / `nn.Sequential`
(an encoder or decoder stack) form one segment: its first block expands the hidden
state into n streams, its last reduces them (mean, or a learned StreamHead), and the
streams flow through every block in between. A matching block on its own is a segment
of one. The rest of the model sees [B, T, C] as before.

The settings are written to `model.config.mhc` (when the model has a config) so that a
saved model can be rebuilt by `mhc_core_torch.load_converted` (see convert.py): format 1
holds the stream conversion ("n", "variant", "reduce", "config", "segments"); a model that
`inject(..., history=K)` wrapped is written as format 2, which adds "history": the wrapped
modules and their options, in the order they were applied relative to the segments.
"""
from __future__ import annotations

import copy
import warnings

from torch import nn

import mhc_core
from mhc_core import checks

from .history_inject import HistoryInjected, history_settings, inject_history
from .blocks import REDUCTIONS, convert_block, is_converted
from .recipes import RECIPES, Recipe, recipe_for
from ..wrappers import compiled_inner

FORMAT_VERSION = 1  # stream conversion only: what readers of format 1 rebuild
HISTORY_FORMAT = 2  # adds "history" entries
FORMATS = (FORMAT_VERSION, HISTORY_FORMAT)


def check_model(model, caller: str) -> None:
    """TypeError naming what was given unless `model` is an nn.Module instance (a class, a
    path or a config is the usual mistake: from_pretrained builds the model first)."""
    if isinstance(model, nn.Module):
        return
    given = f"the class {model.__name__}" if isinstance(model, type) else type(model).__name__
    raise TypeError(f"{caller}: expected a torch.nn.Module instance (e.g. the model "
                    f"AutoModelForCausalLM.from_pretrained returns), got {given}")


def _matcher(target):
    if isinstance(target, str):
        return lambda m: type(m).__name__ == target
    if isinstance(target, type) or (isinstance(target, tuple) and all(isinstance(t, type) for t in target)):
        return lambda m: isinstance(m, target)
    raise TypeError(f"target must be a class name (str) or a module class, got {target!r}")


def _segments(model: nn.Module, names: list[str]) -> list[list[str]]:
    """Group matched module names into runs of consecutive entries of one ModuleList / Sequential."""
    modules = dict(model.named_modules())
    segments: list[list[str]] = []
    prev_parent, prev_index = None, None
    for name in names:
        parent, _, last = name.rpartition(".")
        in_list = isinstance(modules.get(parent), (nn.ModuleList, nn.Sequential)) and last.isdigit()
        index = int(last) if in_list else None
        if in_list and segments and parent == prev_parent and index == prev_index + 1:
            segments[-1].append(name)
        else:
            segments.append([name])
        prev_parent, prev_index = (parent, index) if in_list else (None, None)
    return segments


def convert_segments(model: nn.Module, segments: list[list[str]], recipe: Recipe | None, *, n: int,
                     variant: str, reduce: str, impl: str, init: dict | None, cfg: dict) -> list[dict]:
    """Convert each segment's blocks; returns the segments as recorded in config.mhc."""
    modules = dict(model.named_modules())
    recorded = []
    for segment in segments:
        blocks = [modules[name] for name in segment]
        used = recipe or recipe_for(blocks[0])
        scales = []
        for name, block in zip(segment, blocks):
            if not used.matches(block):
                raise ValueError(f"{name} ({type(block).__name__}) does not have the structure of recipe {used.name!r}")
            scales.append(_branch_scale(name, block, used))
        for i, (name, block) in enumerate(zip(segment, blocks)):
            convert_block(block, used, n=n, variant=variant, init=init, impl=impl, position=name,
                          expand=(i == 0), reduce=reduce if i == len(blocks) - 1 else None,
                          branch_scale=scales[i], **cfg)
        untested = sorted({type(b).__name__.removeprefix("MHC") for b in blocks} - set(used.tested))
        if untested:
            warnings.warn(f"mHC: {untested} converted with recipe {used.name!r} by structure only (tested on "
                          f"{list(used.tested)}); check the warm start, e.g. compare logits with the original",
                          stacklevel=3)
        recorded.append({"recipe": used.name, "blocks": segment})
    return recorded


def _branch_scale(name: str, block: nn.Module, recipe: Recipe) -> float | None:
    """The factor the block's forward puts on each branch output (Granite's
    residual_multiplier), None for a plain residual add; ValueError naming the statements
    when the forward does something the recipe does not reproduce."""
    if recipe.read_forward is None:
        return None
    reading = recipe.read_forward(type(block))
    if reading.problems:
        raise ValueError(
            f"{name} ({type(block).__name__}) has the children of recipe {recipe.name!r}, but its forward "
            f"does more than the plain residual adds the recipe reproduces: {list(reading.problems)}. "
            "Converting it would change the model's outputs; write a recipe for this block "
            "(mhc_core_torch.integrations.recipes) or wrap its sub-layers with MHCSequential.")
    return float(getattr(block, "residual_multiplier")) if reading.scaled else None


def check_settings(n, variant, reduce, cfg: dict) -> tuple[int, dict]:
    """Validate the shared arguments; returns (n as an int, the full MHCConfig as a dict)."""
    n = checks.streams(n)
    checks.variant(variant)
    if variant == "residual" and n != 1:
        raise ValueError(f"variant 'residual' keeps one stream: n must be 1, got n={n}")
    if reduce not in REDUCTIONS:
        raise ValueError(f"reduce must be one of {REDUCTIONS}, got {reduce!r}")
    known = sorted(mhc_core.MHCConfig().as_dict())
    unknown = set(cfg) - set(known)
    if unknown:
        raise TypeError(f"unknown mHC settings {sorted(unknown)}; expected some of {known}")
    # Integrations default to sinkhorn_eps = 0 (log-domain Sinkhorn, exactly doubly
    # stochastic): with eps = 1e-6 every column of res sums to 1 - ~1e-6, the residual
    # shrinks by that much per step, and a 24-layer Llama's logits drift by 1.5e-4 at the
    # warm start (1.2e-5 with eps = 0). Pass sinkhorn_eps=1e-6 for DeepSeek-V4's value.
    return n, mhc_core.MHCConfig(**{"sinkhorn_eps": 0.0, **cfg}).as_dict()


def _listed_blocks(segments) -> list[str]:
    return [b for segment in segments for b in segment.get("blocks", [])]


def _listed_wrapped(entries) -> list[str]:
    return [name for entry in entries for name in entry.get("modules", [])]


def _converted_at(modules: dict, name: str) -> bool:
    """Whether the block at `name` is converted (seen through a history wrap around it)."""
    module = modules.get(name)
    module = module.module if isinstance(module, HistoryInjected) else module
    return module is not None and is_converted(module)


def _converted_here(model: nn.Module, settings: dict, just_converted=(), just_wrapped=()) -> bool:
    """Whether everything `settings` (a config.mhc) lists was done to this model before
    the blocks in `just_converted` were converted / the modules in `just_wrapped` were
    history-wrapped: every listed block is converted, every listed module is wrapped, and
    none of them is one done just now (converting or wrapping refuses a module done already,
    so an entry naming one done just now is not this model's earlier record but one it was
    built or loaded with, e.g. a converted checkpoint read with the plain class)."""
    modules = dict(model.named_modules())
    blocks = _listed_blocks(settings.get("segments", []))
    wrapped = _listed_wrapped(settings.get("history", []))
    return (bool(blocks or wrapped) and not set(blocks) & set(just_converted)
            and not set(wrapped) & set(just_wrapped)
            and all(_converted_at(modules, name) for name in blocks)
            and all(isinstance(modules.get(name), HistoryInjected) for name in wrapped))


def _earlier_record(model: nn.Module, just_converted=(), just_wrapped=()):
    """(this model's earlier config.mhc or {}, the config to write to), or (None, None)
    for a model without a config."""
    config = getattr(model, "config", None)
    if config is None:
        return None, None
    previous = getattr(config, "mhc", None) or {}
    if not (previous and _converted_here(model, previous, just_converted, just_wrapped)):
        # a first conversion: the config object may be shared with other models (two models
        # built from one config, an original and its copy.copy, a model built from a
        # converted model's config); give this model its own before writing config.mhc,
        # and ignore an entry another model or a loaded checkpoint put there
        previous, config = {}, _own_config(model)
    return previous, config


def _own_config(model: nn.Module):
    """A copy of model.config, set on every submodule that held the shared one."""
    shared = model.config
    own = copy.deepcopy(shared)
    for module in model.modules():
        if getattr(module, "config", None) is shared:
            module.config = own
    return own


def record(model: nn.Module, *, n, variant, reduce, cfg, segments) -> None:
    """Append the conversion to model.config.mhc (used by load_converted to rebuild the model)."""
    previous, config = _earlier_record(model, just_converted=_listed_blocks(segments))
    if config is None:
        return
    stream = {"n": n, "variant": variant, "reduce": reduce, "config": cfg}
    if previous.get("segments") and any(previous.get(k) != v for k, v in stream.items()):
        raise ValueError(f"model was already converted with different settings {previous}")
    config.mhc = {**previous, "format": previous.get("format", FORMAT_VERSION), **stream,
                  "segments": list(previous.get("segments", [])) + segments}
    # from_pretrained(dtype=bf16) keeps these float32; device_map must not split a block.
    for attr, add in (("_keep_in_fp32_modules_strict", {"attn_mhc", "mlp_mhc", "mhc_head"}),
                      ("_no_split_modules", {type(m).__name__ for m in model.modules() if is_converted(m)})):
        current = getattr(model, attr, None)
        if isinstance(current, set):
            current.update(add)


def record_history(model: nn.Module, wrapped: list[str], options: dict) -> None:
    """Append a history injection (the wrapped modules' names and their options) to
    model.config.mhc, so load_converted wraps the same modules again."""
    previous, config = _earlier_record(model, just_wrapped=wrapped)
    if config is None:
        return
    entry = {"modules": wrapped, "options": options, "after_segments": len(previous.get("segments", []))}
    config.mhc = {**previous, "format": HISTORY_FORMAT, "history": list(previous.get("history", [])) + [entry]}


def inject(model: nn.Module, target, n: int = 4, *, variant: str = "mhc", reduce: str = "mean",
           impl: str = "auto", init: dict | None = None, recipe: str | None = None,
           history: int | None = None, **cfg) -> nn.Module:
    """Make every module matching `target` (class name or class) an mHC block, in place.

    n: streams; variant: 'mhc' | 'hc' | 'residual' (n=1); reduce: 'mean' | 'head' at the
    end of each segment; impl: 'auto' | 'reference' | 'triton'; init: one
    {'phi','bias','alpha'} dict for every step (default: the exact warm start of
    mhc_core.init_params); recipe: force a recipe name (default: found by structure);
    cfg: MHCConfig fields (iters, rms_eps, pre_eps, sinkhorn_eps, post_scale).
    history: K for history skip mixing instead of streams (history_inject.py): every
    matching module m becomes m(x) + a mix of its last K outputs; cfg then holds the
    HistorySequential options (constraint, temperature, epsilon, gate, prune_threshold,
    stochastic, detach_history, mixing, iters, sinkhorn_eps, generator), init names the
    skip logits' init ('identity' | 'uniform'); n / variant / reduce / impl / recipe must keep
    their defaults (a ValueError names any that do not: they have no meaning there).
    Returns `model` (a torch.compile wrapper as given; the model inside it is converted).
    """
    check_model(model, "inject")
    wrapper, model = model, compiled_inner(model)
    if history is not None:
        from mhc_core import history as hist

        hist.check_history(history)
        stream_only = {"n": n != 4, "variant": variant != "mhc", "reduce": reduce != "mean",
                       "impl": impl != "auto", "recipe": recipe is not None}
        given = sorted(name for name, differs in stream_only.items() if differs)
        if given:
            raise ValueError(f"inject(history={history}) mixes earlier states of one stream; the stream "
                             f"settings {given} do not apply to it (drop them, or drop history for mHC)")
        if init is not None:  # the skip logits' init name ('identity' | 'uniform')
            cfg["init"] = init
        wrapped = inject_history(model, _matcher(target), history, target, **cfg)
        first = model.get_submodule(wrapped[0])
        record_history(model, wrapped, history_settings(first, init=cfg.get("init", "identity")))
        return wrapper
    n, full_cfg = check_settings(n, variant, reduce, cfg)
    if recipe is not None and recipe not in RECIPES:
        raise ValueError(f"recipe must be one of {sorted(RECIPES)}, got {recipe!r}")
    match = _matcher(target)
    names = [name for name, m in model.named_modules() if match(m) and not is_converted(m)]
    # a converted block is MHC<Original>: it matches a class target (a subclass) or the original's name
    done = [name for name, m in model.named_modules()
            if is_converted(m) and (match(m) or (isinstance(target, str) and type(m)._mhc_base.__name__ == target))]
    if not names and done:
        raise ValueError(f"inject: every module of {model.__class__.__name__} matching target {target!r} is "
                         f"already converted to mHC: {done[:3]}{' ...' if len(done) > 3 else ''}")
    if not names:
        raise ValueError(f"inject: no module of {model.__class__.__name__} matches target {target!r}")
    nested = [b for b in names if any(b.startswith(a + ".") for a in names if a != b)]
    if nested:
        raise ValueError(f"inject: target {target!r} matches modules nested in other matches: {nested[:3]}")
    segments = convert_segments(model, _segments(model, names), RECIPES.get(recipe), n=n, variant=variant,
                                reduce=reduce, impl=impl, init=init, cfg=full_cfg)
    record(model, n=n, variant=variant, reduce=reduce, cfg=full_cfg, segments=segments)
    return wrapper
