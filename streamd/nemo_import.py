"""The one place streamd imports NeMo: shims first, then ``nemo.collections.asr``."""

from __future__ import annotations

import logging
from types import ModuleType

from streamd.shims import apply_shims


def import_nemo_asr() -> ModuleType:
    """Return ``nemo.collections.asr`` after applying the import-time shims it may need."""
    apply_shims()
    import nemo.collections.asr as nemo_asr
    from nemo.utils import logging as nemo_logging

    # NeMo logs config dumps and training hints at INFO on every model build/restore.
    nemo_logging.setLevel(logging.WARNING)
    return nemo_asr
