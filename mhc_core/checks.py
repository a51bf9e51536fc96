"""Input validation shared by every public entry point.

Each check raises ValueError / TypeError with a message that names the argument, what was
expected and what arrived, so a user sees the mistake rather than a shape error deep
inside a matmul.
"""
from __future__ import annotations

import math
import numbers

import numpy as np

from .xp import Ops, namespace

VARIANTS = ("mhc", "hc", "residual", "mhc-lite")


def shape_of(a) -> tuple[int, ...]:
    """a's shape as Python ints; a size that is not an integer (torch's symbolic SymInt
    while torch.export traces a dynamic axis) stays as it is: int() would fix it to the
    example's value."""
    return tuple(int(s) if isinstance(s, numbers.Integral) else s for s in a.shape)


def float_array(ops: Ops, a, name: str) -> None:
    if not hasattr(a, "dtype") or not hasattr(a, "shape"):
        raise TypeError(f"{name} must be a floating-point array, got {type(a).__name__}")
    if not ops.is_floating(a):
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")


def same_device(fn: str, *named) -> None:
    """Every array of one call of `fn` on one device; `named` is (array, name) pairs.
    Only torch tensors can differ (numpy's are all on 'cpu', MLX arrays have no device).
    Checked here rather than left to torch: its CPU matmul with a 'meta' tensor returns
    uninitialised memory instead of raising, and elementwise ops name no argument."""
    devices = [getattr(a, "device", None) for a, _ in named]
    if any(d != devices[0] for d in devices[1:]):
        where = ", ".join(f"{name} on {d}" for (_, name), d in zip(named, devices))
        raise ValueError(f"{fn}: all inputs must be on one device, got {where}")


def stream_input(ops: Ops, x, name: str = "x") -> tuple[int, int]:
    """x must be [..., n, C] and floating; returns (n, C)."""
    float_array(ops, x, name)
    shape = shape_of(x)
    if len(shape) < 2:
        raise ValueError(f"{name} must have shape [..., n, C] (rank >= 2), got shape {shape}")
    n, c = shape[-2], shape[-1]
    if n < 1 or c < 1:
        raise ValueError(f"{name} must have n >= 1 streams and C >= 1 channels, got shape {shape}")
    return n, c


def module_input(ops: Ops, x, n: int, c: int, owner: str) -> None:
    """x must be a floating [..., n, C] array with the n and C of the module `owner`."""
    stream_input(ops, x)
    expect_trailing(x, (n, c), shape_of(x)[:-2], "x", f"[..., n, C] with n={n}, C={c} for this {owner}")


def expect_shape(a, expected: tuple[int, ...], name: str, what: str) -> None:
    got = shape_of(a)
    if got != tuple(expected):
        raise ValueError(f"{name} must have shape {list(expected)} ({what}), got {list(got)}")


def expect_trailing(a, expected: tuple[int, ...], lead: tuple[int, ...], name: str, what: str) -> None:
    got = shape_of(a)
    if got != tuple(lead) + tuple(expected):
        raise ValueError(
            f"{name} must have shape {list(lead) + list(expected)} ({what}), got {list(got)}"
        )


def res_width(n: int, variant: str = "mhc") -> int:
    """Columns of phi that feed `res`: n*n, or n! for mhc-lite (n <= 6)."""
    if variant == "mhc-lite":
        if n > 6:
            raise ValueError(f"mhc-lite mixes the n! permutation matrices and supports n <= 6 streams, got n={n}")
        return factorial(n)
    return n * n


def factorial(n) -> int:
    """n! as a product, so that a traced symbolic n (torch.compile(dynamic=True) reads n from
    x's shape) stays traceable: math.factorial takes only a Python int."""
    out = 1
    for k in range(2, n + 1):
        out *= k
    return out


def mixing_params(ops: Ops, phi, bias, alpha, n: int, c: int, n_alpha: int = 3, variant: str = "mhc") -> None:
    """phi [n*C, R + 2n], bias [R + 2n], alpha [3], all floating; R = n*n (n! for mhc-lite)."""
    width = res_width(n, variant) + 2 * n
    r = "n!" if variant == "mhc-lite" else "n*n"
    for a, name in ((phi, "phi"), (bias, "bias"), (alpha, "alpha")):
        float_array(ops, a, name)
    expect_shape(phi, (n * c, width), "phi", f"n*C x ({r} + 2n) for n={n}, C={c}")
    expect_shape(bias, (width,), "bias", f"{r} + 2n for n={n}")
    expect_shape(alpha, (n_alpha,), "alpha", "one scale each for pre, post, res")


def _scalar(value):
    """A Python / numpy scalar, or the value of a 0-d array (numpy, torch, mlx) as a Python
    number; None for anything else (bools, strings, arrays with elements on an axis)."""
    if type(value) in (int, float):  # the common case, and the only one a tracer sees often
        return value
    if hasattr(value, "shape") and hasattr(value, "item"):
        if tuple(value.shape) != () or getattr(value, "requires_grad", False):
            return None  # a tensor with autograd history: its gradient would be dropped (`_got`)
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        return None  # numbers.Real covers numpy's integer and floating scalars, not np.bool_
    return value


