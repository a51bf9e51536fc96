"""Under torch.compile on the CPU the shim writes tiny batched matmuls as a broadcast
product and sum (mhc_core.xp._TorchOps): the same numbers as torch.matmul, and
matmul_concat the same as a matmul with the concatenated operand."""
from __future__ import annotations

import pytest
import torch

import mhc_core


def _traced(fn):
    # dynamo traces the Python (is_compiling() is True inside); the eager backend runs the graph
    return torch.compile(fn, backend="eager", fullgraph=True)


@pytest.mark.parametrize("shapes", [((5, 1, 4), (5, 4, 16)), ((5, 4, 5), (5, 5, 16)), ((2, 3, 4, 16), (2, 3, 16, 4)),
                                    ((5, 4, 16), (5, 16, 1))])
def test_tiny_matmul_under_compile_matches_matmul(shapes):
    torch.manual_seed(0)
    a, b = (torch.randn(s, dtype=torch.float64) for s in shapes)
    got = _traced(lambda a, b: mhc_core.namespace(a).matmul(a, b))(a, b)
    torch.testing.assert_close(got, torch.matmul(a, b), rtol=1e-12, atol=1e-12)


def test_large_matmul_under_compile_stays_a_matmul():
    """2-D products (the projection's) are not rewritten: no [.., p, q, C] product."""
    a, b = torch.randn(64, 48, dtype=torch.float64), torch.randn(48, 24, dtype=torch.float64)
    torch.testing.assert_close(_traced(lambda a, b: mhc_core.namespace(a).matmul(a, b))(a, b), a @ b)


def test_matmul_concat_under_compile_matches_concatenated_matmul():
    torch.manual_seed(1)
    a, x, y = torch.randn(6, 4, 5, dtype=torch.float64), torch.randn(6, 4, 16, dtype=torch.float64), \
        torch.randn(6, 1, 16, dtype=torch.float64)
    got = _traced(lambda a, x, y: mhc_core.namespace(a).matmul_concat(a, [x, y]))(a, x, y)
    torch.testing.assert_close(got, a @ torch.cat([x, y], dim=-2), rtol=1e-12, atol=1e-12)
