"""Pipeline tests run tiny models: one intra-op thread is several times faster than two on a shared 2-core box."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _quiet(quiet_libraries: None) -> None:
    """Library loggers quiet in this directory (shared fixture, levels restored after each test)."""
