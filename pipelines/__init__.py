"""Apache Beam composite transforms and the pipelines built from them."""

from __future__ import annotations

import logging
from types import ModuleType


class _DropBeamImportNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "apitools not found" not in record.getMessage()


def load_run() -> ModuleType:
    """Import `pipelines.run` (and Beam) without Beam's import-time warning about missing Google clients."""
    quiet = _DropBeamImportNoise()
    logging.getLogger().addFilter(quiet)
    try:
        from pipelines import run
    finally:
        logging.getLogger().removeFilter(quiet)
    return run
