"""The array-namespace shim: the one place in mhc_core that knows which library is in use.

`namespace(*arrays)` returns an `Ops` bound to the library of its inputs (numpy, torch,
mlx, anything array-api-compat knows). mhc_core calls only the methods listed in
`SUBSET` and `EXTRAS` below; the conformance suite checks each of them on every backend.

- `SUBSET` is standard array-API (2023.12) functions, called through
  `array_api_compat.array_namespace`.
- `EXTRAS` are functions the standard lacks (sigmoid, rsqrt, logsumexp, softmax) plus
  dtype helpers; each library may bind a native version (torch, mlx) or use the generic,
  overflow-safe composition written here. `normalize` / `normalize_backward` /
  `iterates` let numpy write Sinkhorn's iterates into one preallocated (recycled) array
  and run its backward in place (the same operations, so the same numbers); elsewhere
  they are plain expressions and a list that is stacked.
  `matmul_concat` is a matmul with an operand concatenated along the stream axis; numpy
  runs it a block of tokens at a time, so the concatenated copy never leaves the cache.
  `matmul_concat_t` is the product with such an operand transposed (the backward's
  <dout[o], x[i]> and <dout[o], y> in one array); no library makes the concatenated copy.
  `batched_outer` is a[..., i] * b[..., j] (numpy: einsum, ~1.5x faster than its broadcast
  multiply at [1024, 4, 1024], the same products).
  `matmul_concat_backward` is `matmul_concat`'s gradient: every product reads the output
  gradient, and numpy runs them together a block of tokens at a time, so that gradient
  is read from memory once instead of once per product.
  `stop_gradient` is its input, held constant under the library's autodiff (torch:
  detach, mlx: stop_gradient; numpy has none): for a value the spec's result does not
  depend on, whose derivative terms would only cancel (or overflow first).

MLX: `array_namespace` returns bare `mlx.core`, which lacks `matrix_transpose`, `concat`
and `isdtype`, and has no float64 on the GPU; `_MLXOps` fills those gaps. On the CPU,
MLX's float64 `exp` (and sigmoid / softmax / logsumexp / logaddexp built on it) is only
float32-accurate (~1e-7 relative, 2e-6 at |x| ~ 30; mlx 0.32), so `_MLXOps` computes
float64 exponentials as `power(e, x)` (~1e-15) and builds the extras on that, with the
derivatives taken through MLX's own exp at 0 (MLX's derivative of power(a, x) in x is wrong
from the third order: `_mlx_float64_exp`).

`namespace` asks array_api_compat once per array type and then answers from a dict, so
that code traced by torch.compile meets no `functools.lru_cache` (dynamo warns on each).
"""
from __future__ import annotations

import math

import array_api_compat

SUBSET = (
    "abs", "astype", "broadcast_to", "concat", "cumulative_sum", "exp", "expand_dims", "eye", "isfinite",
    "log", "logaddexp", "matmul", "matrix_transpose", "max", "mean", "min", "reshape", "sort",
    "sqrt", "squeeze", "stack", "sum", "tanh", "where", "zeros_like",
)
EXTRAS = ("sigmoid", "rsqrt", "logsumexp", "softmax", "normalize", "normalize_backward", "iterates",
          "equal_all", "batched_outer", "matmul_concat", "matmul_concat_t", "matmul_concat_backward",
          "stop_gradient")


