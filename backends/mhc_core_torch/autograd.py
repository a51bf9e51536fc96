"""Autograd glue: one mHC step as three `torch.autograd.Function` nodes.

    pre [..., n], post [..., n], res [..., n, n] = Coefficients.apply(x [..., n, C], phi, bias, alpha, ...)
    h [..., C]      = PreAggregate.apply(x, pre)
    out [..., n, C] = PostResidual.apply(x, y, post, res)

Forward and backward are mhc_core's (`coefficients_forward` / `coefficients_backward`,
`pre_aggregate` / `pre_aggregate_backward`, `post_residual` / `post_residual_backward`:
the math and its derivative, written once on the array API); this file only registers
them, so autograd records three nodes instead of the ~150 small ops of the projection, the
gates and 20 Sinkhorn rounds, and their many saved temporaries.

Where the arrays run. On the CPU, eager torch pays a per-op dispatch cost that dominates
the coefficients' dozens of ops on tiny [n, n, T] arrays, and its batched matmul over
thousands of 4 x 4 (or 1 x 4) matrices runs at a fraction of memory bandwidth; numpy does
both several times faster (benchmarks/results/cpu_ratios.md). Eager CPU calls therefore
run the same mhc_core functions on numpy views of the tensors (zero-copy in float32 /
float64; other dtypes are converted to the compute dtype, float32, first). Set
`NUMPY_MAX_ELEMENTS = 0` to keep them on torch. Under `torch.compile` (and on any other
device) they run on torch tensors, so the graph is traced and fused as usual.

Under forward-mode AD (`torch.autograd.forward_ad`) and torch.func transforms (grad,
vmap, jvp, jacrev, ...), which these nodes have no rules for, the entry points run
mhc_core's plain torch ops instead (the same math; torch differentiates / batches it).
"""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch
import torch.autograd.forward_ad as _forward_ad

import mhc_core
from mhc_core import checks
from mhc_core.coefficients import coefficients_backward, coefficients_forward
from mhc_core.streams import post_residual_backward, pre_aggregate_backward

# Eager CPU calls whose x has at most this many elements run their math on numpy views.
NUMPY_MAX_ELEMENTS = 1 << 40
_NUMPY_OPS = mhc_core.namespace(np.zeros(1))
mhc_core.namespace(torch.zeros(1))  # the torch namespace built eagerly: it registers the shim's
# custom op (mhc_core.xp._register_own_buffer) before torch.compile traces anything


_PLAIN_TENSORS = (torch.Tensor, torch.nn.Parameter)


def _numpy_viewable(t) -> bool:
    """Whether `.numpy()` takes t: a plain tensor (not a subclass: fake tensors, DTensor,
    ...) without the negative bit (`z.conj().imag` of a complex z is such a float view)."""
    return type(t) in _PLAIN_TENSORS and not t.is_neg()


def _runs_on_numpy(x: torch.Tensor, *others: torch.Tensor) -> bool:
    """Whether an eager call on x (and the other tensors it reads) runs on numpy views: x
    on the CPU with at most NUMPY_MAX_ELEMENTS elements, not under torch.compile, and every
    tensor one `.numpy()` takes (`_numpy_viewable`)."""
    # is_compiling first: traced, x's size is symbolic and the size test would add a guard
    # on it (an exported program with a dynamic token count would refuse T > 2**40 / (n*C))
    return (not torch.compiler.is_compiling() and x.device.type == "cpu" and x.numel() <= NUMPY_MAX_ELEMENTS
            and all(_numpy_viewable(t) for t in (x, *others)))


def _transformed() -> bool:
    """Whether a forward-mode AD level or a torch.func transform is active (never true
    while torch.compile traces: dynamo handles those transforms itself)."""
    if torch.compiler.is_compiling():
        return False
    return _forward_ad._current_level >= 0 or torch._C._functorch.peek_interpreter_stack() is not None


