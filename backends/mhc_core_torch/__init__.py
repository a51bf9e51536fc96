"""mhc_core_torch: Manifold-Constrained Hyper-Connections as torch.nn modules (mhc_core math).

`MHC` wraps a sub-layer in one mHC / mHC-lite / HC / residual step, `StreamHead` is the
learned stream reduction (DeepSeek-V4 hc_head), `HistorySequential` mixes a window of
earlier states into each layer's output (the `mhc` package's design); weights move
between backends as numpy dicts or safetensors files (`module_state`, `load_state`,
`save_state`). Shapes: x [..., n, C] -> MHC -> [..., n, C] -> StreamHead -> [..., C];
`expand_streams` / `reduce_streams` go [..., C] <-> [..., n, C]. Hugging Face models:
`convert` / `load_converted` (Llama-family decoders), `inject` (any block class),
`MHCSequential` (a stack of blocks), `patch_deepseek_v4`.
"""
from mhc_core import __version__, expand_streams, reduce_streams

from .history import HistorySequential, HistorySkip
from .modules import MHC, StreamHead
from .state import load_state, module_state, save_state
from .integrations import MHCSequential, convert, inject, load_converted, patch_deepseek_v4

__all__ = ["HistorySequential", "HistorySkip", "MHC", "StreamHead", "expand_streams", "load_state", "module_state",
           "reduce_streams", "save_state", "__version__",
           "MHCSequential", "convert", "inject", "load_converted", "patch_deepseek_v4"]
