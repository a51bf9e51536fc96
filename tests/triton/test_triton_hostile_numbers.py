"""MHC(impl='triton') used as a hostile user would, forward and every gradient vs the
float64 oracle (mhc_core.step under torch autograd on the same rounded weights and input):

- shapes the other files do not reach: n = 5 and 8 (the padded 8-stream tiles), C not a
  power of two and smaller than a block, T = 1, extra batch dims [B, T, n, C];
- layouts: x as a transposed / strided / expanded / stream-sliced view, a layer whose
  output y is non-contiguous, phi a transposed view of another parameter;
- parameters in bfloat16 (module.to(torch.bfloat16)), x in bfloat16;
- autograd: x without requires_grad, frozen mixing parameters, torch.utils.checkpoint
  (both modes), retain_graph twice, no_grad / inference_mode forwards, only some of the
  coefficients reaching the loss.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.utils.checkpoint as checkpoint
from torch import nn

import mhc_core
from mhc_core_torch import MHC
from mhc_core_torch.kernels import ops

ITERS = 4
TOL = {torch.float32: 1e-5, torch.bfloat16: 2e-2}


class Mix(nn.Module):
    """y = tanh(h @ w) [..., C], optionally returned as a non-contiguous (transposed-back) view."""

    def __init__(self, c: int, strided: bool = False):
        super().__init__()
        self.w = nn.Parameter(torch.randn(c, c, generator=torch.Generator().manual_seed(c)) / c ** 0.5)
        self.strided = strided

    def forward(self, h):
        if self.strided:  # same values, y.stride(-1) != 1
            return torch.tanh((self.w.t() @ h.transpose(-1, -2)).transpose(-1, -2))
        return torch.tanh(h @ self.w)


def _module(n, c, mixing_params, device, variant="mhc", strided=False, dtype=torch.float32):
    init = {k: torch.from_numpy(v) for k, v in mixing_params(n, c, variant).items()}
    return MHC(Mix(c, strided), n, c, init=init, variant=variant, impl="triton", iters=ITERS).to(device, dtype)


def _oracle(m: MHC, x: torch.Tensor, cot: torch.Tensor, view=lambda b: b):
    """(out, {name: grad}) of <mhc_core.step(view(x)), cot> in float64 on the CPU, with m's
    (rounded) parameters; grads of x and of every parameter that requires grad."""
    base = x.detach().double().cpu().requires_grad_(x.requires_grad)
    params = {k: p.detach().double().cpu().requires_grad_(p.requires_grad) for k, p in m.named_parameters()}
    w = params["layer.w"]
    f = lambda h: torch.tanh(h @ w)  # noqa: E731
    out = mhc_core.step(view(base), f, params["phi"], params["bias"], params["alpha"], variant=m.variant, iters=ITERS)
    wrt = ({"x": base} if x.requires_grad else {}) | {k: p for k, p in params.items() if p.requires_grad}
    grads = torch.autograd.grad((out * cot.double().cpu()).sum(), list(wrt.values()))
    return out, dict(zip(wrt, grads))


def _triton(m: MHC, x: torch.Tensor, cot: torch.Tensor, view=lambda b: b, forward=None):
    base = x.detach().clone().requires_grad_(x.requires_grad)
    out = (forward or m)(view(base))
    wrt = ({"x": base} if x.requires_grad else {}) | {k: p for k, p in m.named_parameters() if p.requires_grad}
    grads = torch.autograd.grad((out.float() * cot.float()).sum(), list(wrt.values()))
    return out, dict(zip(wrt, grads))


def _compare(got, want, tol, cid, assert_close):
    (out, grads), (out_r, grads_r) = got, want
    assert_close(out, out_r, tol, f"{cid}-out")
    assert set(grads) == set(grads_r), f"[{cid}] gradients of {sorted(grads)} vs {sorted(grads_r)}"
    for name in grads_r:
        assert grads[name].shape == grads_r[name].shape
        assert_close(grads[name], grads_r[name], tol, f"{cid}-grad-{name}")


def _data(shape, device, dtype=torch.float32, seed=0):
    rng = np.random.default_rng(seed)
    x = torch.from_numpy(rng.normal(size=shape)).to(device, dtype).requires_grad_()
    return x


# (variant, lead, n, C): n = 5, 8 pad to the 8-stream tiles; C = 24, 40 not powers of two,
# 3 smaller than any block; T = 1; [B, T] and [B, 1, T] batch dims; 17 and 33 tokens: two or
# three token blocks / splits of the backward, the last one partial (n = 16: res in 4 chunks)
SHAPES = [("mhc", (3,), 5, 24), ("mhc", (2, 3), 8, 40), ("hc", (5,), 5, 24), ("mhc", (1,), 4, 3),
          ("mhc", (2, 1, 3), 2, 48), ("hc", (1,), 8, 3), ("mhc", (7,), 16, 24), ("mhc", (17,), 5, 24),
          ("hc", (3, 11), 16, 3)]


@pytest.mark.parametrize("variant,lead,n,c", SHAPES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple)
                         else str(v))
def test_shapes_match_oracle(variant, lead, n, c, device, mixing_params, assert_close):
    m = _module(n, c, mixing_params, device, variant)
    x, cot = _data(lead + (n, c), device), _data(lead + (n, c), device, seed=1).detach()
    _compare(_triton(m, x, cot), _oracle(m, x, cot), TOL[torch.float32], f"{variant}-{lead}-n{n}-C{c}", assert_close)


VIEWS = {
    "transposed-lead": (lambda b: b.transpose(0, 1), (4, 3)),
    "strided-tokens": (lambda b: b[::2], (6, 2)),
    "strided-channels": (lambda b: b[..., ::2], (3, 2)),
    "expanded": (lambda b: b[:1].expand(3, 2, -1, -1), (1, 2)),
    "channels-last-ish": (lambda b: b.transpose(-1, -2).contiguous().transpose(-1, -2), (3, 2)),
    "stream-sliced": (lambda b: b[..., 1::2, :], (3, 2)),
}


@pytest.mark.parametrize("name", list(VIEWS))
def test_non_contiguous_x_matches_oracle(name, device, mixing_params, assert_close):
    """The view is taken of a leaf `base`; its gradient (through the view) vs the oracle's."""
    view, lead = VIEWS[name]
    n, c = 3, 12
    streams = 2 * n if name == "stream-sliced" else n
    chans = 2 * c if name == "strided-channels" else c
    m = _module(n, c, mixing_params, device)
    base = _data(lead + (streams, chans), device)
    out_shape = view(base).shape
    assert not view(base).is_contiguous()
    cot = _data(tuple(out_shape), device, seed=1).detach()
    _compare(_triton(m, base, cot, view), _oracle(m, base, cot, view), TOL[torch.float32], f"view-{name}",
             assert_close)


