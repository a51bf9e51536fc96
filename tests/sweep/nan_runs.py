"""A sweep whose `hc` runs start from a NaN embedding (every loss NaN from the first step),
for the tests of how the depth sweep records and survives non-finite runs."""
import numpy as np


def poison_hc_embedding(monkeypatch, depth_sweep) -> None:
    """Make depth_sweep's `hc` runs start with every embedding weight NaN."""
    from mhc_core.experiments.lm_config import init_lm_params

    def poisoned(cfg):
        p = init_lm_params(cfg)
        if cfg.variant == "hc":
            p["embed.weight"][:] = np.nan
        return p

    monkeypatch.setattr(depth_sweep, "init_lm_params", poisoned)
