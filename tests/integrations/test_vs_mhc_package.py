"""HistorySequential / inject(history=K) against the real `mhc` package (0.5.x, import name
`mhc`): same layers, same logits and gates -> the same outputs and gradients.

Mapping: our constraint "softmax" is the package's mode "mhc" + constraint "simplex" (its
"simplex" is a softmax) and its mode "hc"; "identity" is its "identity". The package's
history is detached by default; ours is not, so every comparison sets detach_history
explicitly on both sides.
"""
from __future__ import annotations

import copy
import os

import numpy as np
import pytest
import torch
from torch import nn

try:
    import mhc
except ImportError:  # the dev extra installs it; CI (MHC_REQUIRE_BACKENDS set) must not skip
    if os.environ.get("MHC_REQUIRE_BACKENDS"):
        raise
    pytest.skip("the mhc package is not installed (pip install 'mhc-core[dev]')", allow_module_level=True)
from mhc.layers.matrix_skip import MatrixMHCSkip  # noqa: E402

from mhc_core_torch import HistorySequential, HistorySkip, inject  # noqa: E402

C, DEPTH = 6, 5


def _layers(seed: int = 0) -> list[nn.Module]:
    torch.manual_seed(seed)
    return [nn.Sequential(nn.Linear(C, C), nn.Tanh()) for _ in range(DEPTH)]


def _pair(constraint: str, detach: bool, gate: bool, history: int = 3, prune: float = 0.0,
          stochastic: bool = False, mode: str = "mhc"):
    """(ours, theirs) over copies of the same layers, with the same random logits / gates."""
    layers = _layers()
    ours = HistorySequential(copy.deepcopy(layers), history=history, constraint=constraint, gate=gate,
                             detach_history=detach, prune_threshold=prune, stochastic=stochastic,
                             temperature=0.8, epsilon=0.15)
    theirs = mhc.MHCSequential(copy.deepcopy(layers), max_history=history, mode=mode,
                               constraint="simplex" if constraint == "softmax" else constraint,
                               epsilon=0.15, temperature=0.8, detach_history=detach, use_gating=gate,
                               prune_threshold=prune, stochastic=stochastic)
    rng = np.random.default_rng(7)
    with torch.no_grad():
        for a, b in zip(ours.skips, theirs.skip_layers):
            logits = torch.from_numpy(rng.normal(0.0, 1.0, history).astype(np.float32))
            a.logits.copy_(logits)
            b.mixing_logits.copy_(logits)
            if gate:
                g = torch.tensor(float(rng.normal(1.0, 0.5)))
                a.gate.copy_(g)
                b.gate_logit.copy_(g)
    return ours, theirs


def _run(model, x):
    x = x.clone().requires_grad_(True)
    out = model(x)
    out.pow(2).sum().backward()
    return out.detach(), x.grad


def _grads(ours, theirs):
    """(ours, theirs) gradients of the layers' weights, the logits and the gates."""
    a = [p.grad for p in ours.layers.parameters()] + [s.logits.grad for s in ours.skips]
    b = [p.grad for p in theirs.wrapped_modules.parameters()] + [s.mixing_logits.grad for s in theirs.skip_layers]
    if ours.skips[0].gate is not None:
        a += [s.gate.grad for s in ours.skips]
        b += [s.gate_logit.grad for s in theirs.skip_layers]
    return a, b


@pytest.mark.parametrize("gate", [False, True], ids=["nogate", "gate"])
@pytest.mark.parametrize("detach", [False, True], ids=["attached", "detached"])
@pytest.mark.parametrize("constraint", ["softmax", "identity"])
def test_history_sequential_matches_mhc_sequential(constraint, detach, gate):
    ours, theirs = _pair(constraint, detach, gate)
    x = torch.randn(4, C, generator=torch.Generator().manual_seed(1))
    out_a, gx_a = _run(ours, x)
    out_b, gx_b = _run(theirs, x)
    torch.testing.assert_close(out_a, out_b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx_a, gx_b, rtol=1e-5, atol=1e-6)
    ga, gb = _grads(ours, theirs)
    for i, (a, b) in enumerate(zip(ga, gb)):
        if b is None:  # the package's logits of states never seen get no gradient
            assert a is None or float(a.abs().max()) == 0.0, f"grad {i}"
            continue
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=lambda m: f"grad {i}: {m}")
    if detach:  # no gradient through the skip: the input's gradient comes only through layer 0
        assert float(gx_a.abs().max()) > 0


def test_hc_mode_is_our_softmax():
    ours, theirs = _pair("softmax", False, False, mode="hc")
    x = torch.randn(3, C)
    torch.testing.assert_close(_run(ours, x)[0], _run(theirs, x)[0], rtol=1e-6, atol=1e-6)


def test_prune_threshold_matches():
    ours, theirs = _pair("softmax", False, True, history=4, prune=0.2)
    x = torch.randn(3, C)
    out_a, gx_a = _run(ours, x)
    out_b, gx_b = _run(theirs, x)
    torch.testing.assert_close(out_a, out_b, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gx_a, gx_b, rtol=1e-5, atol=1e-6)
    w = ours.skips[-1].weights(4)
    assert bool((w < 0.2).any()), "the case must prune something"


