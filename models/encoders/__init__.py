"""Input encoders. Each maps points in the normalised frame, (N, 3) in [-1, 1], to (N, out_dim)
features whose first three columns are the raw coordinates (so geometric initialisation holds).

The interface is :class:`models.interfaces.Encoder` (``out_dim``, called on points); optional parts are
:class:`~models.interfaces.JacobianEncoder` (``has_jacobian``,
``forward_with_jacobian(x) -> (enc (N, D), jac (N, D, 3))``),
:class:`~models.interfaces.StepHook` (``update_step(epoch, step)``) and :class:`~models.interfaces.LevelledEncoder`
(``bound``, ``finest_active_resolution``). Multi-level encoders (``ProgressiveLevels``) also expose ``level_mask``
and ``set_active_levels``.
"""
from models.encoders.frequency import FrequencyEncoder
from models.encoders.hashgrid import HashGridEncoder
from models.encoders.nffb import NFFBEncoder
from models.encoders.progressive import ProgressiveLevels
from models.encoders.stylemod_nffb import StyleModNFFBEncoder

__all__ = ["FrequencyEncoder", "HashGridEncoder", "NFFBEncoder", "ProgressiveLevels", "StyleModNFFBEncoder"]