def concat_operands(fn: str, a, parts) -> list:
    """`parts` as a list, checked for `fn` ('matmul_concat': a [..., p, sum q_i] @
    concat(parts [..., q_i, C]); 'matmul_concat_t': a [..., p, C] @ concat(parts)^T).
    Raises ValueError naming the shapes: no parts, an operand of rank < 2, parts of unequal
    width C (matmul_concat) or unlike a's C (matmul_concat_t), sum q_i unlike a's last axis
    (matmul_concat). Compares sizes without int(), so traced symbolic sizes stay symbolic.
    Leading axes are not compared: callers pass equal ones (libraries differ in what they
    broadcast there)."""
    parts = list(parts)
    if not parts:
        raise ValueError(f"{fn} expects at least one part [..., q_i, C], got an empty list")
    for name, arr in (("a", a), *((f"part {i}", p_) for i, p_ in enumerate(parts))):
        if len(arr.shape) < 2:
            raise ValueError(f"{fn}: {name} must have rank >= 2, got shape {tuple(arr.shape)}")
    if fn == "matmul_concat_t":  # else matmul_concat or its backward
        if any(p_.shape[-1] != a.shape[-1] for p_ in parts):
            raise ValueError(f"{fn}: every part [..., q_i, C] must have a's last axis C = {a.shape[-1]}: "
                             f"{_shapes(a, parts)}")
    else:
        if any(p_.shape[-1] != parts[0].shape[-1] for p_ in parts):
            raise ValueError(f"{fn}: every part [..., q_i, C] must have the same width C: {_shapes(a, parts)}")
        if sum(p_.shape[-2] for p_ in parts) != a.shape[-1]:
            raise ValueError(f"{fn}: a's last axis must be the parts' total rows sum q_i: {_shapes(a, parts)}")
    return parts


def outer_operands(a, b) -> None:
    """ValueError unless a and b both have rank >= 1 (batched_outer: [..., p] and [..., q])."""
    for name, arr in (("a", a), ("b", b)):
        if len(arr.shape) < 1:
            raise ValueError(f"batched_outer: {name} must have shape [..., k] (rank >= 1), "
                             f"got shape {tuple(arr.shape)}")


def backward_operands(a, parts, dout) -> list:
    """`parts` checked as for `matmul_concat(a, parts)`, every part checked to have a's
    leading axes, and dout checked to be that product's shape [..., p, C] with those
    leading axes (ValueError naming the shapes). The leading axes are compared here, not
    left to broadcasting: a gradient has its operand's shape, and a broadcast operand's
    would need a sum over the broadcast axes."""
    parts = concat_operands("matmul_concat_backward", a, parts)
    lead = tuple(a.shape[:-2])
    if any(tuple(p_.shape[:-2]) != lead for p_ in parts):
        raise ValueError(f"matmul_concat_backward: every part [..., q_i, C] must have a's leading axes {lead} "
                         f"(gradients take their operands' shapes, no broadcasting): {_shapes(a, parts)}")
    ok = (len(dout.shape) == len(a.shape) and tuple(dout.shape[:-2]) == lead and dout.shape[-2] == a.shape[-2]
          and dout.shape[-1] == parts[0].shape[-1])
    if not ok:
        raise ValueError(f"matmul_concat_backward: dout must have the product's shape [..., p, C] = "
                         f"[..., {a.shape[-2]}, {parts[0].shape[-1]}] with a's leading axes {lead}, got "
                         f"{tuple(dout.shape)} ({_shapes(a, parts)})")
    return parts


def _shapes(a, parts) -> str:
    return f"a {tuple(a.shape)}, parts {[tuple(p_.shape) for p_ in parts]}"


