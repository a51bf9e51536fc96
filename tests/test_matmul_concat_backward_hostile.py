"""numpy's blocked `matmul_concat_backward` (and `matmul_concat`) under hostile operands:
no, one and several leading axes, no / one / many tokens with an uneven last block, parts
without rows, C = 0 or 1, p = 0, mixed dtypes, strided / Fortran / negative-stride /
broadcast / read-only views, non-finite entries and -0.0, leading axes that differ.

References: the float64 products with the concatenated operand, written here with
np.concatenate (d_parts = a^T @ dout split by rows, d_a = dout @ concat(parts)^T), and the
generic shim's per-part products (`Ops`, the same per-token products: bit for bit)."""
from __future__ import annotations

import numpy as np
import pytest

import mhc_core
from mhc_core.xp import Ops

FAST = mhc_core.namespace(np.zeros(1))
GENERIC = Ops(np, "numpy")


def _reference(a, parts, dout):
    """float64 (d_parts, d_a) of a @ concat(parts, -2) for the output gradient dout."""
    a, dout = np.asarray(a, np.float64), np.asarray(dout, np.float64)
    parts = [np.asarray(p_, np.float64) for p_ in parts]
    d_stacked = np.swapaxes(a, -1, -2) @ dout
    bounds = np.cumsum([0] + [p_.shape[-2] for p_ in parts])
    d_parts = [d_stacked[..., s:e, :] for s, e in zip(bounds[:-1], bounds[1:])]
    return d_parts, dout @ np.swapaxes(np.concatenate(parts, axis=-2), -1, -2)


def _block_tokens(monkeypatch, tokens: int, a, dout):
    """Blocks of `tokens` tokens of dout (at least one byte per token)."""
    per_token = max(1, a.shape[-2] * dout.shape[-1] * dout.dtype.itemsize)
    monkeypatch.setattr(type(FAST), "MATMUL_BLOCK_BYTES", tokens * per_token)


def _assert_matches(got, want, generic, tol=1e-12):
    """Shapes of the reference, dtypes of the generic version, numbers within tol of the
    float64 reference."""
    (got_parts, got_a), (want_parts, want_a), (gen_parts, gen_a) = got, want, generic
    assert len(got_parts) == len(want_parts)
    for g, w, e in zip([*got_parts, got_a], [*want_parts, want_a], [*gen_parts, gen_a]):
        assert g.shape == w.shape and g.dtype == e.dtype
        np.testing.assert_allclose(g, w, rtol=tol, atol=tol)


SHAPES = {  # p, rows q_i of the parts, C
    "x and y of mHC (n=4)": (4, (4, 1), 8),
    "one stream, C = 1": (1, (1, 1), 1),
    "a part without rows": (3, (0, 2, 1), 5),
    "p = 0": (0, (2, 1), 5),
    "C = 0": (3, (2, 1), 0),
    "no rows at all": (3, (0,), 4),
}


@pytest.mark.parametrize("lead", [(), (1,), (0,), (7,), (3, 5), (2, 1, 3)])
@pytest.mark.parametrize("case", list(SHAPES))
@pytest.mark.parametrize("block", [1, 3])
def test_blocked_backward_matches_float64_products(monkeypatch, lead, case, block):
    """Blocks of 1 or 3 tokens (3: an uneven last block for 7 and 15 tokens), float64."""
    p, rows, c = SHAPES[case]
    rng = np.random.default_rng(len(lead) + p + c)
    a, dout = rng.normal(size=lead + (p, sum(rows))), rng.normal(size=lead + (p, c))
    parts = [rng.normal(size=lead + (q, c)) for q in rows]
    _block_tokens(monkeypatch, block, a, dout)
    got = FAST.matmul_concat_backward(a, parts, dout)
    generic = GENERIC.matmul_concat_backward(a, parts, dout)
    _assert_matches(got, _reference(a, parts, dout), generic)
    for g, e in zip([*got[0], got[1]], [*generic[0], generic[1]]):
        np.testing.assert_array_equal(g, e)


DTYPES = [np.float16, np.float32, np.float64]


@pytest.mark.parametrize("a_dtype", DTYPES)
@pytest.mark.parametrize("part_dtypes", [(np.float32, np.float32), (np.float64, np.float32), (np.float16, np.float64)])
@pytest.mark.parametrize("dout_dtype", DTYPES)
def test_blocked_backward_gives_each_gradient_the_generic_dtype(monkeypatch, a_dtype, part_dtypes, dout_dtype):
    """Mixed dtypes: every gradient has the generic version's dtype (that of its own
    products: d_parts a's and dout's, d_a dout's and the parts'), whatever the token
    count, and its numbers within 64 units of the coarsest operand dtype's rounding."""
    rng = np.random.default_rng(5)
    a = rng.normal(size=(9, 4, 5)).astype(a_dtype)
    parts = [rng.normal(size=(9, q, 6)).astype(dt) for q, dt in zip((4, 1), part_dtypes)]
    dout = rng.normal(size=(9, 4, 6)).astype(dout_dtype)
    _block_tokens(monkeypatch, 2, a, dout)
    got = FAST.matmul_concat_backward(a, parts, dout)
    generic = GENERIC.matmul_concat_backward(a, parts, dout)
    assert got[0][0].dtype == np.result_type(a, dout) and got[1].dtype == np.result_type(dout, *parts)
    coarsest = max(float(np.finfo(dt).eps) for dt in (a_dtype, dout_dtype, *part_dtypes))  # of any product
    _assert_matches(got, _reference(a, parts, dout), generic, max(1e-12, 64 * coarsest))


