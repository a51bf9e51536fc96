"""Multi-history skip mixing: each layer adds a constrained mix of the last K states.

The residual design of the `mhc` package on the package index (0.5.x), written once:

    x_{l+1} = f_l(x_l) + g_l * sum_{k in window} a_{l,k} x_k        window: the last K states

`x_0` is the first state of the window; `a_l = history_weights(...)` lies on the simplex;
`g_l = sigmoid(gate_l)` when the layer is gated, else 1. With the "identity" init (logits
-10, newest 0) a ~= one-hot on x_l and the stack starts as a plain residual network.

Weights from a layer's logits (`skip_weights`), newest state last:
- vector mixing, logits [K]: the newest k <= K logits, `history_weights(logits[-k:])`.
- matrix mixing, logits [K, K]: the last row of `sinkhorn(logits[-k:, -k:] / T)`.
Constraints (`history_weights`), z = (logits + noise) / temperature:
- "softmax":  softmax(z) (the package's "simplex" and its "hc" mode).
- "simplex":  the Euclidean projection of z onto the simplex (`simplex_projection`): exact
              zeros for small logits, which the package's documentation promises.
- "identity": (1 - eps) softmax(z) + eps on the newest state, so the skip never vanishes.
`noise` is Gumbel noise for stochastic mixing: softmax((logits + g) / T) is the
Gumbel-softmax sample (tau = T). Backends draw it from their seeded generators.
"""
from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, fields
from typing import Sequence

import numpy as np

from . import checks
from .config import MHCConfig
from .sinkhorn import sinkhorn
from .xp import namespace

CONSTRAINTS = ("softmax", "simplex", "identity")
MIXINGS = ("vector", "matrix")
INITS = ("identity", "uniform")
GATE_INIT = 2.0  # sigmoid(2) = 0.88: a gated skip starts mostly open
IDENTITY_LOGIT = -10.0  # the "identity" init's logit of every state but the newest
_DEFAULT = MHCConfig()


# --- validation --------------------------------------------------------------------------


def check_constraint(value) -> str:
    if value not in CONSTRAINTS:
        raise ValueError(f"constraint must be one of {CONSTRAINTS}, got {value!r}")
    return value


def check_mixing(value) -> str:
    if value not in MIXINGS:
        raise ValueError(f"mixing must be one of {MIXINGS}, got {value!r}")
    return value


def check_history(value, name: str = "history") -> int:
    """K, the number of states in the window: an integer >= 1."""
    return checks.integer(value, name, meaning="the number of earlier states mixed, K")


def check_flag(value, name: str) -> bool:
    """A switch (gate, stochastic, detach_history): `checks.flag`."""
    return checks.flag(value, name)


def check_temperature(value) -> float:
    """A finite number > 0."""
    v = checks._scalar(value)
    if v is None or not checks._finite(v) or not v > 0:
        raise ValueError(f"temperature must be a finite number > 0, got {checks._got(value)}")
    return float(v)


def check_epsilon(value) -> float:
    """A number in [0, 1)."""
    v = checks._scalar(value)
    if v is None or not 0.0 <= v < 1.0:
        raise ValueError(f"epsilon (the newest state's minimum weight) must be in [0, 1), got {checks._got(value)}")
    return float(v)


@dataclass(frozen=True)
class SkipSettings:
    """One layer's skip settings, checked (`skip_settings`); what both backends'
    `HistorySkip` store."""

    history: int
    constraint: str
    temperature: float
    epsilon: float
    mixing: str
    prune_threshold: float
    stochastic: bool
    gated: bool
    iters: int
    sinkhorn_eps: float

    def store_on(self, module) -> None:
        """Every setting as an attribute of `module` (a backend's HistorySkip)."""
        for f in fields(self):
            setattr(module, f.name, getattr(self, f.name))


