"""mhc_core_mlx: Manifold-Constrained Hyper-Connections as mlx.nn modules (mhc_core math).

float64 needs the CPU (Metal has none): use `with mx.stream(mx.cpu):` on a Mac.
"""
from mhc_core import __version__, expand_streams, reduce_streams

from .history import HistorySequential, HistorySkip
from .modules import MHC, StreamHead
from .state import load_state, module_state, save_state
from .integrations import convert, load_converted

__all__ = ["HistorySequential", "HistorySkip", "MHC", "StreamHead", "expand_streams", "load_state", "module_state",
           "reduce_streams", "save_state", "__version__", "convert", "load_converted"]
