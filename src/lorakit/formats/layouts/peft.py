"""Raw PEFT (``PeftModel.save_pretrained``): ``base_model.model.<module>.lora_A.weight``; the ``adapter_config.json``
fields may be passed as metadata (formats.md §5.4). The keys name no component: they are resolved against every
component given, the denoiser first.
"""

from __future__ import annotations

import json

from torch import Tensor

from ...errors import FormatError
from ...families import Family
from ..keys import INTERMEDIATE, KOHYA, PEFT, Prefix
from ..registry import Adapters, Layout
from ..write import peft_config, peft_describable

PREFIX = "base_model.model."


def write(adapters: Adapters, family: Family | None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """One component as ``base_model.model.<path>.lora_A.weight`` (LyCORIS suffixes for kinds PEFT has no names for),
    with its ``LoraConfig`` as ``adapter_config`` (JSON) in the header."""
    comps = [c for c, m in adapters.items() if m]
    if len(comps) != 1:
        raise FormatError(
            f"the raw PEFT layout (base_model.model.) holds one component; got {', '.join(comps) or 'none'}: "
            "convert each component separately"
        )
    mods = adapters[comps[0]]
    described = peft_describable(mods)
    sd: dict[str, Tensor] = {}
    for path, kind in mods.items():
        tensors = kind.peft_tensors() if path in described else None
        for suffix, t in (tensors if tensors is not None else kind.lycoris_tensors()).items():
            sd[f"{PREFIX}{path}.{suffix}"] = t
    header = {"format": "pt"}
    if described:
        header["adapter_config"] = json.dumps(peft_config(mods, where=comps[0]), sort_keys=True)
    return sd, header


RAW_PEFT = Layout(
    name="peft",
    description="raw PEFT: base_model.model.<module>.lora_A/lora_B.weight (+ adapter_config.json fields)",
    prefix_families=frozenset({"peft"}),
    styles=frozenset({PEFT, INTERMEDIATE, KOHYA}),
    header_keys=("adapter_config", "peft_type"),
    header_config=True,
    writer=write,
    prefixes=(Prefix(PREFIX, None, "dotted", "peft"),),
)

LAYOUTS: tuple[Layout, ...] = (RAW_PEFT,)