def test_non_contiguous_layer_output_matches_oracle(device, mixing_params, assert_close):
    m = _module(3, 12, mixing_params, device, strided=True)
    assert not m.layer(torch.zeros(2, 12, device=device)).is_contiguous()
    x, cot = _data((4, 3, 12), device), _data((4, 3, 12), device, seed=1).detach()
    _compare(_triton(m, x, cot), _oracle(m, x, cot), TOL[torch.float32], "strided-y", assert_close)


def test_phi_as_a_view_of_another_tensor(device, mixing_params, assert_close):
    """ops.step with phi = base.t() (a transposed view): forward and the gradient reaching base."""
    n, c = 3, 8
    p = mixing_params(n, c)
    base = torch.from_numpy(p["phi"].T.copy()).float().to(device).requires_grad_()
    bias, alpha = (torch.from_numpy(p[k]).float().to(device) for k in ("bias", "alpha"))
    x = _data((5, n, c), device).detach()
    cot = _data((5, n, c), device, seed=1).detach()
    out = ops.step(x, torch.tanh, base.t(), bias, alpha, iters=ITERS)
    (g,) = torch.autograd.grad((out * cot).sum(), base)
    base_r = base.detach().double().cpu().requires_grad_()
    out_r = mhc_core.step(x.double().cpu(), torch.tanh, base_r.t(), bias.double().cpu(), alpha.double().cpu(),
                          iters=ITERS)
    (g_r,) = torch.autograd.grad((out_r * cot.double().cpu()).sum(), base_r)
    assert_close(out, out_r, 1e-5, "phi-view-out")
    assert_close(g, g_r, 1e-5, "phi-view-grad")


