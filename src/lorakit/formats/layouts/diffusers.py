"""diffusers layouts: PEFT-style ``lora_A``/``lora_B`` with component prefixes (written by :func:`write`), the
intermediate ``.lora.down`` / ``.lora_linear_layer.`` layout of the training scripts, and the old
attention-processor layout (``…processor.to_q_lora.down.weight``, with or without the ``unet.`` prefix).
formats.md §5.1-§5.3.
"""

from __future__ import annotations

import json

from torch import Tensor

from ...families import Family
from ..keys import ATTNPROC, INTERMEDIATE, PEFT, Prefix
from ..registry import Adapters, Layout
from ..write import peft_config, peft_describable


def write(adapters: Adapters, family: Family | None) -> tuple[dict[str, Tensor], dict[str, str]]:
    """``<component>.<path>.lora_A.weight`` / ``lora_B.weight`` (+ ``lora_B.bias``, ``lora_magnitude_vector`` for
    output-axis DoRA) for what a PEFT ``LoraConfig`` describes, with diffusers' ``lora_adapter_metadata`` header (a
    flat JSON of ``<component>.<LoraConfig field>``, :func:`~lorakit.formats.write.peft_config`) so per-module alphas
    reload with identical scales in lorakit and in diffusers. The other kinds (LoHa, LoKr, full, Tucker, input-axis
    DoRA) keep their LyCORIS suffixes on the dotted names: lorakit reloads them, diffusers does not."""
    sd: dict[str, Tensor] = {}
    meta: dict[str, object] = {}
    for comp, mods in adapters.items():
        described = peft_describable(mods)
        for path, kind in mods.items():
            tensors = kind.peft_tensors() if path in described else None
            for suffix, t in (tensors if tensors is not None else kind.lycoris_tensors()).items():
                sd[f"{comp}.{path}.{suffix}"] = t
        if described:
            for fname, value in peft_config(mods, where=comp).items():
                meta[f"{comp}.{fname}"] = value
    header = {"format": "pt"}
    if meta:
        header["lora_adapter_metadata"] = json.dumps(meta, indent=2, sort_keys=True)
    return sd, header


#: ``<component>.``: the pipeline's component names (family "component", shared with the intermediate,
#: attention-processor and dotted-kohya layouts)
COMPONENT_PREFIXES = tuple(
    Prefix(f"{c}.", c, "dotted", "component")
    for c in ("unet", "transformer", "text_encoder", "text_encoder_2", "text_encoder_3")
)

DIFFUSERS = Layout(
    name="diffusers",
    description="diffusers PEFT-style: <component>.<module>.lora_A/lora_B.weight (+ lora_B.bias, lora_magnitude_vector)",
    prefix_families=frozenset({"component"}),
    styles=frozenset({PEFT}),
    header_keys=("lora_adapter_metadata",),
    header_config=True,
    writer=write,
    prefixes=COMPONENT_PREFIXES,
)

INTERMEDIATE_LAYOUT = Layout(
    name="diffusers-intermediate",
    description="diffusers training-script layout: <component>.<module>.lora.down/up.weight, .lora_linear_layer.down/up",
    prefix_families=frozenset({"component"}),
    styles=frozenset({INTERMEDIATE}),
)

ATTN_PROCS = Layout(
    name="diffusers-attn-procs",
    description="old diffusers attention processors: [unet.]<block>.attn1.processor.to_q_lora.down.weight",
    prefix_families=frozenset({"component", "none"}),
    styles=frozenset({ATTNPROC}),
)

LAYOUTS: tuple[Layout, ...] = (DIFFUSERS, INTERMEDIATE_LAYOUT, ATTN_PROCS)