def _views(rng):
    """(a, x, y, dout) as strided, Fortran-order, negative-stride and broadcast views."""
    a = rng.normal(size=(9, 6, 8, 2))[..., :4, :5, 0]  # sliced, last axis strided
    x = np.asfortranarray(rng.normal(size=(9, 4, 6)))
    y = rng.normal(size=(6, 1, 9)).transpose(2, 1, 0)  # [9, 1, 6], tokens fastest
    dout = rng.normal(size=(9, 4, 12))[::-1, :, ::-2]  # negative strides
    b_a = np.broadcast_to(rng.normal(size=(1, 4, 5)), (9, 4, 5))  # stride 0 over the tokens
    b_x = np.broadcast_to(rng.normal(size=(4, 6)), (9, 4, 6))
    return [(a, x, y, dout), (b_a, b_x, y, dout)]


@pytest.mark.parametrize("which", ["strided", "broadcast"])
@pytest.mark.parametrize("read_only", [False, True])
def test_blocked_backward_of_views_matches_float64_products(monkeypatch, which, read_only):
    """Non-contiguous operands (read-only ones too: nothing is written into them)."""
    a, x, y, dout = _views(np.random.default_rng(6))[["strided", "broadcast"].index(which)]
    if read_only:
        a, x, y, dout = (np.array(t) for t in (a, x, y, dout))
        for t in (a, x, y, dout):
            t.setflags(write=False)
    _block_tokens(monkeypatch, 2, a, dout)
    got = FAST.matmul_concat_backward(a, [x, y], dout)
    _assert_matches(got, _reference(a, [x, y], dout), GENERIC.matmul_concat_backward(a, [x, y], dout))


def test_blocked_backward_keeps_non_finite_entries_in_their_rows_and_columns(monkeypatch):
    """inf in x[i] reaches only column i of its token's d_a, nan in y only the last column,
    -inf in dout[o, c] only row o of d_a and column c of d_parts (a's entries finite and
    nonzero); a token whose a is all -0.0 gets the generic zeros, signs included."""
    rng = np.random.default_rng(8)
    a, dout = rng.uniform(0.5, 1.5, size=(9, 4, 5)), rng.normal(size=(9, 4, 6))
    x, y = rng.normal(size=(9, 4, 6)), rng.normal(size=(9, 1, 6))
    x[2, 1, 3], y[4, 0, 0], dout[6, 3, 2] = np.inf, np.nan, -np.inf
    a[7] = -0.0
    _block_tokens(monkeypatch, 2, a, dout)
    (dx, dy), d_a = FAST.matmul_concat_backward(a, [x, y], dout)
    (gen_x, gen_y), gen_a = GENERIC.matmul_concat_backward(a, [x, y], dout)
    (want_x, want_y), want_a = _reference(a, [x, y], dout)
    for got, gen, want in ((dx, gen_x, want_x), (dy, gen_y, want_y), (d_a, gen_a, want_a)):
        np.testing.assert_array_equal(got, gen)
        np.testing.assert_array_equal(np.signbit(got), np.signbit(gen))
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    bad = ~np.isfinite(d_a)
    assert bad[2, :, 1].all() and bad[4, :, 4].all() and bad[6, 3].all()
    assert bad.sum() == 4 + 4 + 5  # three tokens: column 1, column 4, row 3
    for d_part in (dx, dy):
        assert not np.isfinite(d_part[6, :, 2]).any()
        assert np.isfinite(np.delete(d_part, 6, axis=0)).all() and np.isfinite(np.delete(d_part[6], 2, axis=-1)).all()


@pytest.mark.parametrize("a_lead,part_lead", [((9,), (1,)), ((1,), (9,)), ((9,), ()), ((), (9,)), ((3, 1), (3, 4))])
def test_blocked_forward_with_broadcast_leading_axes_is_numpys_product(monkeypatch, a_lead, part_lead):
    """matmul_concat with leading axes that broadcast: numpy's broadcast product of the
    concatenation, not a reshape of one operand to the other's token count."""
    monkeypatch.setattr(type(FAST), "MATMUL_BLOCK_BYTES", 1)  # one token per block
    rng = np.random.default_rng(9)
    a = rng.normal(size=a_lead + (4, 5))
    parts = [rng.normal(size=part_lead + (q, 6)) for q in (4, 1)]
    want = a @ np.concatenate(parts, axis=-2)
    got = FAST.matmul_concat(a, parts)
    assert got.shape == want.shape
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("a_lead,part_lead", [((6,), (2, 3)), ((3, 2), (2, 3)), ((4,), (2,))])
def test_blocked_forward_with_leading_axes_that_do_not_broadcast_raises(monkeypatch, a_lead, part_lead):
    """Leading axes with the same token count that do not broadcast (6 vs 2 x 3): numpy's
    ValueError, as for the product of the concatenation, never a [6, p, C] result."""
    monkeypatch.setattr(type(FAST), "MATMUL_BLOCK_BYTES", 1)
    rng = np.random.default_rng(10)
    a = rng.normal(size=a_lead + (4, 5))
    parts = [rng.normal(size=part_lead + (q, 6)) for q in (4, 1)]
    with pytest.raises(ValueError):
        np.matmul(a, np.concatenate(parts, axis=-2))
    with pytest.raises(ValueError, match="broadcast"):
        FAST.matmul_concat(a, parts)
