"""Checkpoint key conventions -> canonical adapters (and back).

CONTRACT (other modules rely on these two functions and the ``Conversion`` record; keep their signatures):

* ``to_canonical(state_dict, metadata, components, *, source) -> Conversion``: detect the layout from all keys and
  the header, convert every entry to a canonical kind, resolve module paths against the given component models
  (``{"unet": unet, "text_encoder": te, ...}``) and report what did not land. Raises lorakit errors only.
* ``from_canonical(adapters, to, *, family) -> (state_dict, metadata)``: write canonical adapters in a layout
  ("diffusers", "peft", "kohya").

This file is a minimal placeholder (diffusers PEFT-style keys only) until the formats package lands.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from torch import Tensor, nn

from ..errors import KeyMismatchError
from ..kinds import AdapterKind, LoRA


@dataclass
class Conversion:
    """The result of converting one checkpoint."""

    format: str
    #: component name -> module path inside that component -> kind
    adapters: dict[str, dict[str, AdapterKind]]
    #: the load report (see lorakit.report); placeholder: a plain dict
    report: Any = field(default=None)


def to_canonical(
    state_dict: Mapping[str, Tensor],
    metadata: Mapping[str, str] | None = None,
    components: Mapping[str, nn.Module] | None = None,
    *,
    source: str = "<dict>",
) -> Conversion:
    groups: dict[tuple[str, str], dict[str, Tensor]] = {}
    for key, t in state_dict.items():
        comp, _, rest = key.partition(".")
        for suffix in (".lora_A.weight", ".lora_B.weight"):
            if rest.endswith(suffix):
                groups.setdefault((comp, rest[: -len(suffix)]), {})[suffix[1:7]] = t
    adapters: dict[str, dict[str, AdapterKind]] = {}
    for (comp, path), g in groups.items():
        adapters.setdefault(comp, {})[path] = LoRA(down=g["lora_A"], up=g["lora_B"])
    if not adapters:
        raise KeyMismatchError(f"{source}: no adapter keys recognised")
    return Conversion(format="diffusers", adapters=adapters)


def from_canonical(
    adapters: Mapping[str, Mapping[str, AdapterKind]], to: str = "diffusers", *, family: str | None = None
) -> tuple[dict[str, Tensor], dict[str, str]]:
    raise NotImplementedError
