"""mx.compile paths give the eager numbers: `MHC(compiled=True)` (compiled mixing math)
and whole-module `mx.compile(module, inputs=module.state)`. On the CPU both are bit-exact
here (measured 0.0); the asserts use the dtype tolerances so Metal's fused kernels pass too."""
from __future__ import annotations

import numpy as np
import pytest

mx = pytest.importorskip("mlx.core")
nn = pytest.importorskip("mlx.nn")

import mhc_core_mlx  # noqa: E402
from mhc_core_mlx.modules import _compiled_mixing  # noqa: E402
from backend_registry.mlx_adapter import Adapter  # noqa: E402
from mlx_cases import TOL, assert_close, make_state  # noqa: E402

ADAPTER = Adapter()


@pytest.mark.parametrize("dtype", ADAPTER.dtypes)
@pytest.mark.parametrize("variant, layer, n", [("mhc", "mlp", 3), ("hc", "linear", 2), ("residual", "mlp", 1)])
def test_compiled_forward_and_grads_equal_eager(variant, layer, n, dtype):
    c, case = 4, f"{variant}-{layer}-n{n}-{dtype}"
    state = make_state(variant, layer, n, c)
    eager = ADAPTER.make_mhc(n, c, variant, layer, state, dtype)
    compiled = ADAPTER.make_mhc(n, c, variant, layer, state, dtype, compiled=True)
    rng = np.random.default_rng(0)
    x = ADAPTER.asarray(rng.normal(size=(2, n, c)), dtype)
    cot = ADAPTER.asarray(rng.normal(size=(2, n, c)), dtype)
    out_e, grads_e = ADAPTER.step_and_grads(eager, x, cot)
    out_c, grads_c = ADAPTER.step_and_grads(compiled, x, cot)
    assert out_c.dtype == out_e.dtype
    assert_close(ADAPTER.to_numpy(out_c), ADAPTER.to_numpy(out_e), TOL[dtype], case, "out")
    assert set(grads_c) == set(grads_e)
    for name in grads_e:
        assert_close(ADAPTER.to_numpy(grads_c[name]), ADAPTER.to_numpy(grads_e[name]), TOL[dtype], case, f"d/d{name}")


def test_compiled_graphs_are_cached_per_config_and_honour_it():
    """Two configs must not share a compiled graph (iters is baked in at trace time)."""
    state = make_state("mhc", "linear", 3, 4)
    x = mx.array(np.random.default_rng(1).normal(size=(2, 3, 4)).astype(np.float32))
    outs = {}
    for iters in (1, 20):
        for compiled in (False, True):
            m = mhc_core_mlx.MHC(nn.Linear(4, 4), 3, 4, iters=iters, compiled=compiled)
            outs[iters, compiled] = np.array(mhc_core_mlx.load_state(m, state)(x))
        assert_close(outs[iters, True], outs[iters, False], TOL["float32"], f"iters={iters}")
    gap = float(np.max(np.abs(outs[1, True] - outs[20, True])))
    assert gap > 1e-3, f"iters=1 and iters=20 gave the same output (max diff {gap:.1e}): stale compiled graph?"
    hits = _compiled_mixing.cache_info().hits
    mhc_core_mlx.MHC(nn.Linear(4, 4), 3, 4, iters=20, compiled=True)(x)
    assert _compiled_mixing.cache_info().hits == hits + 1, "a second layer with the same config should reuse the graph"


def test_whole_module_compile_tracks_loaded_weights_and_shapes():
    """The documented mlx pattern: parameters as implicit inputs, so load_state is seen."""
    module = ADAPTER.make_mhc(3, 4, "mhc", "mlp", make_state("mhc", "mlp", 3, 4, seed=0), "float32")
    forward = mx.compile(module, inputs=module.state)
    x = mx.array(np.random.default_rng(2).normal(size=(2, 3, 4)).astype(np.float32))
    before = np.array(forward(x))
    assert_close(before, np.array(module(x)), TOL["float32"], "whole-compile")
    mhc_core_mlx.load_state(module, make_state("mhc", "mlp", 3, 4, seed=9))
    after = np.array(forward(x))
    assert float(np.max(np.abs(after - before))) > 1e-3, "compiled forward did not see the new weights"
    assert_close(after, np.array(module(x)), TOL["float32"], "whole-compile-reloaded")
    x5 = mx.array(np.random.default_rng(3).normal(size=(5, 3, 4)).astype(np.float32))
    assert_close(np.array(forward(x5)), np.array(module(x5)), TOL["float32"], "whole-compile-new-shape")