def check_skip_logits(logits, history: int, mixing: str) -> None:
    """A skip's logits must be [K] (vector) or [K, K] (matrix) for its own history K: a
    parameter swapped in from another history (MLX's `model.update` checks no shapes)
    would otherwise mix the window with its last K logits."""
    want = (history,) if mixing == "vector" else (history, history)
    checks.expect_shape(logits, want, "logits", f"one per state of the window, history={history}")


def skip_settings(history, *, constraint, temperature, epsilon, mixing, prune_threshold, stochastic, gate,
                  iters, sinkhorn_eps) -> SkipSettings:
    """The arguments of a backend's `HistorySkip`, checked once for both backends."""
    mixing, constraint = check_mixing(mixing), check_constraint(constraint)
    if mixing == "matrix" and constraint == "simplex":
        raise ValueError("constraint 'simplex' applies to vector mixing; matrix mixing is made "
                         "doubly stochastic by Sinkhorn (use constraint 'softmax' or 'identity')")
    return SkipSettings(
        history=check_history(history), constraint=constraint, temperature=check_temperature(temperature),
        epsilon=check_epsilon(epsilon), mixing=mixing,
        prune_threshold=checks.non_negative(prune_threshold, "prune_threshold"),
        stochastic=check_flag(stochastic, "stochastic"), gated=check_flag(gate, "gate"),
        iters=checks.iters(iters), sinkhorn_eps=checks.non_negative(sinkhorn_eps, "sinkhorn_eps"))


def init_skip_logits(history: int, *, init: str = "identity", mixing: str = "vector",
                     dtype=np.float32) -> np.ndarray:
    """A layer's fresh mixing logits (numpy), [K] (vector) or [K, K] (matrix).

    "identity": vector -10 everywhere but 0 on the newest state (weight 1 - 1.4e-4 for
    K = 4 under softmax: the stack starts as a residual network); matrix 0 on the
    diagonal and -10 off it (its last row, after Sinkhorn, is ~one-hot on the newest).
    "uniform": zeros (equal weights).
    """
    history = check_history(history)
    mixing = check_mixing(mixing)
    dtype = checks.floating_dtype(dtype, "init_skip_logits")
    if init not in INITS:
        raise ValueError(f"init must be one of {INITS}, got {init!r}")
    shape = (history,) if mixing == "vector" else (history, history)
    if init == "uniform":
        return np.zeros(shape, dtype=dtype)
    if mixing == "vector":
        out = np.full(shape, IDENTITY_LOGIT)
        out[-1] = 0.0
    else:
        out = IDENTITY_LOGIT * (1.0 - np.eye(history))
    return out.astype(dtype)


# --- the simplex -------------------------------------------------------------------------


