"""State-machine tests run tiny models: library loggers quiet (shared fixture, levels restored after each test)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _quiet(quiet_libraries: None) -> None:
    """Partial loads and fused-scale notices warn by design; keep the output readable."""