@pytest.mark.parametrize("n", [3, 8])
def test_module_in_bfloat16_matches_oracle_on_its_rounded_weights(n, device, mixing_params, assert_close):
    """module.to(torch.bfloat16): phi, bias, alpha and the layer in bf16, x in bf16; the
    gradients come back in bf16, within bf16's tolerance of the float64 oracle run on the
    same bf16-rounded weights."""
    m = _module(n, 12, mixing_params, device, dtype=torch.bfloat16)
    assert {p.dtype for p in m.parameters()} == {torch.bfloat16}
    x, cot = _data((2, 3, n, 12), device, torch.bfloat16), _data((2, 3, n, 12), device, seed=1).detach()
    got = _triton(m, x, cot)
    assert got[0].dtype == torch.bfloat16 and all(g.dtype == torch.bfloat16 for g in got[1].values())
    _compare(got, _oracle(m, x, cot), TOL[torch.bfloat16], f"bf16-module-n{n}", assert_close)


def _frozen(m, names):
    for name in names:
        getattr(m, name).requires_grad_(False)
    return m


@pytest.mark.parametrize("case", ["x-no-grad", "frozen-mixing", "frozen-alpha", "layer-only"])
def test_partial_requires_grad_matches_oracle(case, device, mixing_params, assert_close):
    m = _module(3, 12, mixing_params, device)
    x = _data((2, 2, 3, 12), device)
    if case in ("x-no-grad", "layer-only"):
        x = x.detach()
    if case in ("frozen-mixing", "layer-only"):
        _frozen(m, ("phi", "bias", "alpha"))
    if case == "frozen-alpha":
        _frozen(m, ("alpha",))
    cot = _data((2, 2, 3, 12), device, seed=1).detach()
    _compare(_triton(m, x, cot), _oracle(m, x, cot), TOL[torch.float32], case, assert_close)


@pytest.mark.parametrize("reentrant", [False, True])
def test_checkpointed_module_matches_oracle(reentrant, device, mixing_params, assert_close):
    m = _module(3, 12, mixing_params, device)
    x, cot = _data((4, 3, 12), device), _data((4, 3, 12), device, seed=1).detach()
    want = _oracle(m, x, cot)
    xg = x.detach().clone().requires_grad_()
    out = checkpoint.checkpoint(m, xg, use_reentrant=reentrant)
    (out.float() * cot).sum().backward()  # the reentrant mode takes .backward(), not autograd.grad
    grads = {"x": xg.grad, **{k: p.grad for k, p in m.named_parameters()}}
    _compare((out, grads), want, TOL[torch.float32], f"checkpoint-reentrant{reentrant}", assert_close)


def test_retain_graph_twice_gives_the_same_gradients(device, mixing_params):
    m = _module(3, 12, mixing_params, device)
    x = _data((4, 3, 12), device)
    loss = m(x).square().sum()
    first = torch.autograd.grad(loss, [x, *m.parameters()], retain_graph=True)
    second = torch.autograd.grad(loss, [x, *m.parameters()])
    for a, b in zip(first, second):
        assert torch.equal(a, b)


def test_no_grad_and_inference_mode_forwards_match_oracle(device, mixing_params, assert_close):
    m = _module(5, 12, mixing_params, device)
    x = _data((4, 5, 12), device)
    want, _ = _oracle(m, x.detach(), x.detach())
    with torch.no_grad():
        a = m(x)
    with torch.inference_mode():
        b = m(x.detach())
    assert a.grad_fn is None and b.is_inference()
    assert_close(a, want, 1e-5, "no_grad")
    assert_close(b, want, 1e-5, "inference_mode")


@pytest.mark.parametrize("used", ["pre", "post", "res", "pre+res"])
def test_only_some_coefficients_reach_the_loss(used, device, mixing_params, assert_close):
    n, c = 5, 8
    p = {k: torch.from_numpy(v).float().to(device).requires_grad_() for k, v in mixing_params(n, c).items()}
    x = _data((6, n, c), device)
    idx = [("pre", "post", "res").index(u) for u in used.split("+")]
    outs = ops.coefficients(x, p["phi"], p["bias"], p["alpha"], iters=ITERS)
    grads = torch.autograd.grad(sum(outs[i].sum() for i in idx), [x, *p.values()])
    leaves = [t.detach().double().cpu().requires_grad_() for t in (x, *p.values())]
    want = mhc_core.coefficients(*leaves, iters=ITERS)
    want_grads = torch.autograd.grad(sum(want[i].sum() for i in idx), leaves)
    for name, g, w in zip(("x", "phi", "bias", "alpha"), grads, want_grads):
        assert_close(g, w, 1e-5, f"only-{used}-grad-{name}")
