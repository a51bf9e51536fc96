"""Defaults shared by every backend: DeepSeek-V4's, so its weights run unchanged."""
from __future__ import annotations

from dataclasses import asdict, dataclass

from . import checks


@dataclass(frozen=True)
class MHCConfig:
    """Hyper-parameters of one mHC / HC step (DESIGN §1).

    iters: Sinkhorn rounds. rms_eps: eps of the unweighted RMSNorm of the flattened
    state. pre_eps: added to `pre` after the sigmoid. sinkhorn_eps: Sinkhorn's eps.
    post_scale: `post = post_scale * sigmoid(...)`.
    """

    iters: int = 20
    rms_eps: float = 1e-6
    pre_eps: float = 1e-6
    sinkhorn_eps: float = 1e-6
    post_scale: float = 2.0

    def __post_init__(self):
        """Validate every field and store it as a Python int / float (numpy scalars and
        0-d arrays are accepted; inf, nan, negatives and bools are not)."""
        fields = checks.config_fields({name: getattr(self, name) for name in checks.CONFIG_FIELDS})
        for name, value in fields.items():
            object.__setattr__(self, name, value)

    def as_dict(self) -> dict:
        """{'iters', 'rms_eps', 'pre_eps', 'sinkhorn_eps', 'post_scale'}: the keyword
        arguments of `mhc_core.coefficients` / `step` (other than `variant`)."""
        return asdict(self)
