"""mhc_core_mlx modules inside MLX training code (transformations, quantization, weight
files, optimizers), each checked against the numpy float64 oracle, MLX's own autodiff of
the spec, or the module it was copied from."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

import mhc_core_mlx  # noqa: E402
from mlx_cases import assert_close  # noqa: E402


def _quantized_mhc(seed: int):
    module = mhc_core_mlx.MHC(nn.Sequential(nn.Linear(64, 64), nn.GELU(), nn.Linear(64, 64)), 2, 64, seed=seed)
    nn.quantize(module, group_size=64, bits=8)  # the Linears become QuantizedLinear (uint32 weights)
    mx.eval(module.parameters())
    return module


@pytest.mark.parametrize("through", ["file", "module_state"])
def test_quantized_layer_inside_mhc_round_trips(tmp_path, through):
    """save_state / module_state of an MHC whose layer nn.quantize packed into uint32 loads
    back into the same quantized layout: the same parameters, the same outputs."""
    src, dst = _quantized_mhc(seed=1), _quantized_mhc(seed=2)
    if through == "file":
        state = tmp_path / "quantized.safetensors"
        mhc_core_mlx.save_state(src, state)
    else:
        state = mhc_core_mlx.module_state(src)
    mhc_core_mlx.load_state(dst, state)
    want = mhc_core_mlx.module_state(src)
    for name, value in mhc_core_mlx.module_state(dst).items():
        assert value.dtype == want[name].dtype, name
        assert np.array_equal(value, want[name]), name
    x = mx.array(np.random.default_rng(0).normal(size=(2, 3, 2, 64)).astype(np.float32))
    assert_close(np.array(dst(x)), np.array(src(x)), 0.0, "quantized round trip")


def test_integer_values_into_a_floating_parameter_are_refused():
    """An integer array still cannot stand in for a floating parameter."""
    module = mhc_core_mlx.MHC(nn.Linear(4, 4), 2, 4)
    state = mhc_core_mlx.module_state(module)
    state["layer.weight"] = state["layer.weight"].astype(np.int32)
    with pytest.raises(TypeError, match=r"load_state: 'layer.weight' must be floating point, got dtype mlx.core.int32"):
        mhc_core_mlx.load_state(module, state)


def test_floating_values_into_a_quantized_weight_are_refused():
    """The packed uint32 weight of a quantized layer takes only uint32 values, not a float
    array of the same shape cast into it."""
    module = _quantized_mhc(seed=1)
    state = mhc_core_mlx.module_state(module)
    state["layer.0.weight"] = state["layer.0.weight"].astype(np.float32)
    with pytest.raises(TypeError, match=r"load_state: 'layer.0.weight' must have dtype mlx.core.uint32 "
                                        r"\(as the module's\), got dtype mlx.core.float32"):
        mhc_core_mlx.load_state(module, state)


class _MatmulLayer(nn.Module):
    """tanh(h @ w): a layer MLX can compile shapeless (no reshape of its own)."""

    def __init__(self, c: int):
        super().__init__()
        self.w = mx.array(np.random.default_rng(c).normal(0.0, 0.3, (c, c)).astype(np.float32))

    def __call__(self, h):
        return mx.tanh(h @ self.w)


@pytest.mark.parametrize("build", [
    lambda: mhc_core_mlx.MHC(_MatmulLayer(8), 3, 8),
    lambda: mhc_core_mlx.MHC(_MatmulLayer(8), 3, 8, variant="hc", impl="custom_vjp", compiled=True),
    lambda: mhc_core_mlx.MHC(_MatmulLayer(8), 3, 8, variant="mhc-lite", compiled=True),
    lambda: mhc_core_mlx.StreamHead(3, 8),
    lambda: mhc_core_mlx.HistorySequential([_MatmulLayer(8) for _ in range(3)], history=2),
], ids=["mhc", "hc-custom-vjp-compiled", "mhc-lite-compiled", "stream-head", "history"])
def test_shapeless_compile_never_reuses_a_wrong_shape(build):
    """mx.compile(module, shapeless=True) over changing batch and token counts (the same
    element count in another shape included): every call either raises MLX's ValueError
    (the coefficient math slices and reshapes by the token count, which a shapeless graph
    cannot re-infer) or returns the eager module's output; never a stale shape or value."""
    module = build()
    mx.eval(module.parameters())
    compiled = mx.compile(module, shapeless=True)
    rng = np.random.default_rng(0)
    tail = (8,) if isinstance(module, mhc_core_mlx.HistorySequential) else (3, 8)
    for lead in [(2, 3), (3, 2), (6, 1), (4, 5), (2, 3)]:
        x = mx.array(rng.normal(size=lead + tail).astype(np.float32))
        try:
            got = compiled(x)
            mx.eval(got)
        except ValueError:
            continue
        want = module(x)
        assert got.shape == want.shape, f"{lead}: shapeless compile returned {got.shape}, eager {want.shape}"
        assert_close(np.array(got), np.array(want), 1e-6, "shapeless", str(lead))


