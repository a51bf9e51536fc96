"""mhc_core_mlx: Manifold-Constrained Hyper-Connections as mlx.nn modules (mhc_core math).

The same modules, parameter names and shapes as mhc_core_torch: `MHC` (x [..., n, C] ->
[..., n, C]), `StreamHead` ([..., n, C] -> [..., C]), `HistorySequential`; weights move as
numpy dicts or safetensors files in torch's state_dict names (`module_state`, `load_state`,
`save_state`); `convert` / `load_converted` for mlx-lm Llama-family models.
float64 needs the CPU (Metal has none): use `with mx.stream(mx.cpu):` on a Mac.
"""
from mhc_core import __version__, expand_streams, reduce_streams

from .history import HistorySequential, HistorySkip
from .modules import MHC, StreamHead
from .state import load_state, module_state, save_state
from .integrations import convert, load_converted

__all__ = ["HistorySequential", "HistorySkip", "MHC", "StreamHead", "expand_streams", "load_state", "module_state",
           "reduce_streams", "save_state", "__version__", "convert", "load_converted"]
