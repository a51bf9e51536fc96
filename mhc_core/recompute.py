"""Block size for recomputation (paper §4.3), shared by both backends' recompute paths.

Storing only each block's input stream and recomputing inside the block in backward keeps
about `n L / L_r + (n + 2) L_r` stream-sized activations for L mixing layers and block
size L_r, minimised at L_r* = sqrt(n L / (n + 2)).
"""
from __future__ import annotations

import math

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
    """0 / None / False: no recompute; 'auto' / True: the paper's size; an int: that size."""
    if block is None or block is False or (not isinstance(block, str) and block == 0):
        return 0
    if block is True or block == "auto":
        return paper_block_size(n, layers)
    try:
        size = checks.integer(block, "block", minimum=1)
    except ValueError:
        raise ValueError(f"recompute block must be 0/None (off), 'auto' or an integer >= 1, got {block!r}") from None
    return min(size, layers)
