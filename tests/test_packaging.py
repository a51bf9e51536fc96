"""What the distribution installs: only the library (no test adapters), under import names
of our own that install beside the other mHC libraries on the package index (`mhc`, import
`mhc`; `mhc-mlx`, import `mhc_mlx` / `mlx_mhc`), which the test environment installs too."""
import importlib.metadata as metadata
import os
import subprocess
import sys
import zipfile

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OURS = ("mhc_core", "mhc_core_torch", "mhc_core_mlx")
PEERS = {"mhc": ("mhc",), "mhc-mlx": ("mhc_mlx", "mlx_mhc")}


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    out = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    ROOT, "-w", str(out)], check=True, capture_output=True)
    (path,) = out.glob("mhc_core-*.whl")
    return path


def test_wheel_holds_only_the_library(wheel):
    names = zipfile.ZipFile(wheel).namelist()
    tops = {n.split("/")[0] for n in names if ".dist-info/" not in n}
    assert tops == set(OURS), f"the wheel installs {sorted(tops)}, expected exactly {sorted(OURS)}"
    leaked = [n for n in names if os.path.basename(n) in ("testing.py", "registry.py", "conftest.py")
              or "/tests/" in n or "adapter" in os.path.basename(n)]
    assert not leaked, f"test code in the wheel: {leaked}"


def test_distribution_name_is_ours(wheel):
    assert os.path.basename(wheel).startswith("mhc_core-")
    meta = zipfile.ZipFile(wheel).read(next(n for n in zipfile.ZipFile(wheel).namelist()
                                            if n.endswith(".dist-info/METADATA"))).decode()
    assert "\nName: mhc-core\n" in meta


def test_import_names_are_not_shared_with_other_mhc_libraries():
    owners = metadata.packages_distributions()
    for name in OURS:
        assert set(owners.get(name, [])) == {"mhc-core"}, f"{name} is installed by {owners.get(name)}"
    for dist, names in PEERS.items():
        metadata.distribution(dist)  # the peers are part of the test environment (dev extra)
        for name in names:
            assert set(owners.get(name, [])) == {dist}, f"{name} is installed by {owners.get(name)}"
            assert name not in OURS


def test_ours_works_with_the_peer_libraries_imported():
    """One interpreter imports `mhc`, `mhc_mlx` and ours; ours still matches the oracle."""
    code = """
import warnings
warnings.simplefilter("ignore")
import numpy as np, torch, mlx.core as mx
import mhc, mhc_mlx, mlx_mhc
import mhc_core, mhc_core_torch, mhc_core_mlx
assert mhc.__file__ != mhc_core.__file__ and mhc_mlx.__file__ != mhc_core_mlx.__file__
n, c = 4, 8
p = mhc_core.init_params(n, c, phi_std=0.3, alpha=1.0, seed=1, dtype=np.float32)
p = {k: v.astype(np.float64) for k, v in p.items()}  # the modules keep float32 parameters
x = np.random.default_rng(0).normal(size=(3, n, c))
want = mhc_core.step(x, np.tanh, p["phi"], p["bias"], p["alpha"])
t = mhc_core_torch.MHC(torch.nn.Tanh(), n, c, init=p, impl="reference").double()
got_t = t(torch.from_numpy(x)).detach().numpy()
import mlx.nn
m = mhc_core_mlx.MHC(mlx.nn.Tanh(), n, c, init=p)
got_m = np.array(m(mx.array(x.astype(np.float32))))
print(float(np.abs(got_t - want).max()), float(np.abs(got_m - want).max()))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    err_torch, err_mlx = map(float, out.split())
    assert err_torch <= 1e-12 and err_mlx <= 1e-5, out