def test_stochastic_matches_with_the_same_seed():
    """Gumbel noise from torch's global RNG: the same seed gives the package's sample."""
    ours, theirs = _pair("softmax", False, False, stochastic=True)
    ours.train(), theirs.train()
    x = torch.randn(3, C)
    torch.manual_seed(123)
    out_a = ours(x)
    torch.manual_seed(123)
    out_b = theirs(x)
    torch.testing.assert_close(out_a, out_b, rtol=1e-6, atol=1e-6)
    torch.manual_seed(124)
    assert not torch.allclose(ours(x), out_a)  # a new sample per draw
    ours.eval()
    torch.testing.assert_close(ours(x), ours(x))  # no noise in eval mode


def test_own_generator_is_reproducible():
    layers = _layers()
    def make(seed):
        return HistorySequential(copy.deepcopy(layers), history=3, init="uniform", stochastic=True,
                                 generator=torch.Generator().manual_seed(seed))

    x = torch.randn(2, C)
    a, b, c = make(5)(x), make(5)(x), make(6)(x)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert not torch.allclose(a, c)


def test_identity_init_matches_the_package_init():
    ours = HistorySequential(_layers(), history=4, init="identity")
    theirs = mhc.MHCSequential(_layers(), max_history=4)
    for a, b in zip(ours.skips, theirs.skip_layers):
        torch.testing.assert_close(a.logits, b.mixing_logits.detach(), rtol=0, atol=0)


def test_matrix_mixing_matches_matrix_skip():
    """The package's MatrixMHCSkip: the last row of a 10-round Sinkhorn (eps 1e-9) mixes."""
    theirs = MatrixMHCSkip(max_history=4, iterations=10)
    ours = HistorySkip(4, mixing="matrix", iters=10, sinkhorn_eps=0.0)
    with torch.no_grad():
        logits = torch.randn(4, 4) * 2.0
        theirs.mixing_logits.copy_(logits)
        ours.logits.copy_(logits)
    states = [torch.randn(5, C) for _ in range(3)]
    y = torch.randn(5, C)
    torch.testing.assert_close(ours(y, states), theirs(y, states), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("gate", [False, True], ids=["nogate", "gate"])
def test_inject_history_matches_inject_mhc(gate):
    torch.manual_seed(3)
    base = nn.Sequential(nn.Linear(C, C), nn.ReLU(), nn.Linear(C, C), nn.Linear(C, 2 * C), nn.Linear(2 * C, 2 * C))
    ours = inject(copy.deepcopy(base), nn.Linear, history=3, detach_history=True, gate=gate, constraint="identity")
    theirs = mhc.inject_mhc(copy.deepcopy(base), nn.Linear, max_history=3, use_gating=gate, constraint="identity")
    if gate:
        with torch.no_grad():
            for a, b in zip([m for m in ours.modules() if isinstance(m, HistorySkip)],
                            [m for m in theirs.modules() if isinstance(m, mhc.MHCSkip)]):
                a.gate.fill_(0.3)
                b.gate_logit.fill_(0.3)
    x = torch.randn(4, C)
    for _ in range(2):  # the windows are cleared between forwards
        out_a, gx_a = _run(ours, x)
        out_b, gx_b = _run(theirs, x)
        torch.testing.assert_close(out_a, out_b, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(gx_a, gx_b, rtol=1e-5, atol=1e-6)
    wa = [p.grad for n, p in ours.named_parameters() if "module" in n]
    wb = [p.grad for n, p in theirs.named_parameters() if "base_module" in n]
    for a, b in zip(wa, wb):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("temperature", [0.3, 1.0, 2.5])
def test_weight_functions_match_the_package_constraints(temperature):
    """mhc_core's weight functions on torch against the package's own constraint functions:
    softmax = its project_simplex, identity = its project_identity_preserving, and the last
    row of matrix mixing = its project_doubly_stochastic (10 rounds, its eps 1e-9 vs our 0)."""
    import mhc_core
    from mhc.constraints import project_doubly_stochastic, project_identity_preserving, project_simplex

    gen = torch.Generator().manual_seed(int(temperature * 10))
    for k in (1, 2, 5):
        logits = torch.randn(k, generator=gen, dtype=torch.float64) * 3.0
        torch.testing.assert_close(mhc_core.history_weights(logits, constraint="softmax", temperature=temperature),
                                   project_simplex(logits, temperature=temperature), rtol=1e-12, atol=1e-14)
        for eps in (0.0, 0.15, 0.9):
            torch.testing.assert_close(
                mhc_core.history_weights(logits, constraint="identity", temperature=temperature, epsilon=eps),
                project_identity_preserving(logits, epsilon=eps, temperature=temperature), rtol=1e-12, atol=1e-14)
        square = torch.randn(k, k, generator=gen, dtype=torch.float64) * 2.0
        ours = mhc_core.skip_weights(square, k, mixing="matrix", temperature=temperature, iters=10, sinkhorn_eps=0.0)
        torch.testing.assert_close(ours, project_doubly_stochastic(square / temperature, iterations=10)[-1],
                                   rtol=1e-7, atol=1e-8)
