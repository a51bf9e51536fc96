"""Suite-wide setup.

Without CUDA, Triton kernels run in the interpreter (TRITON_INTERPRET=1). Triton reads the
variable when a kernel is decorated, so it is set here, before any test module imports
the kernels. Tests marked `gpu` are skipped where CUDA is absent.
"""
import importlib.util
import os

import pytest


def _cuda_available() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    import torch

    return torch.cuda.is_available()


CUDA = _cuda_available()
if not CUDA:
    os.environ.setdefault("TRITON_INTERPRET", "1")


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)
