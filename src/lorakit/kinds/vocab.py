"""How files name a kind's tensors: suffix styles, the :class:`Suffix` record and the :class:`KeySource` of a group.

A checkpoint key is ``<prefix><module name><joiner><suffix>``. Every kind lists the suffixes it reads
(``AdapterKind.SUFFIXES``), each naming a *role* (``"down"``, ``"hada_w1_a"``, ...) in one *style*:

* ``kohya``: kohya / LyCORIS names (``lora_down.weight``, ``hada_w1_a``, ``lokr_w1``, ``diff``, ``oft_blocks``, ...);
  the style every kind is written in by the kohya layout and, where PEFT has no name for it, by the others.
* ``peft``: PEFT names (``lora_A.weight``, ``lora_magnitude_vector``); a PEFT file may carry an adapter-name segment
  after the first part (``lora_A.default.weight``), which ``formats.keys`` accepts.
* ``intermediate``: diffusers training scripts (``lora.down.weight``, ``lora_linear_layer.up.weight``).
* ``attnproc``: old diffusers attention processors, joined to the module name with ``_`` (``to_q_lora.down.weight``).
* ``neutral``: spelled the same everywhere (``alpha``).

Role names are one namespace across kinds: two kinds that store the same tensor under the same suffix share the role
(OFT and BOFT both read ``oft_blocks``); ``formats.keys`` refuses two roles for one suffix of one style.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

KOHYA = "kohya"
PEFT = "peft"
INTERMEDIATE = "intermediate"
ATTNPROC = "attnproc"
NEUTRAL = "neutral"
STYLES: tuple[str, ...] = (KOHYA, PEFT, INTERMEDIATE, ATTNPROC, NEUTRAL)


@dataclass(frozen=True, slots=True)
class Suffix:
    """One key suffix a kind reads: ``text`` after the module name (and its joiner) names tensor ``role``."""

    text: str
    role: str
    style: str = KOHYA

    def __post_init__(self) -> None:
        if self.style not in STYLES:
            raise ValueError(f"suffix {self.text!r}: unknown style {self.style!r} (known: {', '.join(STYLES)})")


@dataclass(frozen=True, slots=True)
class KeySource:
    """Where a module's tensors come from, for kinds whose tensors mean different things in different files.

    Attributes:
        layout: the layout that claimed the keys (``"kohya"``, ``"kohya-oft"``, ``"diffusers"``, ...).
        metadata: the file's header (``ss_network_module``, ``ss_network_args``, ...).
    """

    layout: str = ""
    metadata: Mapping[str, Any] = field(default_factory=dict)
