"""The public module API of both backends as a researcher dropping it into a model uses it.

- a wrapped layer that returns several values (an attention block's (output, weights)),
  a list or None gets one error naming the layer's output, on every path;
- `MHC.coefficients(x)` exists on both backends and gives the float64 oracle's numbers
  (tests/naive_oracle.py) and torch's gradients;
- `init_params(dtype=...)` and `MHC(init=...)` refuse what is not real floating data
  (an integer dtype rounded the biases, a complex init dropped its imaginary part);
- a weight file records each MHC's variant, and a module with another variant there
  refuses it on both backends (mhc and hc have the same shapes);
- keyword arguments of a call reach the wrapped layer on both backends, compiled or not.
"""
from __future__ import annotations

import numpy as np
import pytest

import mhc_core
import naive_oracle as naive

torch = pytest.importorskip("torch")
mx = pytest.importorskip("mlx.core")
import mlx.nn as mnn  # noqa: E402
import mhc_core_mlx  # noqa: E402
import mhc_core_torch  # noqa: E402

N, C = 3, 4
LAYER_OUTPUT = r"y must be a floating-point array of one library with x \(the layer's output"


def _run_step(backend: str, f, variant: str):
    """One step of `variant` around f on `backend`, on x of ones [2, n, C]."""
    n = 1 if variant == "residual" else N
    if backend == "numpy":
        return mhc_core.step(np.ones((2, n, C)), f, **mhc_core.init_params(n, C, variant=variant), variant=variant)
    if backend == "torch":
        return mhc_core_torch.MHC(f, n=n, dim=C, variant=variant)(torch.ones(2, n, C))
    module = mhc_core_mlx.MHC(f, n=n, dim=C, variant=variant, compiled=backend == "mlx-compiled")
    return module(mx.ones((2, n, C)))


@pytest.mark.parametrize("variant", ["mhc", "residual"])
@pytest.mark.parametrize("backend", ["numpy", "torch", "mlx", "mlx-compiled"])
@pytest.mark.parametrize("output,hint", [
    (lambda h: (h, None), "returned a tuple: a layer returning several values"),
    (lambda h: [h], "returned a list: a layer returning several values"),
    (lambda h: None, "got NoneType"),
], ids=["tuple", "list", "None"])
def test_a_layer_returning_several_values_or_nothing_is_named(backend, variant, output, hint):
    with pytest.raises(TypeError, match=LAYER_OUTPUT) as err:
        _run_step(backend, output, variant)
    assert hint in str(err.value)


def _coefficient_params(rng, n: int, variant: str) -> dict:
    width = mhc_core.param_shapes(n, C, variant)["phi"][1]
    return {"phi": rng.normal(0.0, 0.5, (n * C, width)), "bias": rng.normal(0.0, 1.0, width),
            "alpha": rng.normal(0.0, 1.0, 3)}


@pytest.mark.parametrize("variant,impl", [("mhc", "reference"), ("mhc", "custom_vjp"), ("hc", "custom_vjp"),
                                          ("mhc-lite", "auto")])
def test_mlx_mhc_coefficients_match_the_oracle_and_torch_gradients(variant, impl):
    rng = np.random.default_rng(1)
    p = _coefficient_params(rng, N, variant)
    x = rng.normal(size=(2, 5, N, C))
    cfg = {"iters": 7, "sinkhorn_eps": 1e-3, "post_scale": 1.5, "pre_eps": 1e-4}
    module = mhc_core_mlx.MHC(mnn.Linear(C, C), n=N, dim=C, variant=variant, impl=impl, **cfg)
    with mx.stream(mx.cpu):
        module.set_dtype(mx.float64)
        module.update({k: mx.array(v, dtype=mx.float64) for k, v in p.items()})
        got = module.coefficients(mx.array(x, dtype=mx.float64))
        want = naive.coefficients(x, **p, variant=variant, **cfg)
        for name, g, w in zip(("pre", "post", "res"), got, want):
            assert g.dtype == mx.float64, name
            np.testing.assert_allclose(np.array(g), w, rtol=1e-10, atol=1e-10, err_msg=name)

        # gradients of a weighted sum of the three outputs, against torch's float64 autograd
        weights = [rng.normal(size=w.shape) for w in want]

        def loss(model, xx):
            return sum((o * mx.array(w, dtype=mx.float64)).sum() for o, w in zip(model.coefficients(xx), weights))

        _, grads = mnn.value_and_grad(module, loss)(module, mx.array(x, dtype=mx.float64))
    tp = {k: torch.tensor(v, requires_grad=True) for k, v in p.items()}
    outs = mhc_core.coefficients(torch.tensor(x), tp["phi"], tp["bias"], tp["alpha"], variant=variant, **cfg)
    sum((o * torch.tensor(w)).sum() for o, w in zip(outs, weights)).backward()
    for k in p:
        np.testing.assert_allclose(np.array(grads[k]), tp[k].grad.numpy(), rtol=1e-9, atol=1e-10, err_msg=k)


