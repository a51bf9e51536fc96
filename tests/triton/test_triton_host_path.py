"""The eager fast paths of the Triton entry points give the numbers of the routes they
replace, and keep every check:

- direct launcher calls (`_common.DIRECT_EAGER_LAUNCH`) vs every launch through its
  torch.library op (the route torch.compile takes): bitwise the same outputs and gradients;
- no autograd.Function when nothing requires grad: the same outputs as with one;
- remembered argument checks (`triton_gate.passed_checks`): a repeat of a passed signature
  skips them, anything else (and anything that failed) meets them again;
- the stub mode of benchmarks/bench_host_overhead.py runs and counts fewer Python calls on
  the fast paths than through the ops.
"""
from pathlib import Path

import numpy as np
import pytest
import torch

import mhc_core
from mhc_core_torch import MHC, triton_gate
from mhc_core_torch.kernels import _checked, _common, ops

ROOT = Path(__file__).resolve().parents[2]
N, C, T = 4, 16, 3


def _inputs(device, seed=0, tokens=T):
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, dtype=torch.float32).to(device)  # noqa: E731
    p = {"phi": r(N * C, N * N + 2 * N) / (N * C) ** 0.5, "bias": r(N * N + 2 * N), "alpha": r(3).abs() + 0.5}
    u = lambda *s: torch.rand(*s, generator=g).to(device)  # noqa: E731
    return r(tokens, N, C), r(tokens, C), u(tokens, N), u(tokens, N, N), p


def _run_all(device, tokens):
    """Outputs and gradients of each op (fwd + bwd) and of MHC(impl='triton')."""
    x, y, pre, res, p = _inputs(device, tokens=tokens)
    out = {}

    def grads(name, fn, *inputs):
        leaves = [a.detach().clone().requires_grad_() for a in inputs]
        result = fn(*leaves)
        result = result if isinstance(result, tuple) else (result,)
        cots = [torch.ones_like(r) for r in result]
        out[name] = (*result, *torch.autograd.grad(result, leaves, cots))

    grads("coefficients", lambda *a: ops.coefficients(*a, iters=6), x, p["phi"], p["bias"], p["alpha"])
    grads("pre_aggregate", ops.pre_aggregate, x, pre)
    grads("post_residual", ops.post_residual, x, y, pre, res)
    grads("sinkhorn", lambda logits: ops.sinkhorn(logits, iters=6), res)
    m = MHC(torch.nn.Tanh(), N, C, init=p, iters=6, impl="triton").to(device)
    xm = x.detach().clone().requires_grad_()
    y_m = m(xm)
    out["MHC"] = (y_m, *torch.autograd.grad(y_m, (xm, *m.parameters()), torch.ones_like(y_m)))
    return out


@pytest.mark.parametrize("tokens", [T, 40])  # one dphi / dbias partial; several (summed)
def test_direct_launch_matches_op_route(device, monkeypatch, tokens):
    fast = _run_all(device, tokens)
    monkeypatch.setattr(_common, "DIRECT_EAGER_LAUNCH", False)
    via_ops = _run_all(device, tokens)
    for name, tensors in via_ops.items():
        assert len(fast[name]) == len(tensors)
        for i, (a, b) in enumerate(zip(fast[name], tensors)):
            assert torch.equal(a, b), f"{name}[{i}]: direct launch differs from the torch.library op"


@pytest.mark.gpu
@pytest.mark.parametrize("tokens", [8, 300])  # one dphi partial / several token splits
def test_direct_launch_matches_op_route_on_gpu(tokens, monkeypatch):
    """MHC(impl='triton') fwd + bwd at a real width in bf16, both routes: bitwise equal."""
    n, c = 4, 1024
    torch.manual_seed(0)
    m = MHC(torch.nn.Tanh(), n, c, impl="triton").cuda()  # an elementwise layer: no cuBLAS in the compare
    x = torch.randn(tokens, n, c, device="cuda", dtype=torch.bfloat16)

    def run():
        xg = x.clone().requires_grad_()
        out = m(xg)
        return (out, *torch.autograd.grad(out, (xg, *m.parameters()), torch.ones_like(out)))

    fast = run()
    monkeypatch.setattr(_common, "DIRECT_EAGER_LAUNCH", False)
    for i, (a, b) in enumerate(zip(fast, run())):
        assert torch.equal(a, b), f"output/gradient {i} differs between the routes"


