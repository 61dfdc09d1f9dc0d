"""Pipeline tests run tiny models: one intra-op thread is several times faster than two on a shared 2-core box."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _quiet_libraries() -> Iterator[None]:
    """Partial loads and deprecations warn by design; keep the output readable, restore the levels afterwards."""
    import logging

    from pipeline_helpers import QUIET_LOGGERS

    loggers = [logging.getLogger(n) for n in QUIET_LOGGERS]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.ERROR)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before):
            lg.setLevel(level)
