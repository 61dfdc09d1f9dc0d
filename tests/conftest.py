"""Suite-wide settings: the tests use tiny tensors, for which one thread is faster than two (no sync overhead)."""

from __future__ import annotations

import torch

torch.set_num_threads(1)