@pytest.mark.parametrize("variant, path", [("mhc", "reference"), ("mhc", "custom_vjp"), ("mhc-lite", "reference"),
                                           ("hc", "reference")])
def test_third_derivative_of_a_float64_step_matches_finite_differences(variant, path):
    """d/dphi <grad_phi(|grad_phi L|^2 ...)> (a third derivative of the step's output) in
    float64 on MLX equals the central difference of the second-order quantity, on the path
    MLX differentiates (the spec's ops) and on the explicit vjp."""
    import mhc_core
    from mhc_core_mlx import autograd as mlx_autograd

    n, c = 2, 3
    rng = np.random.default_rng(4)
    step = mlx_autograd.step if path == "custom_vjp" else mhc_core.step
    p = mhc_core.init_params(n, c, variant=variant, phi_std=0.5, seed=1, dtype=np.float64)
    with mx.stream(mx.cpu):
        phi, bias = (mx.array(p[k], dtype=mx.float64) for k in ("phi", "bias"))
        alpha = mx.array([0.9, 1.1, 0.7], dtype=mx.float64)
        x, w = (mx.array(rng.normal(size=(2, n, c)), dtype=mx.float64) for _ in range(2))
        direction = mx.array(rng.normal(size=phi.shape), dtype=mx.float64)

        def loss(a):
            return (step(x, lambda h: h + 0.1 * h * h * h, a, bias, alpha, variant=variant, iters=3) * w).sum()

        def second(a):  # a second-order quantity: d/da of |dL/da|^2, weighted
            return (mx.grad(lambda b: (mx.grad(loss)(b) ** 2).sum())(a) * a * a).sum()

        got = (mx.grad(second)(phi) * direction).sum().item()
        h = 1e-5
        want = (second(phi + h * direction).item() - second(phi - h * direction).item()) / (2 * h)
    assert abs(got - want) <= 1e-6 * abs(want), f"3rd derivative {got!r}, central difference {want!r}"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_exported_step_gives_the_module_output(tmp_path, dtype):
    """mx.export_function / mx.import_function of an MHC step (impl='reference', the path
    'auto' takes for small x) in float32 and float64 gives the module's own output."""
    with mx.stream(mx.cpu):
        module = mhc_core_mlx.MHC(nn.Linear(4, 4), 3, 4, impl="reference")
        module.set_dtype(getattr(mx, dtype))
        x = mx.array(np.random.default_rng(2).normal(size=(2, 3, 4)), dtype=getattr(mx, dtype))
        mx.eval(module.parameters())
        path = str(tmp_path / "step.mlxfn")
        mx.export_function(path, module, x)
        (got,) = mx.import_function(path)(x)
        assert_close(np.array(got), np.array(module(x)), 0.0, f"exported-{dtype}")


def test_export_of_the_custom_vjp_is_refused_by_mlx(tmp_path):
    """What the README says of impl='custom_vjp' (and 'auto' from 2**20 elements): MLX
    cannot serialize the custom function, an error rather than a file; 'reference' exports."""
    module = mhc_core_mlx.MHC(nn.Linear(4, 4), 3, 4, impl="custom_vjp")
    x = mx.array(np.random.default_rng(2).normal(size=(2, 3, 4)).astype(np.float32))
    with pytest.raises(ValueError, match="Unable to serialize primitive CustomTransforms"):
        mx.export_function(str(tmp_path / "step.mlxfn"), module, x)


def _history_stack(backend: str, mixing: str):
    if backend == "torch":
        torch = pytest.importorskip("torch")
        import mhc_core_torch

        model = mhc_core_torch.HistorySequential([torch.nn.Linear(4, 4) for _ in range(3)], history=2, mixing=mixing)
        return model, lambda logits: setattr(model.skips[1], "logits", torch.nn.Parameter(torch.zeros(logits))), \
            lambda: model(torch.ones(2, 4))
    model = mhc_core_mlx.HistorySequential([nn.Linear(4, 4) for _ in range(3)], history=2, mixing=mixing)
    return model, lambda logits: model.skips[1].update({"logits": mx.zeros(logits)}), lambda: model(mx.ones((2, 4)))