def _np(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A numpy view of an activation (zero-copy when it already has `dtype`)."""
    return t.detach().to(dtype).numpy()


def _np_param(t: torch.Tensor, dtype: torch.dtype) -> np.ndarray:
    """A numpy copy of a parameter: `.numpy()` marks a tensor's storage non-resizable for
    good, and FSDP frees and re-gathers parameter storage by resizing it."""
    return t.detach().to(dtype).clone().numpy()


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _unshared(out: np.ndarray, saved: tuple) -> np.ndarray:
    """`out` as a contiguous array sharing no memory with the saved arrays: a copy where
    it is a view of one (res is a view of Sinkhorn's last saved iterate for one token or
    n = 1). Saved and output tensors made by `torch.from_numpy` have separate version
    counters, so an in-place change of a shared output would silently alter what the
    backward reads."""
    out = np.ascontiguousarray(out)
    if out.base is None and not any(out is a for a in saved):  # owns its memory, not saved itself
        return out
    if any(np.may_share_memory(out, a) for a in saved):
        return out.copy()
    return out


def _tensors(arrays, dtypes, owned=None) -> tuple:
    """numpy results -> tensors in the given dtypes (zero-copy where the dtype matches);
    where `owned[i]` is true, in torch-owned memory (see `_parameter_flags`)."""
    owned = owned or (False,) * len(dtypes)
    tensors = (torch.from_numpy(np.ascontiguousarray(a)).to(dt) for a, dt in zip(arrays, dtypes))
    return tuple(_torch_owned(t) if own else t for t, own in zip(tensors, owned))


def _parameter_flags(*tensors) -> tuple:
    """Which inputs are parameters that require grad: autograd may keep the gradient
    tensor itself as a parameter's .grad, which must then be in torch-owned memory (FSDP
    resizes a parameter gradient's storage; a numpy-backed one cannot be resized). Other
    inputs, activations and plain leaf tensors alike, keep the zero-copy gradient: a copy
    of an x-sized gradient would be a pass over memory per node."""
    return tuple(isinstance(t, torch.nn.Parameter) and t.requires_grad for t in tensors)


def _torch_owned(t: torch.Tensor) -> torch.Tensor:
    """t itself when its storage is torch's (resizable), else a copy in torch memory."""
    return t if t.untyped_storage().resizable() else t.clone()


class Coefficients(torch.autograd.Function):
    """(pre, post, res) of `mhc_core.coefficients`, with `mhc_core.coefficients_backward`
    as the backward. `cfg`: iters, rms_eps, pre_eps, sinkhorn_eps, post_scale."""

    @staticmethod
    def forward(ctx, x, phi, bias, alpha, variant: str, cfg: dict):
        ctx.variant, ctx.cfg = variant, cfg
        ctx.dtypes = (x.dtype, phi.dtype, bias.dtype, alpha.dtype)
        ctx.on_numpy = _runs_on_numpy(x, phi, bias, alpha)
        ctx.param_inputs = _parameter_flags(x) if ctx.on_numpy else None
        # the inputs first (x also so an in-place change is caught; all four for a gradient
        # of the gradient, see backward), then what coefficients_backward needs
        if ctx.on_numpy:
            cdt = ctx.cdt = _compute_dtype(x)
            outs, saved = coefficients_forward(_NUMPY_OPS, _np(x, cdt), *(_np_param(t, cdt) for t in (phi, bias, alpha)),
                                               variant=variant, **cfg)
            # saved as tensors (zero-copy) so saved-tensor hooks see them (checkpointing drops
            # them, memory accounting counts them)
            ctx.save_for_backward(x, phi, bias, alpha, *(torch.from_numpy(np.asarray(a)) for a in saved))
            return tuple(torch.from_numpy(_unshared(o, saved)) for o in outs)
        (pre, post, res), saved = coefficients_forward(mhc_core.namespace(x), x, phi, bias, alpha, variant=variant,
                                                       **cfg)
        ctx.save_for_backward(x, phi, bias, alpha, *saved)
        # res is a view of Sinkhorn's last iterate, which a compiled graph may save for the
        # backward: inductor then returned res as a view of the saved buffer, with its own
        # version counter, so an in-place change of res silently altered the gradient. A
        # contiguous copy has a layout of its own (a plain clone is dropped as a no-op).
        return pre, post, res.clone(memory_format=torch.contiguous_format)

    @staticmethod
    def backward(ctx, dpre, dpost, dres):
        if torch.is_grad_enabled() or _batched(dpre, dpost, dres):  # see _spec_grads
            spec = lambda *a: mhc_core.coefficients(*a, variant=ctx.variant, **ctx.cfg)
            return (*_spec_grads(ctx, spec, ctx.saved_tensors[:4], (dpre, dpost, dres)), None, None)
        kw = {"variant": ctx.variant, "sinkhorn_eps": ctx.cfg["sinkhorn_eps"], "post_scale": ctx.cfg["post_scale"]}
        if ctx.on_numpy and all(_numpy_viewable(g) for g in (dpre, dpost, dres)):
            saved = tuple(t.numpy() for t in ctx.saved_tensors[4:])  # [0] is x: raises if modified in place
            cots = (_np(g, ctx.cdt) for g in (dpre, dpost, dres))
            dx, *param_grads = coefficients_backward(_NUMPY_OPS, saved, *cots, **kw)
            # parameter gradients in torch-owned memory: FSDP and optimizers resize / reuse
            # a .grad's storage, which a numpy-backed tensor does not allow
            grads = list(_tensors([dx], [ctx.cdt], ctx.param_inputs)) + [torch.tensor(g) for g in param_grads]
        else:
            grads = coefficients_backward(mhc_core.namespace(dpre), ctx.saved_tensors[4:], dpre, dpost, dres, **kw)
        return (*(g.to(dt) for g, dt in zip(grads, ctx.dtypes)), None, None)


def _batched(*grads) -> bool:
    """Whether the incoming gradients carry a batch axis of autograd.grad(is_grads_batched=True)
    (torch.autograd.functional.jacobian / hessian with vectorize=True): legacy-vmap tensors,
    which numpy cannot view and several ops of the explicit backward have no batching rule for.
    Never while torch.compile traces (dynamo cannot trace the test; it batches nothing there)."""
    if torch.compiler.is_compiling():
        return False
    return any(g is not None and torch._C._functorch.is_legacy_batchedtensor(g) for g in grads)


def _spec_grads(ctx, spec: Callable, inputs: tuple, cotangents: tuple) -> tuple:
    """The node's input gradients by torch autograd through `spec` (mhc_core's plain ops,
    recomputed on the saved inputs), for what the explicit backward cannot do: a gradient
    that must itself be differentiable (create_graph=True, grad mode on in backward) and
    batched gradients (`_batched`). Only the inputs that require grad are differentiated
    (autograd refuses the others: data x, frozen mixing weights); None for the others.

    The recomputation reads fresh aliases (`view_as`) of the inputs and differentiates w.r.t.
    them: w.r.t. the inputs themselves, autograd would also follow paths from one input back
    to another (a weight-tied module's phi is upstream of its second call's x) and count
    them here as well as in the outer backward. The aliases keep the result differentiable
    w.r.t. the inputs for create_graph=True."""
    needs = ctx.needs_input_grad[: len(inputs)]
    create_graph = torch.is_grad_enabled()
    with torch.enable_grad():
        aliases = [t.view_as(t) if need else t for t, need in zip(inputs, needs)]
        wanted = [a for a, need in zip(aliases, needs) if need]
        found = iter(torch.autograd.grad(spec(*aliases), wanted, cotangents, create_graph=create_graph,
                                         allow_unused=True))
    grads = [next(found) if need else None for need in needs]
    return tuple(None if not need else torch.zeros_like(t) if g is None else g.to(t.dtype)
                 for g, t, need in zip(grads, inputs, needs))


class PreAggregate(torch.autograd.Function):
    """h = `mhc_core.pre_aggregate(x, pre)`, backward `mhc_core.pre_aggregate_backward`."""

    @staticmethod
    def forward(ctx, x, pre):
        ctx.save_for_backward(x, pre)
        on_numpy = _runs_on_numpy(x, pre)
        ctx.param_inputs = _parameter_flags(x, pre) if on_numpy else None
        if on_numpy:
            cdt = _compute_dtype(x)
            return _tensors([mhc_core.pre_aggregate(_np(x, cdt), _np(pre, cdt))], [x.dtype])[0]
        return mhc_core.pre_aggregate(x, pre)

    @staticmethod
    def backward(ctx, dh):
        x, pre = ctx.saved_tensors
        if _batched(dh):
            return _spec_grads(ctx, mhc_core.pre_aggregate, (x, pre), (dh,))
        if _runs_on_numpy(x, pre, dh) and not torch.is_grad_enabled():  # create_graph=True: torch ops below
            cdt = _compute_dtype(x)
            grads = pre_aggregate_backward(_NUMPY_OPS, _np(x, cdt), _np(pre, cdt), _np(dh, cdt))
            return _tensors(grads, (x.dtype, pre.dtype), ctx.param_inputs)
        dx, dpre = pre_aggregate_backward(mhc_core.namespace(x), x, pre, dh)
        return dx.to(x.dtype), dpre.to(pre.dtype)


class PostResidual(torch.autograd.Function):
    """out = `mhc_core.post_residual(x, y, post, res)`, backward `post_residual_backward`."""

    @staticmethod
    def forward(ctx, x, y, post, res):
        ctx.save_for_backward(x, y, post, res)
        on_numpy = _runs_on_numpy(x, y, post, res)
        ctx.param_inputs = _parameter_flags(x, y, post, res) if on_numpy else None
        if on_numpy:
            cdt = _compute_dtype(x)
            return _tensors([mhc_core.post_residual(*(_np(a, cdt) for a in (x, y, post, res)))], [x.dtype])[0]
        return mhc_core.post_residual(x, y, post, res)

    @staticmethod
    def backward(ctx, dout):
        saved = ctx.saved_tensors
        if _batched(dout):
            return _spec_grads(ctx, mhc_core.post_residual, saved, (dout,))
        if _runs_on_numpy(*saved, dout) and not torch.is_grad_enabled():  # create_graph=True: torch ops below
            cdt = _compute_dtype(saved[0])
            grads = post_residual_backward(_NUMPY_OPS, *(_np(a, cdt) for a in saved), _np(dout, cdt))
            return _tensors(grads, [a.dtype for a in saved], ctx.param_inputs)
        dx, dy, dpost, dres = post_residual_backward(mhc_core.namespace(dout), *saved, dout)
        # dpost and dres are views of one [..., n, n+1] product; a leaf keeps a contiguous
        # gradient as its .grad, so for n = 1 without leading axes post.grad and res.grad
        # shared one storage (freeing one, as FSDP does, freed the other). dpost [..., n]
        # gets a buffer of its own (a plain clone is dropped by torch.compile as a no-op).
        dpost = dpost.clone(memory_format=torch.contiguous_format)
        return tuple(g.to(a.dtype) for g, a in zip((dx, dy, dpost, dres), saved))


def coefficients(x, phi, bias, alpha, *, variant: str = "mhc", **cfg):
    """`mhc_core.coefficients` (same checks, same numbers) recorded as one autograd node.
    'mhc-lite' has no explicit backward: torch's autograd differentiates mhc_core's ops, as
    it does for every variant under forward-mode AD or a torch.func transform."""
    variant, full = checks.coefficient_call(mhc_core.namespace(x, phi, bias, alpha), x, phi, bias, alpha,
                                            variant, cfg)
    if variant == "mhc-lite" or _transformed():
        return mhc_core.coefficients(x, phi, bias, alpha, variant=variant, **full)
    return Coefficients.apply(x, phi, bias, alpha, variant, full)


def pre_aggregate(x, pre):
    """`mhc_core.pre_aggregate` (same checks) as one autograd node: x [..., n, C] -> [..., C]."""
    checks.pre_aggregate_inputs(mhc_core.namespace(x, pre), x, pre)
    if _transformed():  # forward-mode AD / torch.func: the plain ops (module doc)
        return mhc_core.pre_aggregate(x, pre)
    return PreAggregate.apply(x, pre)


def post_residual(x, y, post, res):
    """`mhc_core.post_residual` (same checks) as one autograd node -> [..., n, C]."""
    checks.post_residual_inputs(mhc_core.namespace(x, y, post, res), x, y, post, res)
    if _transformed():  # forward-mode AD / torch.func: the plain ops (module doc)
        return mhc_core.post_residual(x, y, post, res)
    return PostResidual.apply(x, y, post, res)


def step(x, f: Callable, phi=None, bias=None, alpha=None, *, variant: str = "mhc", **cfg):
    """`mhc_core.step` as three autograd nodes (coefficients, pre-aggregate, post +
    residual) around the layer: x [..., n, C] -> [..., n, C]."""
    if checks.variant(variant) == "residual":
        return mhc_core.residual_step(x, f)
    checks.layer(f)
    pre, post, res = coefficients(x, phi, bias, alpha, variant=variant, **cfg)
    y = f(pre_aggregate(x, pre))
    checks.layer_output(x, y)
    return post_residual(x, y, post, res)