class Ops:
    """The array functions mhc_core uses, bound to one array library (generic version)."""

    def __init__(self, xp, library: str):
        self.xp = xp
        self.library = library
        for fn in SUBSET:
            if not hasattr(self, fn):
                setattr(self, fn, getattr(xp, fn))

    # --- dtypes -----------------------------------------------------------------------
    @property
    def float32(self):
        return self.xp.float32

    @property
    def float64(self):
        return self.xp.float64

    def is_floating(self, x) -> bool:
        return self.xp.isdtype(x.dtype, "real floating")

    def is_real_number(self, x) -> bool:
        """Real floating or integer (not bool, not complex)."""
        return self.xp.isdtype(x.dtype, ("real floating", "integral"))

    def astype(self, x, dtype):
        """x itself when it already has `dtype` (no copy), else a converted copy."""
        return x if x.dtype == dtype else self.xp.astype(x, dtype)

    def compute_dtype(self, x):
        """float64 stays float64; every other float (bf16, fp16, fp32) computes in float32."""
        return self.float64 if x.dtype == self.float64 else self.float32

    def eye_like(self, x, n: int):
        """An n x n identity with x's dtype, on x's device."""
        return self.xp.eye(n, dtype=x.dtype, device=array_api_compat.device(x))

    def constant_like(self, x, value):
        """A numpy constant `value` as an array of x's library, dtype and device."""
        return self.xp.asarray(value, dtype=x.dtype, device=array_api_compat.device(x))

    # --- extras (generic, overflow-safe compositions) ------------------------------------
    def sigmoid(self, x):
        # e = exp(-|x|) in (0, 1]: 1 / (1 + e) for x >= 0, e / (1 + e) below; never
        # overflows, accurate in both tails, and both branches (and their grads) finite.
        e = self.xp.exp(-self.xp.abs(x))
        den = 1.0 + e
        return self.xp.where(x >= 0, 1.0 / den, e / den)

    def rsqrt(self, x):
        return 1.0 / self.xp.sqrt(x)

    def logsumexp(self, x, axis: int, keepdims: bool = False):
        m = self.xp.max(x, axis=axis, keepdims=True)
        m = self.xp.where(self.xp.isfinite(m), m, self.xp.zeros_like(m))
        out = self.xp.log(self.xp.sum(self.xp.exp(x - m), axis=axis, keepdims=True)) + m
        return out if keepdims else self.xp.squeeze(out, axis=axis)

    def softmax(self, x, axis: int):
        e = self.xp.exp(x - self.xp.max(x, axis=axis, keepdims=True))
        return e / self.xp.sum(e, axis=axis, keepdims=True)

    def normalize(self, m, axis: int, eps: float, out=None):
        """m / (sum(m, axis, keepdims=True) + eps); `out` (from `iterates`) may receive it."""
        return m / (self.sum(m, axis=axis, keepdims=True) + eps)

    def normalize_backward(self, h, m, axis: int, out=None):
        """h - sum(h, axis, keepdims=True) * m (a normalisation's backward in Sinkhorn's
        carried form, `sinkhorn_backward`); `out` (an array the caller owns, h itself
        allowed) may receive it."""
        return h - self.sum(h, axis=axis, keepdims=True) * m

    def stop_gradient(self, x):
        """x, its derivative zero under autodiff; a library without autodiff returns x."""
        return x

    def equal_all(self, a, b) -> bool:
        """True when every element of a equals b's (a NaN equals nothing); a Python bool,
        so on a device it waits for the result: only numpy's Sinkhorn path calls it."""
        return bool(self.xp.all(a == b))

    def batched_outer(self, a, b):
        """a [..., p], b [..., q] -> [..., p, q] with out[..., i, j] = a[..., i] * b[..., j];
        leading axes broadcast. Raises ValueError for an operand of rank 0."""
        outer_operands(a, b)
        return self.expand_dims(a, axis=-1) * self.expand_dims(b, axis=-2)

    def matmul_concat(self, a, parts):
        """a @ concat(parts, axis=-2): a [..., p, q], parts [..., q_i, C] with sum q_i = q
        -> [..., p, C]; a and every part share their leading axes [...].
        Raises ValueError for an empty parts list, an operand of rank < 2, parts of
        different widths C or sum q_i != q."""
        return self.matmul(a, self.concat(concat_operands("matmul_concat", a, parts), axis=-2))

    def matmul_concat_t(self, a, parts):
        """a @ matrix_transpose(concat(parts, axis=-2)): a [..., p, C], parts [..., q_i, C]
        -> [..., p, sum q_i]; a and every part share their leading axes [...]. One product
        per part, their small results concatenated (no copy of the parts).
        Raises ValueError for an empty parts list, an operand of rank < 2 or a part whose
        width is not a's C."""
        parts = concat_operands("matmul_concat_t", a, parts)
        return self.concat([self.matmul(a, self.matrix_transpose(p_)) for p_ in parts], axis=-1)

    def matmul_concat_backward(self, a, parts, dout):
        """The gradients of `matmul_concat(a, parts)` for its output gradient dout [..., p, C]:
        (d_parts, d_a) with d_parts[i] = a[..., :, rows_i]^T @ dout [..., q_i, C] (rows_i: part
        i's columns of a) and d_a = dout @ concat(parts, axis=-2)^T [..., p, sum q_i]; each
        gradient has its operand's shape.
        Raises ValueError where `matmul_concat(a, parts)` would, where a part's leading axes
        are not a's (no broadcasting), or where dout is not the product's shape."""
        return self._matmul_concat_grads(a, backward_operands(a, parts, dout), dout)

    def _matmul_concat_grads(self, a, parts, dout):
        """`matmul_concat_backward` on operands already checked: one product per part."""
        a_t, d_parts, start = self.matrix_transpose(a), [], 0
        for p_ in parts:
            q = p_.shape[-2]
            d_parts.append(self.matmul(a_t[..., start : start + q, :], dout))
            start += q
        return d_parts, self.matmul_concat_t(dout, parts)

    def iterates(self, k: int, like):
        """An uninitialised [k, *like.shape] array that `normalize(..., out=buffer[j])`
        writes into, or None where arrays are not written in place (then the caller
        stacks what `normalize` returns)."""
        return None