def simplex_projection(v, axis: int = -1):
    """Euclidean projection of `v [..., K]` onto the probability simplex along `axis`.

    argmin_w ||w - v||_2 subject to w >= 0, sum(w) = 1, by sorting (Held et al. 1974;
    Duchi et al. 2008): with u = v sorted descending and S_j = u_1 + ... + u_j, the
    threshold is tau = max_j (S_j - 1) / j and w = max(v - tau, 0). Entries below tau are
    exactly 0. tau is recomputed from the support {v > tau} so the gradient flows through
    v alone (no gradient through the sort): dw/dv = (I - 1/k) on the k support entries,
    0 elsewhere, the true derivative wherever it exists. Computed in float32 (float64 stays).
    """
    ops = namespace(v)
    checks.float_array(ops, v, "v")
    shape = checks.shape_of(v)
    if len(shape) < 1:
        raise ValueError("v must have at least one axis to project along, got a 0-d array")
    if not -len(shape) <= axis < len(shape):
        raise ValueError(f"axis must be in [{-len(shape)}, {len(shape) - 1}] for v of shape {list(shape)}, got {axis}")
    if shape[axis] < 1:
        raise ValueError(f"v must have K >= 1 entries along axis {axis} (the simplex of no entries is empty), "
                         f"got shape {list(shape)}")
    cdt = ops.compute_dtype(v)
    z = ops.astype(v, cdt)
    # Shifted so the largest entry is 0 (the projection of v + c is that of v): then every
    # (S_j - 1) / j < 0, so tau < 0 and the largest entry is always in the support. Unshifted,
    # S_j - 1 rounds to S_j once S_j > 2**53 (float64) or 2**24 (float32): tau then equals
    # the largest entry, the support is empty and the weights came out all 0.
    # The shift's gradient cancels (z - tau does not depend on it).
    z = z - ops.max(z, axis=axis, keepdims=True)
    u = -ops.sort(-z, axis=axis)  # descending
    j = ops.cumulative_sum(ops.zeros_like(z) + 1.0, axis=axis)  # 1, 2, ..., K
    tau = ops.max((ops.cumulative_sum(u, axis=axis) - 1.0) / j, axis=axis, keepdims=True)
    support = z > tau  # never empty for finite v: the largest entry is 0 > tau
    zero = ops.zeros_like(z)
    k = ops.sum(ops.where(support, zero + 1.0, zero), axis=axis, keepdims=True)
    k = ops.where(k > 0.0, k, k + 1.0)  # k = 0 only for NaN input: no 0/0 (its output is NaN below)
    tau = (ops.sum(ops.where(support, z, zero), axis=axis, keepdims=True) - 1.0) / k
    # NaN in, NaN out (as softmax does), rather than weights silently all 0
    return ops.where(support, z - tau, ops.where(z == z, zero, z))


def _tempered(ops, z, temperature: float):
    """z / temperature shifted by each row's maximum (last axis): what softmax, the simplex
    projection and Sinkhorn (whose first step is a row softmax) see of it, as each is
    unchanged by a shift of a row, but finite at any temperature. Unshifted, z / temperature
    overflows to inf once it passes the dtype's range and inf - inf made every weight NaN.
    Where it stays in range this is z / T - max(z) / T, bit for bit the shift softmax makes
    itself; elsewhere (z - max(z)) / T, whose largest entry is 0; where 1 / T overflows the
    dtype (T may not even be representable), its limit: -inf below the maximum, 0 at it.
    The shift is held constant under autodiff (the weights do not depend on it)."""
    m = ops.stop_gradient(ops.max(z, axis=-1, keepdims=True))
    largest = float(np.finfo(np.float64 if z.dtype == ops.float64 else np.float32).max)
    if temperature * largest < 1.0:
        return ops.where(z < m, ops.zeros_like(z) - math.inf, z - m)
    r = z / temperature - m / temperature
    return ops.where(ops.isfinite(r), r, (z - m) / temperature)


def history_weights(logits, *, constraint: str = "softmax", temperature: float = 1.0,
                    epsilon: float = 0.1, noise=None):
    """Mixing weights [..., K] on the simplex from `logits [..., K]` (oldest state first).

    See the module docstring for the constraints. `noise [..., K]` (optional) is added to
    the logits before the temperature: Gumbel noise gives the Gumbel-softmax sample.
    Float32 out (float64 stays float64).
    """
    ops = namespace(logits) if noise is None else namespace(logits, noise)
    checks.float_array(ops, logits, "logits")
    shape = checks.shape_of(logits)
    if len(shape) < 1 or shape[-1] < 1:
        raise ValueError(f"logits must have shape [..., K] with K >= 1, got {list(shape)}")
    constraint = check_constraint(constraint)
    temperature = check_temperature(temperature)
    epsilon = check_epsilon(epsilon)
    cdt = ops.compute_dtype(logits)
    z = ops.astype(logits, cdt)
    if noise is not None:
        checks.float_array(ops, noise, "noise")
        checks.expect_shape(noise, shape, "noise", "one Gumbel sample per logit")
        checks.same_device("history_weights", (logits, "logits"), (noise, "noise"))
        z = z + ops.astype(noise, cdt)
    z = _tempered(ops, z, temperature)
    if constraint == "simplex":
        return simplex_projection(z)
    w = ops.softmax(z, axis=-1)
    if constraint == "identity":
        newest = ops.eye_like(z, shape[-1])[shape[-1] - 1]  # [K], one-hot on the newest state
        w = (1.0 - epsilon) * w + epsilon * newest
    return w