def test_mlx_mhc_coefficients_refuses_residual_and_bad_input_as_torch_does():
    for module, x in ((mhc_core_torch.MHC(torch.nn.Identity(), n=1, dim=C, variant="residual"), torch.ones(2, 1, C)),
                      (mhc_core_mlx.MHC(mnn.Identity(), n=1, dim=C, variant="residual"), mx.ones((2, 1, C)))):
        with pytest.raises(ValueError, match="variant 'residual' has no coefficients"):
            module.coefficients(x)
    module = mhc_core_mlx.MHC(mnn.Identity(), n=N, dim=C)
    with pytest.raises(ValueError, match=r"x must have shape \[2, 3, 4\] \(\[\.\.\., n, C\] with n=3, C=4"):
        module.coefficients(mx.ones((2, N + 1, C)))
    with pytest.raises(TypeError, match="MHC expects an mlx.core.array x"):
        module.coefficients(np.ones((2, N, C), np.float32))


@pytest.mark.parametrize("dtype", [np.int32, np.bool_, np.complex64, "int64"])
def test_init_params_refuses_a_dtype_that_is_not_real_floating(dtype):
    with pytest.raises(TypeError, match=r"init_params: dtype must be a real floating-point dtype \(float16, "
                                        r"float32, float64\), got"):
        mhc_core.init_params(N, C, dtype=dtype)
    with pytest.raises(TypeError, match="init_head_params: dtype must be a real floating-point dtype"):
        mhc_core.init_head_params(N, C, dtype=dtype)


@pytest.mark.parametrize("dtype", [np.float16, np.float64, "float32"])
def test_init_params_in_each_floating_dtype_are_the_float64_values_rounded(dtype):
    want = mhc_core.init_params(N, C, variant="mhc-lite", phi_std=0.1, seed=3, dtype=np.float64)
    got = mhc_core.init_params(N, C, variant="mhc-lite", phi_std=0.1, seed=3, dtype=dtype)
    for k in want:
        assert got[k].dtype == np.dtype(dtype)
        np.testing.assert_array_equal(got[k], want[k].astype(dtype), err_msg=k)


def _init(n: int, phi) -> dict:
    width = mhc_core.param_shapes(n, C)["phi"][1]
    return {"phi": phi, "bias": np.zeros(width), "alpha": np.zeros(3)}


@pytest.mark.parametrize("backend", ["torch", "mlx"])
@pytest.mark.parametrize("phi,words", [
    (lambda: np.full((N * C, 15), 1 + 1j), "complex128"),
    (lambda: np.full((N * C, 15), "a"), "<U1"),
    (lambda: np.ones((N * C, 15), dtype=bool), "bool"),
], ids=["complex", "strings", "bool"])
def test_module_init_refuses_what_is_not_real_numbers(backend, phi, words):
    layer = torch.nn.Identity() if backend == "torch" else mnn.Identity()
    cls = mhc_core_torch.MHC if backend == "torch" else mhc_core_mlx.MHC
    with pytest.raises(TypeError, match=rf"MHC init\['phi'\] must be an array of real numbers, got dtype {words}"):
        cls(layer, n=N, dim=C, init=_init(N, phi()))


def test_module_init_of_another_library_is_checked_too_and_integers_are_numbers():
    with pytest.raises(TypeError, match=r"MHC init\['phi'\] must be an array of real numbers, got dtype torch.complex64"):
        mhc_core_torch.MHC(torch.nn.Identity(), n=N, dim=C, init=_init(N, torch.ones(N * C, 15, dtype=torch.complex64)))
    with pytest.raises(TypeError, match=r"MHC init\['phi'\] must be an array of real numbers, got dtype mlx.core.bool"):
        mhc_core_mlx.MHC(mnn.Identity(), n=N, dim=C, init=_init(N, mx.ones((N * C, 15), dtype=mx.bool_)))
    phi = np.arange(N * C * 15).reshape(N * C, 15) % 3 - 1  # integers: exact in float32
    t = mhc_core_torch.MHC(torch.nn.Identity(), n=N, dim=C, init=_init(N, torch.tensor(phi)))
    m = mhc_core_mlx.MHC(mnn.Identity(), n=N, dim=C, init=_init(N, mx.array(phi)))
    np.testing.assert_array_equal(t.phi.detach().numpy(), phi.astype(np.float32))
    np.testing.assert_array_equal(np.array(m.phi), phi.astype(np.float32))


