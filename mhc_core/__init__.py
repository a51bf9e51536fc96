"""mhc_core: Manifold-Constrained Hyper-Connections (arXiv 2512.24880), written once.

Every function takes and returns arrays of whatever library the caller passes (numpy,
torch, mlx; see `xp.py`) and imports no framework. Its numpy float64 run is the oracle
the backends and kernels are tested against. The math is in DESIGN.md §1.
"""
from .birkhoff import birkhoff_res, permutation_list
from .coefficients import coefficients, head_weights
from .config import MHCConfig
from .history import (
    history_composite,
    history_gain_report,
    history_mix,
    history_skip,
    history_weights,
    init_skip_logits,
    simplex_projection,
    skip_weights,
)
from .init import head_param_shapes, init_head_params, init_params, param_shapes
from .metrics import aggregate, amax_gain, composite, gain_report, identity_distance
from .sinkhorn import sinkhorn
from .streams import (
    expand_streams,
    head,
    post_residual,
    pre_aggregate,
    reduce_streams,
    residual_step,
    step,
)
from .xp import namespace

__all__ = [
    "MHCConfig", "aggregate", "amax_gain", "birkhoff_res", "coefficients", "composite",
    "expand_streams", "gain_report", "head", "head_param_shapes", "head_weights",
    "history_composite", "history_gain_report", "history_mix", "history_skip", "history_weights", "identity_distance",
    "init_head_params", "init_skip_logits", "init_params", "namespace", "param_shapes", "permutation_list",
    "post_residual", "pre_aggregate", "reduce_streams", "residual_step", "simplex_projection",
    "sinkhorn", "skip_weights", "step",
]
__version__ = "0.1.0"
