"""mHC in existing MLX models: `convert(model, n)` for mlx-lm Llama-family decoders."""
from .convert import convert, load_converted, mhc_steps

__all__ = ["convert", "load_converted", "mhc_steps"]
