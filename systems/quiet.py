"""Library messages a run cannot act on, filtered out of its output; those our own code caused are
fixed where they arose instead (``weights_only`` in systems/modes.py's final checkpoint, the callback
override in ``BaseSystem.configure_callbacks``)."""
from __future__ import annotations

import logging
import warnings

# Lightning's own use of a torch._pytree API that torch deprecated (pytorch_lightning/utilities/_pytree.py).
PYTREE_DEPRECATION = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
# Lightning's advertisement for its cloud logger, printed by every Trainer.
LITLOGGER_TIP = "💡 Tip:"


class _DropTips(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LITLOGGER_TIP)


def quiet_libraries() -> None:
    """Filter the messages above (idempotent)."""
    warnings.filterwarnings("ignore", message=PYTREE_DEPRECATION)
    rank_zero = logging.getLogger("pytorch_lightning.utilities.rank_zero")
    if not any(isinstance(f, _DropTips) for f in rank_zero.filters):
        rank_zero.addFilter(_DropTips())
