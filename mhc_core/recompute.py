"""Block size for recomputation (paper §4.3), shared by both backends' recompute paths.

Storing only each block's input stream and recomputing inside the block in backward keeps
about `n L / L_r + (n + 2) L_r` stream-sized activations for L mixing layers and block
size L_r, minimised at L_r* = sqrt(n L / (n + 2)).
"""
from __future__ import annotations

import math

import numpy as np

from . import checks


def paper_block_size(n: int, layers: int) -> int:
    """L_r* = sqrt(n L / (n + 2)) rounded to the nearest integer in [1, L] (paper §4.3).

    n: residual streams; layers: mixing layers L (a transformer block counts twice).
    """
    n, layers = checks.streams(n), checks.integer(layers, "layers")
    return min(layers, max(1, round(math.sqrt(n * layers / (n + 2)))))


def block_size(block) -> int:
    """`run_layers`' block: None (off) or an integer >= 0 (0: off; Python or numpy, floats,
    bools and strings refused); 'auto' is resolved by `resolve_block`, which knows n and L."""
    if block is None:
        return 0
    return checks.integer(block, "block", minimum=0, meaning="layers per recomputed block; 0 = off")


def resolve_block(block, n: int, layers: int) -> int:
    """0 / None / False: no recompute; 'auto' / True: the paper's size; an integer (Python,
    numpy or a 0-d array): that size, at most `layers`. n and layers are checked whatever
    the block (integers >= 1)."""
    n, layers = checks.streams(n), checks.integer(layers, "layers")
    if isinstance(block, str):
        if block == "auto":
            return paper_block_size(n, layers)
    elif isinstance(block, (bool, np.bool_)):
        return paper_block_size(n, layers) if block else 0
    else:
        try:
            return min(block_size(block), layers)  # None (off) or an integer >= 0
        except ValueError:
            pass
    raise ValueError(f"recompute block must be 0/None (off), 'auto' or an integer >= 1, got {block!r}")