# --- a weight file remembers each MHC's variant ----------------------------------------------
# mhc and hc have the same parameter shapes but read them differently (hc's biases are its
# static pre / post / res, mhc's are logits): a file of one loaded into the other computed
# other numbers without a word.


def _torch_stack(variant: str):
    return torch.nn.Sequential(*(mhc_core_torch.MHC(torch.nn.Linear(C, C), n=N, dim=C, variant=v)
                                 for v in ("mhc", variant)))


def _mlx_stack(variant: str):
    return mnn.Sequential(*(mhc_core_mlx.MHC(mnn.Linear(C, C), n=N, dim=C, variant=v) for v in ("mhc", variant)))


@pytest.mark.parametrize("writer,reader", [("torch", "torch"), ("torch", "mlx"), ("mlx", "torch"), ("mlx", "mlx")])
def test_a_weight_file_of_one_variant_is_refused_by_an_mhc_of_another(tmp_path, writer, reader):
    backends = {"torch": (_torch_stack, mhc_core_torch), "mlx": (_mlx_stack, mhc_core_mlx)}
    path = tmp_path / "w.safetensors"
    make, lib = backends[writer]
    lib.save_state(make("hc"), path)
    make, lib = backends[reader]
    with pytest.raises(ValueError, match=r"load_state: .*w.safetensors' holds an MHC of variant 'hc' at '1', "
                                         r"but this Sequential's MHC there is variant 'mhc'"):
        lib.load_state(make("mhc"), path)
    same = lib.load_state(make("hc"), path)  # the same variants load, with the writer's numbers
    rng = np.random.default_rng(0)
    x = rng.normal(size=(2, N, C)).astype(np.float32)
    state = {k: v.astype(np.float64) for k, v in lib.module_state(same).items()}
    want = x.astype(np.float64)
    for i, v in enumerate(("mhc", "hc")):
        w, b = state[f"{i}.layer.weight"], state[f"{i}.layer.bias"]
        want = naive.step(want, lambda h: h @ w.T + b, state[f"{i}.phi"], state[f"{i}.bias"], state[f"{i}.alpha"],
                          variant=v)
    got = same(torch.from_numpy(x)).detach().numpy() if reader == "torch" else np.array(same(mx.array(x)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_a_dict_state_and_a_file_without_variants_still_load(tmp_path):
    """Only files that record the variants are checked: numpy dicts carry none."""
    state = mhc_core_torch.module_state(_torch_stack("hc"))
    module = mhc_core_torch.load_state(_torch_stack("mhc"), state)
    np.testing.assert_array_equal(module[1].bias.detach().numpy(), state["1.bias"])


# --- keyword arguments reach the wrapped layer on both backends --------------------------------


class _TorchScaled(torch.nn.Module):
    def forward(self, h, *, scale, shift=0.0):
        return torch.tanh(h) * scale + shift


class _MLXScaled(mnn.Module):
    def __call__(self, h, *, scale, shift=0.0):
        return mx.tanh(h) * scale + shift


@pytest.mark.parametrize("variant", ["mhc", "hc", "mhc-lite", "residual"])
@pytest.mark.parametrize("compiled", [False, True])
def test_forward_keyword_arguments_reach_the_layer_on_both_backends(variant, compiled):
    n = 1 if variant == "residual" else N
    rng = np.random.default_rng(4)
    p = {} if variant == "residual" else _coefficient_params(rng, n, variant)
    x = rng.normal(size=(2, 3, n, C)).astype(np.float32)
    want = naive.step(x.astype(np.float64), lambda h: np.tanh(h) * 0.5 - 1.0, **p, variant=variant)
    init = {k: v.astype(np.float32) for k, v in p.items()} or None
    t = mhc_core_torch.MHC(_TorchScaled(), n=n, dim=C, variant=variant, init=init)
    m = mhc_core_mlx.MHC(_MLXScaled(), n=n, dim=C, variant=variant, init=init, compiled=compiled)
    np.testing.assert_allclose(t(torch.from_numpy(x), scale=0.5, shift=-1.0).detach().numpy(), want, rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(np.array(m(mx.array(x), scale=0.5, shift=-1.0)), want, rtol=1e-5, atol=1e-5)


def test_a_single_mhc_file_of_another_variant_is_refused(tmp_path):
    path = tmp_path / "one.safetensors"
    mhc_core_mlx.save_state(mhc_core_mlx.MHC(mnn.Linear(C, C), n=N, dim=C, variant="hc"), path)
    with pytest.raises(ValueError, match=r"holds an MHC of variant 'hc' at '<root>', but this MHC is variant 'mhc'\."):
        mhc_core_torch.load_state(mhc_core_torch.MHC(torch.nn.Linear(C, C), n=N, dim=C), path)
