"""The conformance adapter of the Triton path ('torch-triton' in backend_registry).

Same as the torch adapter (layers, dtypes of parameters, autograd gradients), except that
`core_fn` returns the Triton-backed functions (kernels/ops.py) and `make_mhc` builds
MHC(impl='triton'). On the CPU it runs in the Triton interpreter (TRITON_INTERPRET=1).

dtypes: float32 and bfloat16 (the interpreter emulates bf16 loads/stores and computes in
float32, as the GPU kernels do). float64 is the reference path's: MHC(impl='triton') on
float64 input is a clear error by design.
"""
from __future__ import annotations

from backend_registry import torch_adapter as _torch_testing
from mhc_core_torch.modules import MHC
from mhc_core_torch.state import load_state

from mhc_core_torch.kernels import ops


class Adapter(_torch_testing.Adapter):
    name = "torch-triton"
    dtypes = ("float32", "bfloat16")
    differentiable = True

    def core_fn(self, name: str):
        return {"sinkhorn": ops.sinkhorn, "coefficients": ops.coefficients,
                "pre_aggregate": ops.pre_aggregate, "post_residual": ops.post_residual}[name]

    def make_mhc(self, n, c, variant, layer, state, dtype, **cfg) -> MHC:
        dt = _torch_testing.DTYPES[dtype]
        # 'residual' has no kernel (impl='triton' refuses it): it runs the reference step
        impl = "reference" if variant == "residual" else "triton"
        module = MHC(_torch_testing.make_layer(layer, c), n, c, variant=variant, impl=impl, **cfg)
        if dt == _torch_testing.DTYPES["bfloat16"]:
            module.layer.to(dt)  # mixing parameters stay float32, as in the torch adapter
        else:
            module.to(dt)
        if variant == "residual":
            state = {k: v for k, v in state.items() if k not in ("phi", "bias", "alpha")}
        return load_state(module, state)
