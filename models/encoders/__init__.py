"""Input encoders. Each maps points in the normalised frame, (N, 3) in [-1, 1], to (N, out_dim)
features whose first three columns are the raw coordinates (so geometric initialisation holds).

Optional hooks the fields and systems use when present:
``forward_with_jacobian(x) -> (enc (N, D), jac (N, D, 3))`` and ``update_step(epoch, step)``.
Multi-level encoders (``ProgressiveLevels``) also expose ``level_mask``, ``set_active_levels`` and
``finest_active_resolution``.
"""
from models.encoders.frequency import FrequencyEncoder
from models.encoders.hashgrid import HashGridEncoder
from models.encoders.nffb import NFFBEncoder
from models.encoders.progressive import ProgressiveLevels
from models.encoders.stylemod_nffb import StyleModNFFBEncoder

__all__ = ["FrequencyEncoder", "HashGridEncoder", "NFFBEncoder", "ProgressiveLevels", "StyleModNFFBEncoder"]