def test_no_grad_forward_matches_tracked_forward(device):
    x, y, pre, res, p = _inputs(device, seed=1)
    m = MHC(torch.nn.Tanh(), N, C, init=p, iters=6, impl="triton").to(device)
    tracked = (ops.coefficients(x.requires_grad_(), p["phi"], p["bias"], p["alpha"], iters=6),
               ops.pre_aggregate(x, pre), ops.post_residual(x, y, pre, res), m(x))
    assert all(t.grad_fn is not None for t in (*tracked[0], *tracked[1:]))
    with torch.no_grad():
        untracked = (ops.coefficients(x, p["phi"], p["bias"], p["alpha"], iters=6),
                     ops.pre_aggregate(x, pre), ops.post_residual(x, y, pre, res), m(x))
    for a, b in zip((*tracked[0], *tracked[1:]), (*untracked[0], *untracked[1:])):
        assert b.grad_fn is None and torch.equal(a.detach(), b)


def test_forward_mode_ad_is_refused_not_dropped(device):
    """The kernels have no forward-mode derivative: a dual tensor (torch.autograd.forward_ad)
    or a torch.func transform must meet the autograd.Function's refusal, never a direct
    launch that returns an output without its tangent."""
    import torch.autograd.forward_ad as fwad

    x, y, pre, res, p = _inputs(device, seed=3)
    mixing = (p["phi"], p["bias"], p["alpha"])
    calls = {"coefficients": lambda a: ops.coefficients(a, *mixing, iters=6)[2],
             "pre_aggregate": lambda a: ops.pre_aggregate(a, pre),
             "post_residual": lambda a: ops.post_residual(a, y, pre, res),
             "step": lambda a: ops.step(a, torch.tanh, *mixing, iters=6)}
    for name, fn in calls.items():
        with fwad.dual_level(), pytest.raises(NotImplementedError, match="jvp"):
            fn(fwad.make_dual(x, torch.ones_like(x)))
        with pytest.raises(RuntimeError, match="functorch transforms"):
            torch.func.jvp(fn, (x,), (torch.ones_like(x),))


def test_double_backward_still_refused_on_the_direct_path(device):
    _, _, _, _, p = _inputs(device)
    m = MHC(torch.nn.Tanh(), N, C, init=p, iters=6, impl="triton").to(device)
    x = torch.randn(T, N, C, device=device, requires_grad=True)
    (g,) = torch.autograd.grad(m(x).square().sum(), x, create_graph=True)
    with pytest.raises(RuntimeError, match="double backward through the Triton kernels"):
        g.sum().backward()


def test_remembered_checks_skip_only_exact_repeats(device):
    x, y, pre, res, p = _inputs(device)
    calls = []
    checked = triton_gate.passed_checks(lambda *a: calls.append(a) or len(calls))
    assert checked(x, 20, 1e-6) == checked(x, 20, 1e-6) == 1  # the repeat is answered from memory
    checked(x, 20.0, 1e-6)  # 20.0 is not 20 for a count: checked again
    checked(x[:2], 20, 1e-6)  # another shape
    checked(x.double(), 20, 1e-6)  # another dtype
    checked(torch.nn.Parameter(x), 20, 1e-6)  # another type
    checked(x, 20, np.float64(1e-6))  # a numpy scalar: never remembered
    checked(x, 20, np.float64(1e-6))
    assert len(calls) == 7


def test_remembered_checks_never_remember_a_failure(device):
    x, y, pre, res, p = _inputs(device)
    ops.pre_aggregate(x, pre)  # a passing signature, remembered
    for _ in range(2):  # the same bad call meets the check every time
        with pytest.raises(ValueError, match="pre must have shape"):
            ops.pre_aggregate(x, pre[:, :2])
        with pytest.raises(ValueError, match="iters must be an integer"):
            ops.coefficients(x, p["phi"], p["bias"], p["alpha"], iters=20.0)
        with pytest.raises(ValueError, match="rms_eps must be a finite number"):
            ops.coefficients(x, p["phi"], p["bias"], p["alpha"], rms_eps=float("nan"))
        with pytest.raises(TypeError, match="x must be a floating-point array"):
            ops.post_residual(x.to(torch.int32), y, pre, res)
    assert all(v is not None for v in _checked.pre_aggregate_args.passed.values())