class _NumpyOps(Ops):
    """numpy, written for Sinkhorn's many calls on small arrays (the CPU path of the
    depth sweep), where a Python wrapper costs more than the operation:
    - `sum` is `np.add.reduce` itself (what np.sum calls, so the same numbers); `reshape`
      and `matrix_transpose` are the ndarray methods;
    - Sinkhorn's normalisations write into one preallocated array (np.stack of ~40 small
      iterates cost as much as computing them) taken from a recycling pool (`buffer_pool`:
      a fresh one page-faults on first write); `normalize` adds eps as the sum's initial
      value; `normalize_backward` runs in place;
    - sigmoid and softmax are the generic compositions as direct ufunc calls (softmax with
      `out=`).
    All give the generic numbers bit for bit except `normalize` (eps summed first: equal
    to rounding; tests/test_numpy_fast_paths.py)."""

    # Recycled iterate buffers: at most this many bytes kept, none larger than the second.
    POOL_BYTES, POOL_BUFFER_BYTES = 64 << 20, 4 << 20

    def compute_dtype(self, x):
        """float32 for bf16 / fp16 / fp32; float64 for float64 and for the wider long double
        (80-bit extended on x86), which float32 would truncate below the oracle's precision."""
        return self.float64 if x.dtype.itemsize >= 8 else self.float32

    def __init__(self, xp):
        super().__init__(xp, "numpy")
        import numpy

        from .buffer_pool import BufferPool

        self._np = numpy
        self._reduce, self._divide = numpy.add.reduce, numpy.divide
        self._multiply, self._subtract = numpy.multiply, numpy.subtract
        self._pool = BufferPool(self.POOL_BYTES, self.POOL_BUFFER_BYTES)

    def sum(self, x, axis=None, keepdims: bool = False):
        return self._reduce(x, axis, None, None, keepdims)

    # ndarray methods: array_api_compat's wrappers cost more than the (view) operation
    def reshape(self, x, shape, copy=None):
        return x.reshape(shape) if copy is None else self.xp.reshape(x, shape, copy=copy)

    def matrix_transpose(self, x):
        if x.ndim < 2:
            raise ValueError(f"matrix_transpose expects an array with >= 2 axes, got shape {x.shape}")
        return x.swapaxes(-1, -2)

    def normalize(self, m, axis: int, eps: float, out=None):
        # eps as the sum's initial value: one call fewer than sum, then + eps; the sum
        # is eps + m_0 + m_1 + ... instead of (m_0 + m_1 + ...) + eps, equal to rounding
        return self._divide(m, self._reduce(m, axis, None, None, True, eps), out)

    def normalize_backward(self, h, m, axis: int, out=None):
        t = self._multiply(self._reduce(h, axis, None, None, True), m)
        return self._subtract(h, t, t if out is None else out)

    def iterates(self, k: int, like):
        return self._pool.empty((k,) + like.shape, like.dtype)

    def equal_all(self, a, b) -> bool:
        return bool(self._np.equal(a, b).all())

    def sigmoid(self, x):
        np = self._np
        e = np.exp(np.negative(np.abs(x)))  # Ops.sigmoid's operations; one division, where
        return np.divide(np.where(x >= 0, 1.0, e), np.add(e, 1.0))  # picks its numerator

    def softmax(self, x, axis: int):
        np = self._np
        e = np.subtract(x, np.maximum.reduce(x, axis, None, None, True))
        np.exp(e, out=e)
        return np.divide(e, self._reduce(e, axis, None, None, True), out=e)

    def batched_outer(self, a, b):
        # einsum: numpy's broadcast multiply [..., p, 1] * [..., 1, q] runs well below memory
        # speed (2.9 vs 1.9 ms at [1024, 4, 1024] float32); each entry is the same one product
        outer_operands(a, b)
        return self._np.einsum("...i,...j->...ij", a, b)

    # Tokens per block of `matmul_concat`: the block's concatenated operand is ~1 MB.
    MATMUL_BLOCK_BYTES = 1 << 20

    def matmul_concat(self, a, parts):
        import numpy as np

        parts = concat_operands("matmul_concat", a, parts)
        lead, width = a.shape[:-2], parts[0].shape[-1]
        tokens = math.prod(lead)
        rows = sum(p_.shape[-2] for p_ in parts)
        dtype = np.result_type(a, *parts)
        block = max(1, self.MATMUL_BLOCK_BYTES // max(1, rows * width * dtype.itemsize))  # 0 for an empty C
        if tokens <= block or any(p_.shape[:-2] != lead for p_ in parts):  # else numpy's broadcasting
            return self.matmul(a, self.concat(parts, axis=-2))
        a2 = a.reshape((tokens,) + a.shape[-2:])
        parts2 = [p_.reshape((tokens,) + p_.shape[-2:]) for p_ in parts]
        out = np.empty((tokens, a.shape[-2], width), dtype=dtype)
        for s in range(0, tokens, block):
            b = np.concatenate([p_[s : s + block] for p_ in parts2], axis=-2)
            np.matmul(a2[s : s + block], b, out=out[s : s + block])
        return out.reshape(lead + out.shape[-2:])

    def matmul_concat_backward(self, a, parts, dout):
        import numpy as np

        parts = backward_operands(a, parts, dout)  # one leading shape for every operand
        lead, width = a.shape[:-2], dout.shape[-1]
        tokens = math.prod(lead)
        # a block's output gradient is ~MATMUL_BLOCK_BYTES: every product of the block reads
        # it from the cache
        block = max(1, self.MATMUL_BLOCK_BYTES // max(1, a.shape[-2] * width * dout.dtype.itemsize))
        if tokens <= block:
            return self._matmul_concat_grads(a, parts, dout)
        a_t = a.reshape((tokens,) + a.shape[-2:]).swapaxes(-1, -2)  # [T, q, p]
        dout2 = dout.reshape((tokens,) + dout.shape[-2:])
        parts2 = [p_.reshape((tokens,) + p_.shape[-2:]) for p_ in parts]
        # each gradient in the dtype of its own products, as the generic version's
        d_parts = [np.empty(p_.shape, np.result_type(a, dout)) for p_ in parts2]
        d_a = np.empty((tokens, a.shape[-2], a.shape[-1]), np.result_type(dout, *parts))
        for s in range(0, tokens, block):
            t_, start = slice(s, s + block), 0
            for p_, d_p in zip(parts2, d_parts):
                q = p_.shape[-2]
                np.matmul(a_t[t_, start : start + q], dout2[t_], out=d_p[t_])
                np.matmul(dout2[t_], p_[t_].swapaxes(-1, -2), out=d_a[t_, :, start : start + q])
                start += q
        return [d.reshape(lead + d.shape[-2:]) for d in d_parts], d_a.reshape(lead + d_a.shape[-2:])


_OWN_BUFFER = []  # the custom op once registered


def _register_own_buffer(torch) -> None:
    """Registers `mhc_core::own_buffer`, a copy of x as a torch custom op: torch.compile
    calls it as an opaque kernel, so its input and output are buffers of their own.
    Gradient: the identity. Registered outside tracing (dynamo cannot trace a
    registration): when the torch namespace is first built eagerly, as importing
    mhc_core_torch does."""
    if not _OWN_BUFFER and not torch.compiler.is_compiling():
        op = torch.library.custom_op("mhc_core::own_buffer", lambda x: x.clone(), mutates_args=(),
                                     schema="(Tensor x) -> Tensor")
        op.register_fake(lambda x: torch.empty_like(x))
        op.register_autograd(lambda ctx, grad: grad, setup_context=lambda ctx, inputs, output: None)
        _OWN_BUFFER.append(op)


class _TorchOps(Ops):
    """torch: native fused extras (same math, one kernel each). Under torch.compile on the
    CPU, a batched matmul of tiny matrices is written as a broadcast product and sum, which
    inductor fuses into one pass over the large operand (a CPU bmm over thousands of
    4 x 4 or 1 x 4 matrices runs at a fraction of memory bandwidth), and a product with at
    most NARROW result columns and a matrix right operand (the phi projection
    [T, n*C] @ [n*C, m] and its weight gradient [n*C, T] @ [T, m]) runs as (b^T @ a^T)^T,
    the orientation torch's CPU GEMM does fastest for it (benchmarks/bench_cpu_ratios.py
    times the compiled coefficients in both orientations, bandwidth section). On every
    device under torch.compile, `sum` / `logsumexp` over an axis of one entry (n = 1)
    read their input from a buffer of its own (`_own_buffer`)."""

    TINY = 8  # a matmul is "tiny" when it contracts over <= TINY or makes <= TINY x TINY matrices
    NARROW = 32  # at most this many result columns: the transposed orientation (0: off)

    def __init__(self, xp):
        super().__init__(xp, "torch")
        import torch

        self._torch = torch
        _register_own_buffer(torch)

    def matmul(self, a, b):
        if not (a.device.type == "cpu" and self._torch.compiler.is_compiling()):
            return self.xp.matmul(a, b)
        if b.ndim == 2 and a.ndim >= 2 and b.shape[-1] <= self.NARROW:  # a matrix of <= NARROW columns
            a2 = a if a.ndim == 2 else a.reshape(-1, a.shape[-1])  # [rows, K]
            return (b.mT @ a2.mT).mT.reshape(a.shape[:-1] + b.shape[-1:])  # ([m, K] @ [K, rows])^T
        if a.ndim >= 3 and (a.shape[-1] <= self.TINY or (a.shape[-2] <= self.TINY and b.shape[-1] <= self.TINY)):
            return (a[..., :, :, None] * b[..., None, :, :]).sum(-2)  # [..., p, q, 1] * [..., 1, q, C]
        return self.xp.matmul(a, b)

    def matmul_concat(self, a, parts):
        if not (a.device.type == "cpu" and self._torch.compiler.is_compiling()):
            return super().matmul_concat(a, parts)
        parts = concat_operands("matmul_concat", a, parts)
        out, start = None, 0  # compiled: one product per part, no concatenated copy
        for p_ in parts:
            q = p_.shape[-2]
            term = self.matmul(a[..., start : start + q], p_)
            out, start = term if out is None else out + term, start + q
        return out

    def matmul_concat_t(self, a, parts):
        if not (a.device.type == "cpu" and self._torch.compiler.is_compiling()):
            return super().matmul_concat_t(a, parts)
        parts = concat_operands("matmul_concat_t", a, parts)
        # compiled: one reduction over C for every output column (inductor reads a and each
        # part once per token), the stacked operand written as a sum of zero-padded parts:
        # a pointwise expression that inductor inlines, where a concatenation is a copy
        pad, rows = self._torch.nn.functional.pad, sum(p_.shape[-2] for p_ in parts)
        stacked, start = None, 0
        for p_ in parts:
            q = p_.shape[-2]
            term = pad(p_, (0, 0, start, rows - start - q))  # [..., rows, C], p_ in rows start:start+q
            stacked, start = term if stacked is None else stacked + term, start + q
        return (a[..., :, None, :] * stacked[..., None, :, :]).sum(-1)  # [..., p, 1, C] * [..., 1, rows, C]

    def sum(self, x, axis=None, keepdims: bool = False):
        return self.xp.sum(self._own_buffer(x, axis), axis=axis, keepdims=keepdims)

    def _own_buffer(self, x, axis):
        """x, or under torch.compile a copy of it inductor cannot fuse (a custom op) when
        the reduced axis has one entry. Inductor turns such a reduction into a pointwise
        expression and inlines chains of them; Sinkhorn's normalisations for n = 1 read
        their input twice each (m / (sum(m) + eps), h - sum(h) * m), and lowering that
        chain took time exponential in its length (64 s at 7 iterations, none finished
        at 20). Sizes 0 and 1 are never symbolic, so the test does not guard."""
        if _OWN_BUFFER and isinstance(axis, int) and x.shape[axis] == 1 and self._torch.compiler.is_compiling():
            return _OWN_BUFFER[0](x)
        return x

    def sigmoid(self, x):
        return self._torch.sigmoid(x)

    def stop_gradient(self, x):
        return x.detach()

    def rsqrt(self, x):
        return self._torch.rsqrt(x)

    def logsumexp(self, x, axis: int, keepdims: bool = False):
        return self._torch.logsumexp(self._own_buffer(x, axis), dim=axis, keepdim=keepdims)

    def softmax(self, x, axis: int):
        return self._torch.softmax(x, dim=axis)

    # torch-native: array_api_compat's device() / asarray() / cumulative_sum() go through
    # lru_cache-wrapped helpers, on which dynamo warns while torch.compile traces a model.
    def eye_like(self, x, n: int):
        return self._torch.eye(n, dtype=x.dtype, device=x.device)

    def cumulative_sum(self, x, axis: int):
        return self._torch.cumsum(x, dim=axis)  # array_api_compat's calls array_namespace

    def constant_like(self, x, value):
        return self._torch.as_tensor(value, dtype=x.dtype, device=x.device)


class _MLXOps(Ops):
    """mlx.core: fills the gaps of the bare namespace that array_namespace returns."""

    def __init__(self, xp):
        self.matrix_transpose = lambda x: xp.swapaxes(x, -1, -2)
        self.concat = lambda arrays, axis=0: xp.concatenate(list(arrays), axis=axis)
        self.astype = lambda x, dtype: x.astype(dtype)
        self.isfinite = xp.isfinite
        self.cumulative_sum = lambda x, axis: xp.cumsum(x, axis=axis)
        self._exp64 = _mlx_float64_exp(xp)
        super().__init__(xp, "mlx")

    def is_floating(self, x) -> bool:
        return self.xp.issubdtype(x.dtype, self.xp.floating)

    def is_real_number(self, x) -> bool:
        return self.xp.issubdtype(x.dtype, self.xp.floating) or self.xp.issubdtype(x.dtype, self.xp.integer)

    def stop_gradient(self, x):
        return self.xp.stop_gradient(x)

    def eye_like(self, x, n: int):
        return self.xp.eye(n, dtype=x.dtype)

    def constant_like(self, x, value):
        import numpy as np  # mlx builds arrays from numpy; the value is a small constant

        return self.xp.array(np.asarray(value), dtype=x.dtype)

    # float64: native exp-based ops are float32-accurate on MLX's CPU (module doc), so
    # float64 uses power(e, x) and overflow-safe compositions of it; other dtypes stay native.
    def _f64(self, x) -> bool:
        return getattr(x, "dtype", None) == self.xp.float64

    def exp(self, x):
        if self._f64(x):
            return self._exp64(x)
        return self.xp.exp(x)

    def logaddexp(self, a, b):
        if self._f64(a) or self._f64(b):
            # hi + log1p(exp(lo - hi)): never overflows; where (not abs / maximum) so the
            # gradient at a == b is the true 1/2 each, not a zero subgradient.
            # Equal infinities: lo - hi would be inf - inf = NaN; hi + log1p(1) is the +-inf wanted.
            first = a >= b
            hi, lo = self.xp.where(first, a, b), self.xp.where(first, b, a)
            gap = self.xp.where(self.xp.isinf(hi) & (lo == hi), self.xp.zeros_like(hi), lo - hi)
            return hi + self.xp.log1p(self.exp(gap))
        return self.xp.logaddexp(a, b)

    def sigmoid(self, x):
        if self._f64(x):
            pos = x >= 0  # e = exp(-|x|) in (0, 1]: both branches and their grads finite
            e = self.exp(self.xp.where(pos, -x, x))
            return self.xp.where(pos, 1.0 / (1.0 + e), e / (1.0 + e))
        return self.xp.sigmoid(x)

    def rsqrt(self, x):
        return self.xp.rsqrt(x)

    def logsumexp(self, x, axis: int, keepdims: bool = False):
        if x.size == 0:  # native logsumexp and max refuse empty arrays: -inf over an empty axis, else no values
            out = self.xp.sum(x, axis=axis, keepdims=keepdims)
            return out - math.inf if x.shape[axis] == 0 else out
        if self._f64(x):
            m = self.xp.max(x, axis=axis, keepdims=True)
            m = self.xp.where(self.xp.isfinite(m), m, self.xp.zeros_like(m))
            out = self.xp.log(self.xp.sum(self.exp(x - m), axis=axis, keepdims=True)) + m
            return out if keepdims else self.xp.squeeze(out, axis=axis)
        return self.xp.logsumexp(x, axis=axis, keepdims=keepdims)

    def softmax(self, x, axis: int):
        if self._f64(x):
            e = self.exp(x - self.xp.max(x, axis=axis, keepdims=True))
            return e / self.xp.sum(e, axis=axis, keepdims=True)
        return self.xp.softmax(x, axis=axis, precise=True)


def _mlx_float64_exp(mx):
    """exp of a float64 mlx array: power(e, x) in value, with true derivatives of every order.

    MLX's derivative of power(a, x) in x is right to the second order and wrong from the
    third (mlx 0.32: 2 exp(x) for d^3/dx^3 exp). So the value is power(e, x0) with x0 = x
    held constant, times MLX's own exp of x - x0 (exactly exp(0) = 1), whose derivatives
    are right at every order and are all taken at 0, where the native exp is exact: each
    derivative is power(e, x) * 1. For infinite x, x0 = 0 and the native exp gives
    exp(+-inf) (x - x would be NaN). Plain primitives only (no custom function), so it
    also exports (`mx.export_function`)."""

    def exp64(x):
        x0 = mx.stop_gradient(mx.where(mx.isinf(x), mx.zeros_like(x), x))
        return mx.power(mx.array(math.e, dtype=mx.float64), x0) * mx.exp(x - x0)

    return exp64


# Ops per array type. `namespace` runs on every call of every mhc_core function, also
# while torch.compile traces a model: after the first call for a type it is one plain dict
# lookup, which dynamo traces (array_api_compat's lru_cache-wrapped lookup makes it warn).
_OPS_BY_TYPE: dict[type, Ops] = {}
_OPS_BY_LIBRARY: dict[int, Ops] = {}


def _library_of(xp) -> str:
    name = getattr(xp, "__name__", str(xp))
    if name == "mlx.core":
        return "mlx"
    return name.rsplit(".", 1)[-1]


def _ops_for(xp) -> Ops:
    """The one `Ops` bound to the array-API namespace `xp`."""
    ops = _OPS_BY_LIBRARY.get(id(xp))
    if ops is None:
        library = _library_of(xp)
        if library == "mlx":
            ops = _MLXOps(xp)
        elif library == "torch":
            ops = _TorchOps(xp)
        elif library == "numpy":
            ops = _NumpyOps(xp)
        else:
            ops = Ops(xp, library)
        _OPS_BY_LIBRARY[id(xp)] = ops
    return ops


def _lookup(arrays) -> Ops:
    """array_api_compat's answer for `arrays` (the first call per array type)."""
    try:
        xp = array_api_compat.array_namespace(*arrays)
    except TypeError as err:
        kinds = sorted({f"{type(a).__module__}.{type(a).__name__}" for a in arrays})
        raise TypeError(
            f"expected arrays from one library (numpy, torch or mlx), got {kinds}: {err}"
        ) from None
    ops = _ops_for(xp)
    for a in arrays:
        if hasattr(a, "shape"):  # arrays only: array_namespace passes over Python scalars
            _OPS_BY_TYPE[type(a)] = ops
    return ops


def namespace(*arrays) -> Ops:
    """The `Ops` for the library all `arrays` come from.

    Raises TypeError naming the libraries when arrays come from more than one, or when
    an input is not an array at all.
    """
    ops = None
    for a in arrays:
        found = _OPS_BY_TYPE.get(type(a))
        if found is None or (ops is not None and found is not ops):
            return _lookup(arrays)  # a new type, or two libraries (array_api_compat says which)
        ops = found
    return ops if ops is not None else _lookup(arrays)
