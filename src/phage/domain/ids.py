"""Identifiers: short, random, sortable enough to read in logs."""

from __future__ import annotations

import os
import time


def new_id(prefix: str) -> str:
    """``<prefix>-<time hex><random hex>``: unique without coordination, roughly time-ordered."""
    return f"{prefix}-{int(time.time() * 1000):011x}{os.urandom(6).hex()}"
