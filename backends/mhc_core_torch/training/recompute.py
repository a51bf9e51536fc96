"""Memory: store only each block-of-layers' input stream, recompute the rest in backward.

Paper §4.3 ("recomputing"): the n-stream residual state x [..., n, C] is n times wider
than a plain residual stream, so keeping every layer's intermediate activations for the
backward pass is the memory problem. Splitting the L mixing layers into blocks of
L_r consecutive layers and keeping only each block's input stream x_{l0} costs about
`n*C*ceil(L/L_r)` (the kept inputs) `+ (n+2)*C*L_r` (one block's recomputed
activations in the mHC kernels) per token, minimised near

    L_r* = sqrt(n * L / (n + 2))                                (`paper_block_size`)

Here each block runs under `torch.utils.checkpoint(..., use_reentrant=False)`: its
forward keeps only the block input, and backward reruns the block (mixing *and* the
wrapped attention/MLP layers, so this also frees the layers' own activations) before
differentiating it. The recomputation runs the same ops on the same inputs, so the
gradients are bitwise those of the plain run on a deterministic backend (CPU; on CUDA
with deterministic algorithms). torch.compile, DDP and FSDP2 compose with it.

    x, recorded = run_layers(model.mixing_layers(), x, block=paper_block_size(4, 96))
"""
from __future__ import annotations

import contextlib
from typing import Callable, Sequence

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from mhc_core import checks
from mhc_core.recompute import block_size, paper_block_size, resolve_block  # noqa: F401 (re-exported)


def _segment(layers: Sequence[Callable], record_rows: int):
    """A pure function x -> (x_out, *inputs[:rows]) applying `layers` in order.

    Pure (no side effects) so that checkpoint's recomputation in backward does not record twice.
    """

    def run(x):
        recorded = []
        for layer in layers:
            if record_rows:
                recorded.append(x[:record_rows].detach())  # [rows, T, n, C]
            x = layer(x)
        return (x, *recorded)

    return run


def _buffer_slots(layers: Sequence[Callable]) -> list[tuple[nn.Module, str]]:
    """(module, name) of every buffer inside the layers that are modules (BatchNorm's
    running statistics, ...)."""
    return [(m, name) for layer in layers if isinstance(layer, nn.Module)
            for m in layer.modules() for name, b in m.named_buffers(recurse=False) if b is not None]


@contextlib.contextmanager
def _buffers_kept(slots: list[tuple[nn.Module, str]]):
    """The buffers as they were on entry when the block exits, whatever it did to them:
    the recomputation in backward must not update running statistics a second time."""
    saved = [(m, name, m._buffers[name], m._buffers[name].detach().clone()) for m, name in slots]
    try:
        yield
    finally:
        with torch.no_grad():
            for m, name, tensor, values in saved:
                m._buffers[name] = tensor  # the object the forward left, should the block have replaced it
                tensor.copy_(values)


def run_layers(layers: Sequence[Callable], x: torch.Tensor, *, block: int = 0,
               record_rows: int = 0) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """Apply `layers` in order to x [..., n, C]; returns (output, recorded inputs).

    block = 0 (or None): plain forward (every activation kept for backward). block = k >= 1: layers
    run in groups of k under non-reentrant checkpointing; only each group's input is kept.
    The recomputation draws the forward's random numbers (checkpoint's preserve_rng_state) and
    leaves the layers' buffers as the forward left them (running statistics update once).
    record_rows > 0: also return each layer's input for the first `record_rows` batch rows,
    detached (the depth sweep's metrics), identical with or without recompute.
    """
    layers, block = list(layers), block_size(block)
    record_rows = checks.integer(record_rows, "record_rows", minimum=0)
    if not block or not torch.is_grad_enabled():
        out = _segment(layers, record_rows)(x)
        return out[0], list(out[1:])
    recorded: list[torch.Tensor] = []
    for start in range(0, len(layers), block):
        group = layers[start:start + block]
        slots = _buffer_slots(group)
        keep = {"context_fn": lambda slots=slots: (contextlib.nullcontext(), _buffers_kept(slots))} if slots else {}
        out = checkpoint(_segment(group, record_rows), x, use_reentrant=False, **keep)
        x, recorded = out[0], recorded + list(out[1:])
    return x, recorded


def saved_activation_bytes(fn: Callable[[], torch.Tensor], exclude=()) -> tuple[torch.Tensor, int]:
    """(fn(), bytes autograd holds for backward when fn returns).

    Counts each distinct storage once among the tensors saved for backward (seen through
    `torch.autograd.graph.saved_tensors_hooks`), skipping the storages of `exclude`
    (pass `model.parameters()`: weights are not activations). Under non-reentrant
    checkpointing a block's own saved tensors go to checkpoint's inner hooks and are
    dropped; what it keeps (the block input) is seen here. Not counted: temporaries that
    live only inside forward, and the recomputed block during backward (one block's
    worth at a time, on top of this).
    """
    skip = {p.untyped_storage().data_ptr() for p in exclude}
    seen: dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        seen[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return out, sum(b for ptr, b in seen.items() if ptr not in skip)