def test_settings_passed_as_0d_tensors_are_checked_and_used_every_call(device, assert_close):
    """A setting given as a 0-d tensor (iters, an eps) is a value, not an array: a second
    call with another value must use that value and meet the checks again, never the
    first call's remembered settings."""
    x, _, _, _, p = _inputs(device, seed=2)
    mixing = (p["phi"], p["bias"], p["alpha"])
    x64 = x.double().cpu().numpy()
    oracle = lambda **cfg: mhc_core.coefficients(x64, *(a.double().cpu().numpy() for a in mixing), **cfg)  # noqa: E731
    for iters in (20, 1):  # the second value differs from the first: its own numbers
        got = ops.coefficients(x, *mixing, iters=torch.tensor(iters))
        for g, want in zip(got, oracle(iters=iters)):
            assert_close(g, want, 1e-5, f"iters={iters}")
    ops.coefficients(x, *mixing, rms_eps=torch.tensor(1e-6))
    for bad in (float("nan"), float("inf"), -1.0):
        with pytest.raises(ValueError, match="rms_eps must be a finite number"):
            ops.coefficients(x, *mixing, rms_eps=torch.tensor(bad))
    ops.step(x, torch.tanh, *mixing, sinkhorn_eps=torch.tensor(1e-6))
    with pytest.raises(ValueError, match="sinkhorn_eps must be a finite number"):
        ops.step(x, torch.tanh, *mixing, sinkhorn_eps=torch.tensor(float("nan")))


def test_remembered_checks_follow_the_gate_state(monkeypatch, device):
    """A signature remembered as runnable is checked again once the gate's state changes
    (as tests do: the interpreter flag, Triton failing to import)."""
    if device == "cuda":
        pytest.skip("runs CPU tensors through the interpreter")
    x = torch.randn(2, 4, 3)
    with pytest.raises(RuntimeError, match="x is on cpu"):  # remembered under INTERPRETED=True...
        monkeypatch.setattr(triton_gate, "INTERPRETED", True)
        m = MHC(torch.nn.Identity(), 4, 3, impl="triton")
        m(x)
        monkeypatch.setattr(triton_gate, "INTERPRETED", False)  # ...refused once it is False
        m(x)


def test_remembered_checks_are_bounded(device, monkeypatch):
    monkeypatch.setattr(triton_gate, "MAX_REMEMBERED", 3)
    checked = triton_gate.passed_checks(lambda *a: None)
    for t in range(1, 8):
        checked(torch.zeros(t, N, C, device=device))
        assert len(checked.passed) <= 3


def test_bench_host_overhead_stub_mode(tmp_path, monkeypatch, device):
    """The CI run of the benchmark (launches stubbed, a few calls): every row timed, and
    the fast paths make fewer Python calls than every launch through the torch.library ops."""
    if device == "cuda":
        pytest.skip("the stub mode stubs the interpreter's launches; on a GPU run the benchmark itself")
    monkeypatch.syspath_prepend(str(ROOT / "benchmarks"))
    import bench_host_overhead as bench

    args = ["--stub-kernels", "--out", str(tmp_path), "--calls", "2", "--rounds", "1", "--channels", "64",
            "--only", "ops.pre_aggregate", "MHC(triton)"]
    fast = {r["case"]: r for r in bench.main(args)["results"]}
    assert set(fast) == {"ops.pre_aggregate fwd", "ops.pre_aggregate fwd+bwd", "MHC(triton) fwd",
                         "MHC(triton) fwd+bwd"}
    assert all(r["us_per_call"] > 0 and r["python_calls"] > 0 for r in fast.values())
    assert (tmp_path / "bench_host_overhead.json").is_file() and (tmp_path / "bench_host_overhead.md").is_file()
    monkeypatch.setattr(_common, "DIRECT_EAGER_LAUNCH", False)
    slow = {r["case"]: r for r in bench.main(args)["results"]}
    for case in fast:
        assert fast[case]["python_calls"] < slow[case]["python_calls"], case
