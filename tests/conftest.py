"""Suite-wide fixtures.

The tests use tiny tensors, for which one intra-op thread is faster than two (several times so on a shared 2-core
box). Library loggers can be quieted per directory with ``quiet_libraries``; levels are restored after each test so
other suites' ``caplog`` checks still see lorakit's warnings.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator

import pytest
import torch

torch.set_num_threads(1)

QUIET_LOGGERS = ("diffusers", "transformers", "peft", "lorakit")


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture
def quiet_libraries() -> Iterator[None]:
    """Partial loads and deprecations warn by design: keep the output readable, restore the levels afterwards."""
    loggers = [logging.getLogger(n) for n in QUIET_LOGGERS]
    before = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, before):
            lg.setLevel(level)