def skip_weights(logits, k: int, *, mixing: str = "vector", constraint: str = "softmax",
                 temperature: float = 1.0, epsilon: float = 0.1, noise=None,
                 iters: int = _DEFAULT.iters, sinkhorn_eps: float = _DEFAULT.sinkhorn_eps):
    """Weights [k] of the k newest states (oldest first) from one layer's logits.

    vector: logits [K] -> history_weights(logits[-k:]), noise [k].
    matrix: logits [K, K] -> last row of sinkhorn((logits[-k:, -k:] + noise) / T), noise
    [k, k]; "identity" then mixes in eps on the newest state; "simplex" is for vectors only.
    """
    ops = namespace(logits) if noise is None else namespace(logits, noise)
    checks.float_array(ops, logits, "logits")
    mixing = check_mixing(mixing)
    iters, sinkhorn_eps = checks.iters(iters), checks.non_negative(sinkhorn_eps, "sinkhorn_eps")  # both mixings
    shape = checks.shape_of(logits)
    K = shape[0] if shape else 0
    want = (K,) if mixing == "vector" else (K, K)
    if K < 1 or shape != want:
        raise ValueError(f"logits must have shape {'[K]' if mixing == 'vector' else '[K, K]'} "
                         f"for mixing={mixing!r}, got {list(shape)}")
    k_value = checks._scalar(k)  # Python, numpy or 0-d array integers, as every count here
    if not isinstance(k_value, numbers.Integral) or not 1 <= k_value <= K:
        raise ValueError(f"k (states in the window) must be an integer in [1, K={K}], got {k!r}")
    k = int(k_value)
    if mixing == "vector":
        return history_weights(logits[K - k:], constraint=constraint, temperature=temperature,
                               epsilon=epsilon, noise=noise)
    constraint = check_constraint(constraint)
    if constraint == "simplex":
        raise ValueError("constraint 'simplex' applies to vector mixing; matrix mixing is made "
                         "doubly stochastic by Sinkhorn (use constraint 'softmax' or 'identity')")
    temperature = check_temperature(temperature)
    epsilon = check_epsilon(epsilon)
    cdt = ops.compute_dtype(logits)
    z = ops.astype(logits[K - k:, K - k:], cdt)
    if noise is not None:
        checks.float_array(ops, noise, "noise")
        checks.expect_shape(noise, (k, k), "noise", "one Gumbel sample per logit of the window")
        checks.same_device("skip_weights", (logits, "logits"), (noise, "noise"))
        z = z + ops.astype(noise, cdt)
    w = sinkhorn(_tempered(ops, z, temperature), iters=iters, eps=sinkhorn_eps)[k - 1]  # [k]
    if constraint == "identity":
        w = (1.0 - epsilon) * w + epsilon * ops.eye_like(z, k)[k - 1]
    return w


# --- the mix -----------------------------------------------------------------------------