def _got(value) -> str:
    """`value` as an error message shows what arrived, with why a tensor that requires grad
    is refused as a number."""
    if getattr(value, "requires_grad", False):
        return (f"{value!r}: settings are read as plain numbers, so a tensor that requires grad would get "
                "no gradient")
    return repr(value)


def _finite(v) -> bool:
    """math.isfinite(v) written as arithmetic (v - v is 0 for a finite v, nan for inf / nan),
    which torch.compile can also evaluate on the symbolic float it traces a module's float
    settings as under dynamic=True (math.isfinite it cannot)."""
    return v - v == 0


def integer(value, name: str, minimum: int = 1, meaning: str = "") -> int:
    """int(value) for an integer (Python, numpy, or a 0-d integer array) >= minimum.
    Floats (even 4.0) and bools are refused: a count is never a float. `meaning` is said
    after the name in the error, e.g. "n (number of streams) must be ..."."""
    v = _scalar(value)
    if not isinstance(v, numbers.Integral) or v < minimum:
        label = f"{name} ({meaning})" if meaning else name
        raise ValueError(f"{label} must be an integer >= {minimum}, got {_got(value)}")
    return int(v)


def real(value, name: str) -> float:
    """float(value) for a finite real number (Python, numpy, or a 0-d array); bools refused."""
    v = _scalar(value)
    if v is None or not _finite(v):
        raise ValueError(f"{name} must be a finite number, got {_got(value)}")
    return float(v)


def non_negative(value, name: str) -> float:
    """float(value) for a finite number >= 0 (Python, numpy, or a 0-d array); bools refused.
    inf and nan are refused: as an eps or a scale they make the coefficients inf / nan."""
    v = _scalar(value)
    if v is None or not _finite(v) or not v >= 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {_got(value)}")
    return float(v)


def floating_dtype(dtype, fn: str) -> np.dtype:
    """`dtype` as a numpy real floating dtype, for the functions making fresh parameters
    (`fn` names it in the error): an integer one would round them (logit(1/n) to -1, the
    -10 skip logits to integers history_weights refuses), a complex or bool one is no
    parameter type."""
    try:
        dt = np.dtype(dtype)
    except TypeError:
        dt = None
    if dt is None or dt.kind != "f":
        raise TypeError(f"{fn}: dtype must be a real floating-point dtype (float16, float32, float64), got {dtype!r}")
    return dt


