"""mHC in existing models: convert, inject or wrap their residual blocks.

- `convert(model, n)`: a transformers pre-LN decoder (Llama, Qwen2, Qwen3, ...) -> mHC, exact warm start.
- `load_converted(path)`: load what `save_pretrained` wrote after convert / inject.
- `inject(model, target, n)`: the same for any matching blocks (ViTLayer, BertLayer, ...).
- `MHCSequential(layers, n)`: mHC residual stack over f: [..., C] -> [..., C] layers.
- `patch_deepseek_v4(model)`: transformers' DeepSeek-V4 hyper-connections on mhc_core_torch (Triton on CUDA).
- `mhc_steps(model)`: every converted MHC step, for analysis.
"""
from .blocks import mhc_steps
from .convert import convert, load_converted
from .deepseek_v4 import patch_deepseek_v4
from .inject import inject
from .sequential import MHCSequential

__all__ = ["MHCSequential", "convert", "inject", "load_converted", "mhc_steps", "patch_deepseek_v4"]