def history_mix(states: Sequence, weights, *, gate=None, prune_threshold: float = 0.0):
    """`g * sum_k w'_k states[k]` -> the states' shape and dtype.

    states: k arrays of one shape (oldest first); weights [k]; w'_k = 0 where
    w_k < prune_threshold (the weight is dropped, not renormalised); g = sigmoid(gate)
    for a gate array [] (or [1]), else 1. Accumulates in float32 (float64 stays).
    """
    if not isinstance(states, (list, tuple)) or not states:
        raise ValueError(f"states must be a non-empty list of arrays (the window), got {type(states).__name__}"
                         + (" of length 0" if isinstance(states, (list, tuple)) else ""))
    ops = namespace(weights, *states) if gate is None else namespace(weights, gate, *states)
    checks.float_array(ops, weights, "weights")
    k = len(states)
    checks.expect_shape(weights, (k,), "weights", f"one weight per state of the window (k={k})")
    first = checks.shape_of(states[0])
    for i, s in enumerate(states):
        checks.float_array(ops, s, f"states[{i}]")
        if checks.shape_of(s) != first:
            raise ValueError(f"every state of the window must have one shape: states[0] is {list(first)}, "
                             f"states[{i}] is {list(checks.shape_of(s))}")
    prune_threshold = checks.non_negative(prune_threshold, "prune_threshold")
    named = [(weights, "weights")] + [(s, f"states[{i}]") for i, s in enumerate(states)]
    checks.same_device("history_mix", *named, *([] if gate is None else [(gate, "gate")]))
    cdt = ops.compute_dtype(states[-1])
    w = ops.astype(weights, cdt)
    if prune_threshold > 0.0:
        w = ops.where(w < prune_threshold, ops.zeros_like(w), w)
    acc = None
    for i, s in enumerate(states):
        term = w[i] * ops.astype(s, cdt)
        acc = term if acc is None else acc + term
    if gate is not None:
        checks.float_array(ops, gate, "gate")
        if checks.shape_of(gate) not in ((), (1,)):
            raise ValueError(f"gate must be a scalar array (shape [] or [1]), got {list(checks.shape_of(gate))}")
        acc = acc * ops.reshape(ops.sigmoid(ops.astype(gate, cdt)), ())
    return ops.astype(acc, states[-1].dtype)


def applied_weights(weights, *, gate=None, prune_threshold: float = 0.0):
    """The weights [k] as `history_mix` applies them: 0 below `prune_threshold`, times
    sigmoid(gate) when gated (a gate array [] or [1]). For reports and metrics."""
    ops = namespace(weights) if gate is None else namespace(weights, gate)
    checks.float_array(ops, weights, "weights")
    w = weights
    if checks.non_negative(prune_threshold, "prune_threshold") > 0.0:
        w = ops.where(w < prune_threshold, ops.zeros_like(w), w)
    if gate is not None:
        w = w * ops.reshape(ops.sigmoid(ops.astype(gate, w.dtype)), ())
    return w


def history_skip(y, states: Sequence, weights, *, gate=None, prune_threshold: float = 0.0):
    """One layer's output `y + history_mix(states, weights)`: y must have the states' shape."""
    if not isinstance(states, (list, tuple)):
        raise ValueError(f"states must be a non-empty list of arrays (the window), got {type(states).__name__}")
    ops = namespace(y, weights, *states)  # one library (TypeError naming them otherwise)
    checks.float_array(ops, y, "y")
    checks.same_device("history_skip", (y, "y"), *((s, f"states[{i}]") for i, s in enumerate(states)))
    mix = history_mix(states, weights, gate=gate, prune_threshold=prune_threshold)
    if checks.shape_of(y) != checks.shape_of(mix):
        raise ValueError(f"the layer output y {list(checks.shape_of(y))} must have the shape of the "
                         f"states in the window {list(checks.shape_of(mix))}")
    cdt = ops.compute_dtype(y)
    return ops.astype(ops.astype(y, cdt) + ops.astype(mix, cdt), y.dtype)


def layer_list(layers, module_type: type, framework: str, containers: tuple = ()) -> list:
    """`layers` as a non-empty list of `module_type` instances: a TypeError naming the first
    that is not one (or a single module given where an iterable is expected: `containers`
    are the module types that are iterables of layers), a ValueError for none."""
    if isinstance(layers, module_type) and not isinstance(layers, containers):
        raise TypeError(f"layers must be an iterable of {framework} (e.g. a list), got a single "
                        f"{type(layers).__name__}; wrap it in a list")
    try:
        layers = list(layers)
    except TypeError:
        raise TypeError(f"layers must be an iterable of {framework}, got {type(layers).__name__}") from None
    if not layers:
        raise ValueError(f"layers must hold at least one {framework} layer, got none")
    for i, layer in enumerate(layers):
        if not isinstance(layer, module_type):
            raise TypeError(f"layers[{i}] must be a module of type {framework}, got {type(layer).__module__}."
                            f"{type(layer).__name__}")
    return layers