@pytest.mark.parametrize("backend", ["mlx", "torch"])
@pytest.mark.parametrize("mixing, logits, want", [("vector", (5,), r"\[2\]"), ("matrix", (5, 5), r"\[2, 2\]")])
def test_history_skip_with_logits_of_another_history_is_refused(backend, mixing, logits, want):
    """A skip of history K = 2 given logits of another history (model.update, or a
    parameter swapped in) refuses them by name, instead of mixing with the last 2."""
    _, set_logits, run = _history_stack(backend, mixing)
    set_logits(logits)
    with pytest.raises(ValueError, match=rf"logits must have shape {want} \(one per state of the window, history=2\)"):
        run()


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("impl", ["reference", "custom_vjp"])
def test_frozen_mixing_parameters_get_no_update(compiled, impl):
    """freeze(keys=[phi, bias, alpha]) + nn.value_and_grad + AdamW (weight decay moves any
    parameter it is handed): the mixing parameters stay bit for bit, only the layer's are
    trainable, and its gradients equal those of the eager reference module."""
    import mlx.optimizers as optim
    from mlx.utils import tree_flatten

    def build():
        module = mhc_core_mlx.MHC(nn.Linear(8, 8), 3, 8, seed=1, impl=impl, compiled=compiled)
        module.layer.update({"weight": mx.array(np.random.default_rng(3).normal(0, 0.3, (8, 8)).astype(np.float32)),
                             "bias": mx.zeros((8,))})
        module.update({"phi": mx.array(np.random.default_rng(4).normal(0, 0.3, module.phi.shape).astype(np.float32))})
        module.freeze(keys=["phi", "bias", "alpha"], recurse=False)
        return module

    module, reference = build(), build()
    reference.impl, reference.compiled = "reference", False
    assert sorted(k for k, _ in tree_flatten(module.trainable_parameters())) == ["layer.bias", "layer.weight"]
    mixing = {k: np.array(getattr(module, k)) for k in ("phi", "bias", "alpha")}
    x = mx.array(np.random.default_rng(5).normal(size=(2, 4, 3, 8)).astype(np.float32))
    loss = lambda m, x: (m(x) ** 2).mean()  # noqa: E731
    opt = optim.AdamW(learning_rate=1e-2, weight_decay=0.1)
    for _ in range(3):
        _, grads = nn.value_and_grad(module, loss)(module, x)
        _, want = nn.value_and_grad(reference, loss)(reference, x)
        assert sorted(k for k, _ in tree_flatten(grads)) == ["layer.bias", "layer.weight"]
        for (name, g), (_, w) in zip(tree_flatten(grads), tree_flatten(want)):
            assert_close(np.array(g), np.array(w), 1e-5, f"{impl}-compiled={compiled}", f"d/d{name}")
        opt.update(module, grads)
        reference.update(module.parameters())
        mx.eval(module.parameters(), opt.state)
    for k, v in mixing.items():
        assert np.array_equal(np.array(getattr(module, k)), v), f"frozen {k} moved"


def test_freezing_the_mixing_of_each_mhc_leaves_the_layers_biases_trainable():
    """The README's recipe (freeze each MHC with recurse=False) leaves every layer parameter
    trainable; model.freeze(keys=[...'bias'...]) matches at every depth and freezes the
    Linears' biases as well."""
    from mlx.utils import tree_flatten

    model = nn.Sequential(*(mhc_core_mlx.MHC(nn.Linear(4, 4), 3, 4) for _ in range(2)))
    layer_names = sorted(f"layers.{i}.layer.{p}" for i in range(2) for p in ("bias", "weight"))
    for module in model.modules():
        if isinstance(module, mhc_core_mlx.MHC):
            module.freeze(keys=["phi", "bias", "alpha"], recurse=False)
    assert sorted(k for k, _ in tree_flatten(model.trainable_parameters())) == layer_names
    model.unfreeze()
    model.freeze(keys=["phi", "bias", "alpha"])
    assert sorted(k for k, _ in tree_flatten(model.trainable_parameters())) == [k for k in layer_names if "weight" in k]
