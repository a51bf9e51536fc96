"""MLX data parallel: 2 real processes under `mlx.launch --backend ring` (TCP over
localhost; the backend that runs on this Linux CPU machine: `mx.distributed.is_available`
reports 'ring' and 'any', no MPI library is installed) vs one process on the same global
batches. Gradients are averaged by `mlx.nn.average_gradients`.

Same tolerances and reasons as test_distributed_torch.py (measured here: first-step
gradients and SGD parameters equal to ~1e-7, Adam parameters within 1.2e-5).
"""
from __future__ import annotations

import os
import shutil
import subprocess

import numpy as np
import pytest

from scale_helpers import PYTHON, REPO, assert_close, free_port, subprocess_env

mx = pytest.importorskip("mlx.core")
HERE = os.path.dirname(os.path.abspath(__file__))
_BESIDE = os.path.join(os.path.dirname(PYTHON), "mlx.launch")  # the launcher of this environment first
LAUNCH = _BESIDE if os.path.exists(_BESIDE) else (shutil.which("mlx.launch") or _BESIDE)


def _ring_available() -> bool:
    try:
        return bool(mx.distributed.is_available(backend="ring"))
    except TypeError:  # older mlx without the backend argument
        return bool(mx.distributed.is_available())


pytestmark = pytest.mark.skipif(not (_ring_available() and os.path.exists(LAUNCH)),
                                reason="mx.distributed ring backend or mlx.launch not available")


def _launch(tmp_path) -> dict[str, np.ndarray]:
    out = tmp_path / "mlx_ring.npz"
    last = None
    for _ in range(2):  # the ring listens on port and port + 1: retry once if one was taken
        cmd = [LAUNCH, "-n", "2", "--backend", "ring", "--starting-port", str(free_port()),
               PYTHON, os.path.join(HERE, "dist_worker_mlx.py"), str(out)]
        last = subprocess.run(cmd, cwd=REPO, env=subprocess_env(), capture_output=True, text=True, timeout=180)
        if last.returncode == 0:
            return dict(np.load(out))
    raise AssertionError(f"mlx.launch failed (rc {last.returncode}):\n{last.stdout[-3000:]}\n{last.stderr[-3000:]}")


def test_two_ring_ranks_equal_one_process(tmp_path):
    import dist_worker_mlx as W
    from mhc_core_mlx.training.distributed import DistInfo

    got = _launch(tmp_path)
    single = W.run(DistInfo())
    assert int(got["__world__"]) == 2, "the workers did not run as 2 ranks"
    assert set(got) == set(single), f"different keys: {sorted(set(got) ^ set(single))}"
    for opt in ("sgd", "adam"):
        assert_close(got[f"{opt}/__losses__"], single[f"{opt}/__losses__"], rtol=1e-6, atol=1e-6, case=f"mlx {opt} loss")
    for k in single:
        if k.startswith("sgd/grad/"):
            assert_close(got[k], single[k], rtol=1e-5, atol=1e-7, case=f"mlx ring first-step {k}")
        elif k.startswith("sgd/param/"):
            assert_close(got[k], single[k], rtol=1e-5, atol=1e-6, case=f"mlx ring after 3 SGD steps {k}")
        elif k.startswith("adam/param/"):
            assert_close(got[k], single[k], rtol=0.0, atol=1e-4, case=f"mlx ring after 3 Adam steps {k}")
    init = W.TinyLM(W.CFG)
    from mlx.utils import tree_flatten

    moved = max(np.abs(got[f"sgd/param/{k}"] - np.array(v)).max() for k, v in tree_flatten(init.parameters()))
    assert moved > 1e-3, f"SGD did not move the parameters ({moved:.2e}): the comparison would prove nothing"