def run_history_stack(x, layers: Sequence, skips: Sequence, history: int, keep):
    """The multi-history stack: window = [keep(x_0)]; for each layer l,
    x_{l+1} = skips[l](layers[l](x_l), window), window += [keep(x_{l+1})], the last
    `history` states kept. `keep` is the identity or the backend's detach."""
    window = [keep(x)]
    for layer, skip in zip(layers, skips):
        x = skip(layer(x), window)
        window = (window + [keep(x)])[-history:]
    return x


# --- stability metric --------------------------------------------------------------------


def history_gain_report(weights_per_layer: Sequence, history: int) -> list[dict]:
    """`metrics.gain_report`'s records for history mixing, one per layer (f = 0).

    Layer l maps its window of k states to x_{l+1} = sum_j w_j x_j: forward Amax gain
    sum_j |w_j| (the row sum), backward max_j |w_j| (the largest column sum); composite
    gains |c_l| (`history_composite`: x_l = c_l x_0); identity_distance ||w - e_newest||,
    the distance from a plain residual skip. The weights do not depend on the token, so
    max = mean = min.
    """
    weights_per_layer = list(weights_per_layer)  # an iterator would be used up by history_composite
    comps = history_composite(weights_per_layer, history)
    report = []
    for l, (w, c) in enumerate(zip(weights_per_layer, comps)):
        ops = namespace(w)
        a = ops.abs(w)
        k = checks.shape_of(w)[0]
        d = w - ops.eye_like(w, k)[k - 1]
        values = {"forward_gain": ops.sum(a), "backward_gain": ops.max(a), "composite_forward_gain": c,
                  "composite_backward_gain": c, "identity_distance": ops.sqrt(ops.sum(d * d))}
        values = {key: float(ops.stop_gradient(v)) for key, v in values.items()}  # numbers: no autograd history
        report.append({"layer": l, **{key: {s: v for s in ("max", "mean", "min")} for key, v in values.items()}})
    return report


def history_composite(weights_per_layer: Sequence, history: int) -> list:
    """Composite gains |c_l| of the skip path, one per layer (f = 0).

    With every layer's f set to zero, x_l = c_l x_0: c_0 = 1 and
    c_{l+1} = sum_j w_{l,j} c_{l+1-k+j} over the layer's window of k = len(w_l) <= K states
    (the weights already include the gate and pruning). The map x_0 -> x_l is c_l * I,
    whose forward and backward Amax gains are both |c_l|. Returns [|c_1|, ..., |c_L|].
    """
    history = check_history(history)
    coeffs, out, first = [1.0], [], None
    for l, w in enumerate(weights_per_layer):
        ops = namespace(w) if first is None else namespace(first, w)  # one library throughout
        first = w if first is None else first
        checks.float_array(ops, w, f"weights_per_layer[{l}]")
        checks.same_device("history_composite", (first, "weights_per_layer[0]"), (w, f"weights_per_layer[{l}]"))
        shape = checks.shape_of(w)
        k = min(history, len(coeffs))
        if shape != (k,):
            raise ValueError(f"weights_per_layer[{l}] must have shape [{k}] (layer {l} sees "
                             f"{k} states with history={history}), got {list(shape)}")
        window = coeffs[-k:]
        c = None
        for j in range(k):
            term = w[j] * window[j]
            c = term if c is None else c + term
        coeffs.append(c)
        out.append(ops.abs(c))
    return out