def flag(value, name: str) -> bool:
    """A switch: True or False (numpy bools too). Strings and numbers are refused, since
    bool('no') would be True."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False, got {value!r}")
    return bool(value)


def iters(value) -> int:
    return integer(value, "iters")


def streams(value, name: str = "n") -> int:
    return integer(value, name, meaning="number of streams")


def channels(value, name: str = "C") -> int:
    return integer(value, name, meaning="channels per stream" if name == "C" else "channels per stream, C")


FRAMEWORKS = ("torch", "mlx")  # module libraries with an mhc_core backend


def layer(f, name: str = "f", framework: str | None = None) -> None:
    """f must be callable; with `framework` ('torch' | 'mlx', the backend's), a module of the
    other framework is refused here rather than failing inside its first matmul."""
    if not callable(f):
        raise TypeError(f"{name} must be a callable layer [..., C] -> [..., C], got {type(f).__name__}")
    if framework is not None:
        roots = {cls.__module__.split(".")[0] for cls in type(f).__mro__}
        other = sorted((roots & set(FRAMEWORKS)) - {framework})
        if other and framework not in roots:
            raise TypeError(f"{name} is a module of {other[0]} ({type(f).__module__}.{type(f).__name__}), but "
                            f"this is the {framework} backend: wrap a layer of {framework} (arrays and modules "
                            "of two libraries do not mix)")


def layer_output(x, y) -> None:
    """y, what the wrapped layer returned for x's aggregate, must be one array of x's
    library: a tuple (an attention block's (output, weights)), a list or None is named as
    the layer's mistake here, not as a mix of array libraries inside the mixing math."""
    try:
        same = namespace(y) is namespace(x)
    except TypeError:
        same = False
    if same:
        return
    kind = f"{type(y).__module__}.{type(y).__name__}" if y is not None else "NoneType"
    hint = ""
    if isinstance(y, (tuple, list)):
        hint = (f"; it returned a {type(y).__name__}: a layer returning several values (e.g. an attention "
                "block's (output, weights)) needs a wrapper returning the output alone")
    raise TypeError(f"y must be a floating-point array of one library with x (the layer's output, "
                    f"[..., C], a {type(x).__module__}.{type(x).__name__}), got {kind}{hint}")


def variant(value: str) -> str:
    if value not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {value!r}")
    return value


CONFIG_FIELDS = ("iters", "rms_eps", "pre_eps", "sinkhorn_eps", "post_scale")


def config_fields(fields: dict) -> dict:
    """The MHCConfig fields of `fields`, validated and normalized to Python int / float:
    iters an integer >= 1, the rest finite numbers >= 0."""
    out = {"iters": iters(fields["iters"])}
    for name in CONFIG_FIELDS[1:]:
        out[name] = non_negative(fields[name], name)
    return out


def coefficient_inputs(ops: Ops, x, phi, bias, alpha, variant_name: str, fields: dict) -> tuple[int, int, str, dict]:
    """The arguments of `coefficients`: x [..., n, C], phi [n*C, R + 2n], bias [R + 2n],
    alpha [3] (R = n*n, or n! for 'mhc-lite'), variant 'mhc' | 'hc' | 'mhc-lite', the
    MHCConfig fields. Returns (n, C, variant, fields normalized)."""
    n, c = stream_input(ops, x)
    if variant(variant_name) == "residual":
        raise ValueError("variant 'residual' has no coefficients; use residual_step")
    mixing_params(ops, phi, bias, alpha, n, c, variant=variant_name)
    same_device("coefficients", (x, "x"), (phi, "phi"), (bias, "bias"), (alpha, "alpha"))
    return n, c, variant_name, config_fields(fields)


def coefficient_call(ops: Ops, x, phi, bias, alpha, variant_name: str, settings: dict) -> tuple[str, dict]:
    """For entry points taking `**settings` (some MHCConfig fields): unknown names are a
    TypeError, missing ones take MHCConfig's defaults; then `coefficient_inputs`.
    Returns (variant, every MHCConfig field normalized)."""
    from .config import MHCConfig

    unknown = sorted(set(settings) - set(CONFIG_FIELDS))
    if unknown:
        raise TypeError(f"coefficients got unexpected settings {unknown}; expected some of {CONFIG_FIELDS}")
    _, _, variant_name, fields = coefficient_inputs(ops, x, phi, bias, alpha, variant_name,
                                                    {**MHCConfig().as_dict(), **settings})
    return variant_name, fields


def pre_aggregate_inputs(ops: Ops, x, pre) -> tuple[int, int, tuple[int, ...]]:
    """x [..., n, C], pre [..., n]; returns (n, C, leading shape)."""
    n, c = stream_input(ops, x)
    float_array(ops, pre, "pre")
    lead = shape_of(x)[:-2]
    expect_trailing(pre, (n,), lead, "pre", "one weight per stream of x")
    same_device("pre_aggregate", (x, "x"), (pre, "pre"))
    return n, c, lead


def post_residual_inputs(ops: Ops, x, y, post, res) -> tuple[int, int, tuple[int, ...]]:
    """x [..., n, C], y [..., C], post [..., n], res [..., n, n]; returns (n, C, leading shape)."""
    n, c = stream_input(ops, x)
    lead = shape_of(x)[:-2]
    for a, name in ((y, "y"), (post, "post"), (res, "res")):
        float_array(ops, a, name)
    expect_trailing(y, (c,), lead, "y", "the layer output, one C-vector per token")
    expect_trailing(post, (n,), lead, "post", "one weight per stream of x")
    expect_trailing(res, (n, n), lead, "res", "an n x n mixing matrix per token")
    same_device("post_residual", (x, "x"), (y, "y"), (post, "post"), (res, "res"))
    return n, c, lead


def sinkhorn_inputs(ops: Ops, logits, iters_value, eps) -> tuple[tuple[int, ...], int, float]:
    """logits [..., n, n] floating, iters >= 1, eps finite >= 0; returns (shape, iters, eps)."""
    float_array(ops, logits, "logits")
    shape = shape_of(logits)
    if len(shape) < 2 or shape[-1] != shape[-2]:
        raise ValueError(f"logits must have shape [..., n, n] (square last two axes), got {shape}")
    if shape[-1] < 1:
        raise ValueError(f"logits must have shape [..., n, n] with n >= 1, got {shape}")
    return shape, iters(iters_value), non_negative(eps, "eps")


def state_matches(expected: dict, got: dict, owner: str) -> None:
    """Strict weight loading: `got` must name exactly `expected`'s entries with the same
    shapes (values are anything with `.shape`). One ValueError lists every problem."""
    missing = sorted(set(expected) - set(got))
    unexpected = sorted(set(got) - set(expected))
    mismatched = [
        f"{k}: state {list(shape_of(got[k]))} vs module {list(shape_of(expected[k]))}"
        for k in sorted(set(expected) & set(got))
        if shape_of(got[k]) != shape_of(expected[k])
    ]
    problems = []
    if missing:
        problems.append(f"missing {missing}")
    if unexpected:
        problems.append(f"unexpected {unexpected}")
    if mismatched:
        problems.append(f"shape mismatch {mismatched}")
    if problems:
        raise ValueError(f"load_state into {owner} failed: " + "; ".join(problems))
